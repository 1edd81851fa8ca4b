from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import photo_like
from vqcodec import Codec, ImageError, VQCodecError, compress_at_slope, compress_to_target, decompress
from vqcodec.codec import cached_codec
from vqcodec.metrics import psnr
from vqcodec.models import list_models
from vqcodec.rate_control import PSNR_CAP_DB, Point, best_at_slope, nearest_code_points

pytestmark = pytest.mark.usefixtures("one_thread")


def test_it_chooses_as_trying_every_model_would_with_fewer_compressions(monkeypatch):
    image = Image.fromarray(photo_like(64, 96, seed=11))
    sizes = {name: 8 * len(cached_codec(name).compress(image)) / (64 * 96) for name in list_models()}
    assert len(sizes) >= 4, "the bundled model family is missing"
    ranked = sorted(sizes.values())
    targets = [ranked[0] / 2, *ranked, *[(a + b) / 2 for a, b in zip(ranked, ranked[1:])], ranked[-1] * 2]
    calls = []
    real_compress = Codec.compress
    monkeypatch.setattr(Codec, "compress", lambda self, *a, **k: calls.append(self.name) or real_compress(self, *a, **k))
    for target in targets:
        calls.clear()
        within = [name for name, bpp in sizes.items() if bpp <= target]
        expected = max(within, key=sizes.get) if within else min(sizes, key=sizes.get)
        name, data = compress_to_target(image, target)
        assert name == expected and 8 * len(data) / (64 * 96) == sizes[expected], (target, name, calls)
        assert len(calls) <= 2, (target, calls)  # not one compression per model


def test_it_chooses_among_the_models_given(tiny_model_path):
    image = photo_like(32, 48, seed=3)
    name, data = compress_to_target(image, 100.0, models=[tiny_model_path], optimize=0)
    assert name == "tiny"
    assert data == Codec.load(tiny_model_path).compress(image, optimize=0)
    assert np.asarray(decompress(data, model=tiny_model_path)).shape == image.shape


@pytest.mark.parametrize("target", [0, -0.5, float("nan"), float("inf"), "0.3", True])
def test_a_target_must_be_a_positive_number(target, tiny_model_path):
    with pytest.raises(VQCodecError, match="positive number"):
        compress_to_target(photo_like(8, 8), target, models=[tiny_model_path])


def test_bad_inputs_fail_before_any_model_is_loaded():
    with pytest.raises(ImageError):
        compress_to_target(np.zeros((4, 4, 2), dtype=np.uint8), 0.3, models=["no-such-model"])
    with pytest.raises(VQCodecError, match="no models"):
        compress_to_target(photo_like(8, 8), 0.3, models=[])


def test_nearest_code_points_are_the_files_and_pictures_of_the_nearest_codes():
    image = Image.fromarray(photo_like(48, 64, seed=5))
    codecs = [cached_codec(name) for name in list_models()]
    points = nearest_code_points(image, codecs)
    assert [p.model for p in points] == list_models()
    for codec, point in zip(codecs, points):
        data = codec.compress(image, optimize=0)
        assert abs(len(data) - point.bpp * 48 * 64 / 8) < 32  # the estimate, within a few bytes per chunk
        assert point.psnr == pytest.approx(psnr(image, decompress(data)), abs=1e-6)


def test_slope_picks_the_best_point_and_writes_that_models_file(monkeypatch):
    image = Image.fromarray(photo_like(48, 64, seed=7))
    points = nearest_code_points(image, [cached_codec(name) for name in list_models()])
    by_rate = sorted(points, key=lambda p: p.bpp)
    assert best_at_slope(points, 1e6) == points.index(by_rate[0])  # bits dear: the smallest file
    assert best_at_slope(points, 1e-6) == points.index(max(points, key=lambda p: p.psnr))  # bits free: the best picture
    calls = []
    real_compress = Codec.compress
    monkeypatch.setattr(Codec, "compress", lambda self, *a, **k: calls.append(self.name) or real_compress(self, *a, **k))
    for slope in (1e6, 8.0, 1e-6):
        calls.clear()
        chosen = points[best_at_slope(points, slope)].model
        name, data = compress_at_slope(image, slope)
        assert name == chosen and calls == [chosen]  # one compression, by the chosen model
        assert data == real_compress(cached_codec(chosen), image)


def test_cost_prices_rate_against_quality_and_caps_exact_pictures(tiny_model_path):
    a, b = Point("a", 0.2, 30.0), Point("b", 0.4, 32.0)  # b buys 2 dB for 0.2 bpp: 10 dB per bpp
    assert best_at_slope([a, b], 9.0) == 1 and best_at_slope([a, b], 11.0) == 0
    flat = np.full((16, 16, 3), 128, dtype=np.uint8)
    [point] = nearest_code_points(flat, [Codec.load(tiny_model_path)])
    assert point.psnr <= PSNR_CAP_DB and point.bpp > 0


@pytest.mark.parametrize("slope", [0, -1.0, float("nan"), float("inf"), "8", True])
def test_a_slope_must_be_a_positive_number(slope, tiny_model_path):
    with pytest.raises(VQCodecError, match="positive number"):
        compress_at_slope(photo_like(8, 8), slope, models=[tiny_model_path])


def test_slope_refuses_bad_inputs_before_loading_a_model(tiny_model_path):
    with pytest.raises(ImageError):
        compress_at_slope(np.zeros((4, 4, 2), dtype=np.uint8), 8.0, models=["no-such-model"])
    with pytest.raises(VQCodecError, match="no models"):
        compress_at_slope(photo_like(8, 8), 8.0, models=[])
    name, data = compress_at_slope(photo_like(32, 48, seed=3), 8.0, models=[tiny_model_path], optimize=0)
    assert name == "tiny" and data == Codec.load(tiny_model_path).compress(photo_like(32, 48, seed=3), optimize=0)


def test_the_quality_of_an_image_with_transparency_is_that_of_its_composited_picture():
    from vqcodec.image import error_weights, to_tensor
    from vqcodec.rate_control import _psnr_8bit

    rgb = photo_like(8, 10)
    alpha = np.zeros((8, 10), dtype=np.uint8)
    alpha[:, 5:] = 255
    other = rgb.copy()
    other[:, :5] = 255 - other[:, :5]  # wrong only where nobody sees it
    other[:, 5:] = np.clip(other[:, 5:].astype(int) + 4, 0, 255)  # and a little wrong where they do
    seen = 10 * np.log10(255**2 / np.mean((other[:, 5:].astype(float) - rgb[:, 5:]) ** 2))
    original = Image.fromarray(np.dstack([rgb, alpha]))
    weights = error_weights(to_tensor(original)[1])
    assert _psnr_8bit(original, Image.fromarray(np.dstack([other, alpha])), weights) == pytest.approx(seen)
    assert _psnr_8bit(Image.fromarray(rgb), Image.fromarray(other)) < seen - 10  # opaque: every pixel counts


@pytest.mark.parametrize("choose", ["target", "slope"])
def test_rate_control_converts_the_input_once_and_writes_the_models_own_file(monkeypatch, tiny_model_path, choose):
    """An RGBA input is converted (its hidden colours filled, its alpha plane coded) once, however
    many models are tried, and the file is the one the chosen model writes for the image itself."""
    import vqcodec.image as image_module

    rgba = np.dstack([photo_like(24, 32, seed=5), np.tile(np.linspace(0, 255, 32).astype(np.uint8), (24, 1))])
    models = [tiny_model_path, tiny_model_path]
    conversions = []
    real_encode_alpha = image_module.encode_alpha
    monkeypatch.setattr(image_module, "encode_alpha", lambda alpha: conversions.append(1) or real_encode_alpha(alpha))
    if choose == "target":
        name, data = compress_to_target(rgba, 100.0, models=models, optimize=2)
    else:
        name, data = compress_at_slope(rgba, 10.0, models=models, optimize=2)
    assert len(conversions) == 1
    assert data == Codec.load(tiny_model_path).compress(rgba, optimize=2)

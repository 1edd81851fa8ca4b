"""Members that code the image at another scale: exact symbols, original size and mode back, and
files that only the same name and scale decode."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import photo_like
from vqcodec import bitstream, resample
from vqcodec.codec import Codec
from vqcodec.errors import BitstreamError, ImageError, VQCodecError
from vqcodec.image import to_uint8
from vqcodec.metrics import psnr

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scaled(tiny_model_path):
    codec = Codec.load(tiny_model_path)
    return Codec(codec.vqvae, codec.prior, name="tiny", digest=codec.digest, scale=1.5)


def test_coded_size_rounds_and_never_reaches_zero():
    assert resample.coded_size(37, 53, 1.0) == (37, 53)
    assert resample.coded_size(37, 53, 1.5) == (56, 80)  # round(55.5) = 56, round(79.5) = 80
    assert resample.coded_size(1, 1, 1.25) == (1, 1)


@pytest.mark.parametrize("scale", [0.5, 0.0, -1, 5, float("nan"), float("inf"), True, "2"])
def test_a_scale_outside_one_to_four_is_refused(tiny_model_path, scale):
    codec = Codec.load(tiny_model_path)
    with pytest.raises(VQCodecError, match="coding scale"):
        Codec(codec.vqvae, codec.prior, name="tiny", digest=codec.digest, scale=scale)


def test_resize_is_lanczos_in_float_and_keeps_a_smooth_image():
    x = torch.from_numpy(photo_like(48, 64)).permute(2, 0, 1)[None].float() / 255
    assert resample.resize(x, (48, 64)) is x
    up = resample.resize(x, (72, 96))
    assert up.shape == (1, 3, 72, 96) and up.dtype == torch.float32
    back = resample.resize(up, (48, 64))
    assert psnr(to_uint8(back), to_uint8(x)) > 35  # the round trip alone costs little next to coding
    step = torch.zeros(1, 1, 8, 8)
    step[..., 4:] = 1
    assert float(resample.resize(step, (12, 12)).max()) > 1  # Lanczos rings; nothing clamps in between


@pytest.mark.parametrize("order", ["fast", "raster"])
@pytest.mark.parametrize("size", [(37, 53), (1, 1), (9, 4)])
def test_scaled_round_trip_is_bit_exact_at_the_coded_size(scaled, order, size):
    image = Image.fromarray(photo_like(*size, seed=size[1]))
    data = scaled.compress(image, order=order, optimize=2)
    encoded = scaled.encode(image, order=order, optimize=2)
    decoded = scaled.decode_symbols(data)
    assert all(torch.equal(a, b) for a, b in zip(encoded.levels, decoded.levels))
    header = bitstream.read_header(data)
    assert (header.width, header.height) == image.size
    assert list(header.level_shapes) == [tuple(s) for s in scaled.vqvae.latent_sizes(*resample.coded_size(*size, 1.5))]
    restored = scaled.decompress(data)
    assert restored.size == image.size and restored.mode == "RGB"
    assert np.array_equal(np.asarray(restored), np.asarray(scaled.decode(encoded)))


def test_scaled_codes_more_symbols_and_keeps_modes(scaled, codec):
    gray = Image.fromarray(photo_like(32, 48)).convert("L")
    data = scaled.compress(gray, optimize=0)
    assert scaled.decompress(data).mode == "L" and scaled.decompress(data).size == gray.size
    symbols = sum(h * w for h, w in bitstream.read_header(data).level_shapes)
    plain = sum(h * w for h, w in bitstream.read_header(codec.compress(gray, optimize=0)).level_shapes)
    assert symbols > 2 * plain  # 1.5^2 = 2.25 times the pixels
    rgba = Image.fromarray(photo_like(16, 16)).convert("RGBA")
    assert scaled.decompress(scaled.compress(rgba, optimize=0)).mode == "RGBA"


def test_a_file_decodes_only_at_the_scale_it_was_made_with(scaled, codec):
    data = scaled.compress(photo_like(32, 48), optimize=0)
    with pytest.raises(BitstreamError, match="do not fit"):
        codec.decompress(data)  # same name and weights, scale 1: its maps do not fit
    with pytest.raises(BitstreamError, match="do not fit"):
        scaled.decompress(codec.compress(photo_like(32, 48), optimize=0))


def test_an_image_too_large_at_the_coded_size_is_refused_before_any_work(scaled, codec, monkeypatch):
    import vqcodec.codec as codec_module

    monkeypatch.setattr(codec_module, "MAX_IMAGE_PIXELS", 40 * 40)
    codec.encode(photo_like(32, 48), optimize=0)  # 1,536 pixels: fits at scale 1
    monkeypatch.setattr(codec_module.rdo, "optimize_symbols", lambda *a, **k: pytest.fail("encoded"))
    with pytest.raises(ImageError, match="codes it at 72x48"):
        scaled.encode(photo_like(32, 48))


def test_a_forged_size_is_bounded_at_the_coded_size(scaled, monkeypatch):
    import vqcodec.codec as codec_module

    data = scaled.compress(photo_like(16, 16), optimize=0)
    header, chunks = bitstream.unpack(data)
    side = 9000  # 81 MP fits the pixel bound at scale 1, not at 1.5 (182 MP)
    shapes = tuple(tuple(s) for s in scaled.vqvae.latent_sizes(*resample.coded_size(side, side, 1.5)))
    forged = bitstream.pack(dataclasses.replace(header, width=side, height=side, level_shapes=shapes), chunks)
    monkeypatch.setattr(codec_module.Codec, "_decode_level", lambda *a, **k: pytest.fail("decoded a forged header"))
    with pytest.raises(BitstreamError, match="claims a 9000x9000 image"):
        scaled.decompress(forged)


def test_bundled_resampled_members_share_their_trained_models_weights():
    from vqcodec import decompress
    from vqcodec.models import BUNDLED, RESAMPLED, list_models, model_card, resolve

    names = list_models()
    for name, (base, scale) in RESAMPLED.items():
        assert base in BUNDLED and name in names and names.index(name) > names.index(base)
        resolved = resolve(name)
        assert resolved.path == resolve(base).path and resolved.scale == scale > 1
        assert model_card(name).startswith(f"# {name}: ")
    codec = Codec.load("vqc-5")
    image = photo_like(24, 40)
    data = codec.compress(image, optimize=0)
    assert bitstream.read_header(data).model_name == "vqc-5"
    assert np.asarray(decompress(data)).shape == image.shape  # the header's name brings the scale back
    with pytest.raises(BitstreamError, match="not 'vqc-4'"):
        Codec.load("vqc-4").decompress(data)


def test_info_names_the_scale_of_a_resampled_member(tmp_path):
    from click.testing import CliRunner

    from vqcodec.cli.main import app

    path = tmp_path / "x.vqc"
    path.write_bytes(Codec.load("vqc-6").compress(photo_like(16, 24), optimize=0))
    result = CliRunner().invoke(app, ["info", str(path)])
    assert result.exit_code == 0, result.output
    assert "image:    24x16 RGB, coded at x1.5 with vqc-4's networks" in result.output
    assert "levels:   2 (top to bottom: 3x5, 6x10)" in result.output  # coded at 36x24, padded to 40x24

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import photo_like
from vqcodec import Codec, ImageError, VQCodecError, compress_to_target, decompress
from vqcodec.codec import cached_codec
from vqcodec.models import list_models

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


@pytest.mark.parametrize("target", [0, -0.5, float("nan"), float("inf"), "0.3"])
def test_a_target_must_be_a_positive_number(target, tiny_model_path):
    with pytest.raises(VQCodecError, match="positive number"):
        compress_to_target(photo_like(8, 8), target, models=[tiny_model_path])


def test_bad_inputs_fail_before_any_model_is_loaded():
    with pytest.raises(ImageError):
        compress_to_target(np.zeros((4, 4, 2), dtype=np.uint8), 0.3, models=["no-such-model"])
    with pytest.raises(VQCodecError, match="no models"):
        compress_to_target(photo_like(8, 8), 0.3, models=[])

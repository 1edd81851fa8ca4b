from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import photo_like
from vqcodec.errors import ImageError
from vqcodec.image import ImageInfo, open_image, to_pil, to_tensor


def test_rgb_array_round_trips_exactly():
    array = photo_like(7, 9)
    x, info = to_tensor(array)
    assert x.shape == (1, 3, 7, 9) and x.dtype == torch.float32
    assert info == ImageInfo("RGB", 7, 9)
    assert np.array_equal(np.asarray(to_pil(x, info)), array)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
def test_pil_modes_are_restored(mode):
    image = Image.fromarray(photo_like(5, 6)).convert(mode)
    x, info = to_tensor(image)
    back = to_pil(x, info)
    assert back.mode == mode
    assert np.array_equal(np.asarray(back), np.asarray(image))


def test_palette_image_is_coded_as_rgb():
    image = Image.fromarray(photo_like(5, 6)).convert("P")
    _, info = to_tensor(image)
    assert info.mode == "RGB"


def test_tensor_input_is_quantized_to_8_bits():
    x, info = to_tensor(torch.full((3, 4, 5), 0.5))
    assert info == ImageInfo("RGB", 4, 5)
    assert torch.allclose(x, torch.full_like(x, 128 / 255))


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((4, 4, 3), dtype=np.uint16), "uint8"),
        (np.zeros((4, 4, 3), dtype=np.float32), "uint8"),
        (np.zeros((0, 4, 3), dtype=np.uint8), "empty"),
        (np.zeros((4, 4, 2), dtype=np.uint8), "shape"),
        (np.zeros((4, 4, 4), dtype=np.uint8), "transparency"),
        (Image.new("I;16", (4, 4)), "16-bit"),
        (Image.new("CMYK", (4, 4)), "CMYK"),
        (torch.zeros(2, 3, 4, 4), "shape"),
        (torch.full((3, 4, 4), float("nan")), "NaN"),
        ("not an image", "unsupported input type"),
    ],
)
def test_unsupported_inputs_are_refused_clearly(bad, message):
    with pytest.raises(ImageError, match=message):
        to_tensor(bad)


def test_open_image_errors(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        open_image(tmp_path / "missing.png")
    text = tmp_path / "text.png"
    text.write_text("hello")
    with pytest.raises(ImageError, match="not a readable image"):
        open_image(text)

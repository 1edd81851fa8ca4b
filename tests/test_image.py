from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms, ImageFile

from conftest import DISPLAY_P3, photo_like, rgb_icc_profile
from vqcodec.errors import ImageError
from vqcodec.image import (ImageInfo, decode_alpha, encode_alpha, error_weights, open_image, to_pil, to_tensor,
                           to_uint8)


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
        (Image.new("I;16", (4, 4)), "16-bit"),
        (Image.new("HSV", (4, 4)), "'HSV' is not supported"),
        (torch.zeros(2, 3, 4, 4), "shape"),
        (torch.full((3, 4, 4), float("nan")), "NaN"),
        (42, "unsupported input type"),
        ("no-such-photo.png", "no such file"),
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


def _png16(path, width: int, height: int, colour_type: int) -> None:
    """A 16-bit PNG written by hand (Pillow reads 16-bit RGB(A) but cannot write it)."""
    channels = {2: 3, 6: 4}[colour_type]
    row = b"\x00" + bytes(i % 256 for i in range(width * channels * 2))
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row * height))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("colour_type, mode", [(2, "RGB"), (6, "RGBA")])
def test_16_bit_colour_files_are_refused_not_cut_to_8_bits(tmp_path, colour_type, mode):
    path = tmp_path / "deep.png"
    _png16(path, 5, 4, colour_type)
    assert Image.open(path).mode == mode  # what Pillow would silently hand on
    with pytest.raises(ImageError, match=f"16-bit {mode}"):
        open_image(path)


@pytest.mark.parametrize("mode, key", [("RGB", (10, 20, 30)), ("L", 10)])
def test_a_transparent_colour_key_makes_rgba_only_where_it_occurs(tmp_path, mode, key):
    pixels = np.full((6, 6, 3), 200, dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    opaque = tmp_path / "opaque.png"
    image.save(opaque, transparency=key)  # the key colour appears nowhere: every pixel is opaque
    info = to_tensor(open_image(opaque))[1]
    assert info.mode == mode and info.alpha == b""
    pixels[0, 0] = (10, 20, 30) if mode == "RGB" else 10
    keyed = tmp_path / "keyed.png"
    Image.fromarray(pixels).convert(mode).save(keyed, transparency=key)
    info = to_tensor(open_image(keyed))[1]
    expected = np.full((6, 6), 255, dtype=np.uint8)
    expected[0, 0] = 0
    assert info.mode == "RGBA" and np.array_equal(decode_alpha(info.alpha, 6, 6), expected)


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "camera.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(photo_like(20, 30)).save(path, exif=exif)
    assert Image.open(path).size == (30, 20)
    assert open_image(path).size == (20, 30)


def test_an_oversized_file_is_refused_before_its_pixels_are_decoded(tmp_path, monkeypatch):
    import vqcodec.image as image_module

    path = tmp_path / "big.png"
    Image.fromarray(photo_like(40, 40)).save(path)
    monkeypatch.setattr(image_module, "MAX_PIXELS", 1000)
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded the pixels of an oversized image"))
    with pytest.raises(ImageError, match="too large"):
        open_image(path)


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_a_wide_gamut_profile_is_converted_to_srgb(tmp_path, mode):
    pixels = photo_like(12, 10)
    path = tmp_path / "phone.png"
    p3 = rgb_icc_profile("Display P3 (test)", DISPLAY_P3)
    Image.fromarray(pixels).convert(mode).save(path, icc_profile=p3)
    x, info = to_tensor(open_image(path))
    expected = ImageCms.profileToProfile(Image.fromarray(pixels), ImageCms.ImageCmsProfile(io.BytesIO(p3)),
                                         ImageCms.createProfile("sRGB"), outputMode="RGB",
                                         renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC)
    assert info.mode == mode
    coded = np.asarray(to_pil(x, info).convert("RGB"))
    assert np.array_equal(coded, np.asarray(expected))
    assert np.abs(coded.astype(int) - pixels).max() > 10  # the conversion moved colours visibly


@pytest.mark.parametrize("icc", [ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes(),
                                 b"not a colour profile", b""])
def test_srgb_and_unreadable_profiles_leave_the_pixels_alone(tmp_path, icc):
    pixels = photo_like(12, 10)
    path = tmp_path / "tagged.png"
    Image.fromarray(pixels).save(path, icc_profile=icc)
    x, info = to_tensor(open_image(path))
    assert np.array_equal(np.asarray(to_pil(x, info)), pixels)


def test_a_file_path_is_read_like_open_image_reads_it(tmp_path):
    e = Image.Exif()
    e[0x0112] = 6  # the path goes through open_image: the orientation is applied
    path = tmp_path / "camera.jpg"
    Image.fromarray(photo_like(20, 30)).save(path, exif=e)
    for given in (path, str(path)):
        x, info = to_tensor(given)
        assert (info.height, info.width) == (30, 20)
        assert torch.equal(x, to_tensor(open_image(path))[0])


def test_a_transparent_colour_key_in_a_profiled_image_keeps_its_alpha(tmp_path):
    pixels = photo_like(6, 8)
    pixels[0, 0] = (10, 20, 30)
    path = tmp_path / "keyed.png"
    Image.fromarray(pixels).save(path, transparency=(10, 20, 30), icc_profile=rgb_icc_profile("P3", DISPLAY_P3))
    x, info = to_tensor(open_image(path))
    alpha = decode_alpha(info.alpha, 6, 8)
    assert info.mode == "RGBA" and alpha[0, 0] == 0 and alpha.sum() == 255 * (6 * 8 - 1)
    plain = to_tensor(Image.fromarray(pixels))[0]
    assert not torch.equal(x[..., 1:, :], plain[..., 1:, :])  # visible colours still went through the profile


def test_translucent_alpha_travels_losslessly_and_hidden_colours_are_filled():
    rgba = np.dstack([photo_like(40, 56), np.zeros((40, 56), dtype=np.uint8)])
    rgba[:, 20:, 3] = np.arange(36, dtype=np.uint8)[None, :] * 7 + 3  # a soft ramp
    rgba[:, 20:28, 3] = 255
    rgba[:, :20, :3] = 0  # black under the fully transparent part, as many cut-outs have
    x, info = to_tensor(rgba)
    assert info.mode == "RGBA" and np.array_equal(decode_alpha(info.alpha, 40, 56), rgba[..., 3])
    rgb = to_uint8(x)
    assert np.array_equal(rgb[:, 20:], rgba[:, 20:, :3])  # every visible pixel's colour is kept
    hidden = rgb[:, :20].astype(int)
    assert np.abs(hidden[:, -1] - rgb[:, 20]).mean() < 40  # the hidden part continues the visible colours,
    assert hidden.std() > 0 and (hidden > 0).all()  # instead of staying black
    restored = to_pil(x, info)
    assert restored.mode == "RGBA" and np.array_equal(np.asarray(restored)[..., 3], rgba[..., 3])


def test_the_error_of_a_pixel_counts_by_its_squared_opacity():
    rgba = np.dstack([photo_like(6, 8), np.tile(np.arange(0, 256, 36, dtype=np.uint8), (6, 1))])
    weights = error_weights(to_tensor(rgba)[1])
    assert weights.shape == (1, 1, 6, 8) and weights.dtype == torch.float32
    assert torch.allclose(weights[0, 0], torch.from_numpy(rgba[..., 3] / 255).float() ** 2)
    assert error_weights(to_tensor(photo_like(6, 8))[1]) is None  # opaque: every pixel alike
    assert error_weights(to_tensor(np.zeros((6, 8, 4), dtype=np.uint8))[1]) is None  # nothing seen: alike too


def test_gray_with_alpha_is_coded_as_rgba_and_a_fully_transparent_image_as_flat_grey():
    la = Image.fromarray(np.dstack([photo_like(8, 8)[..., 0], np.full((8, 8), 100, np.uint8)]), "LA")
    info = to_tensor(la)[1]
    assert info.mode == "RGBA" and set(np.unique(decode_alpha(info.alpha, 8, 8))) == {100}
    x, info = to_tensor(np.zeros((5, 7, 4), dtype=np.uint8))
    assert np.all(to_uint8(x) == 128) and decode_alpha(info.alpha, 5, 7).max() == 0


@pytest.mark.parametrize("data, message", [(b"", "unknown"), (b"\x07abc", "unknown"),
                                           (b"\x00not a png", "readable PNG"), (b"\x01RIFF", "readable WEBP")])
def test_a_bad_alpha_plane_is_an_image_error(data, message):
    with pytest.raises(ImageError, match=message):
        decode_alpha(data, 4, 4)


def test_an_alpha_plane_of_another_size_is_refused():
    coded = encode_alpha(np.zeros((4, 5), dtype=np.uint8))
    assert decode_alpha(coded, 4, 5).shape == (4, 5)
    with pytest.raises(ImageError, match="5x4 RGB image, not 5x5"):
        decode_alpha(coded, 5, 5)


def test_an_infos_alpha_plane_is_read_only_none_when_opaque_and_an_error_when_corrupt():
    plane = np.tile(np.arange(5, dtype=np.uint8) * 60, (4, 1))
    info = ImageInfo("RGBA", 4, 5, encode_alpha(plane))
    assert np.array_equal(info.alpha_plane, plane) and info.alpha_plane is info.alpha_plane
    with pytest.raises(ValueError):
        info.alpha_plane[0, 0] = 1  # shared by every reader of this info: not to be changed in place
    assert ImageInfo("RGBA", 4, 5).alpha_plane is None and ImageInfo("RGB", 4, 5).alpha_plane is None
    assert ImageInfo("RGBA", 4, 5, encode_alpha(plane)) == info  # the decoded plane is not a field
    with pytest.raises(ImageError, match="not 5x5"):
        ImageInfo("RGBA", 5, 5, info.alpha).alpha_plane


def test_alpha_beyond_webp_sides_is_coded_as_png(monkeypatch):
    import vqcodec.image as image_module

    plane = np.tile(np.arange(16, dtype=np.uint8) * 16, (3, 1))
    monkeypatch.setattr(image_module, "WEBP_MAX_SIDE", 15)
    coded = encode_alpha(plane)
    assert coded[0] == image_module.ALPHA_PNG and np.array_equal(decode_alpha(coded, 3, 16), plane)
    monkeypatch.setattr(image_module, "WEBP_MAX_SIDE", 16)
    assert encode_alpha(plane)[0] == image_module.ALPHA_WEBP


@pytest.mark.parametrize("icc", [None, b"not a colour profile"])
def test_cmyk_is_coded_in_rgb(tmp_path, icc):
    """A CMYK JPEG without a (readable) profile goes to RGB by Pillow's conversion and comes back as RGB."""
    cmyk = Image.fromarray(np.random.default_rng(4).integers(0, 256, (12, 10, 4), dtype=np.uint8), "CMYK")
    path = tmp_path / "print.jpg"
    cmyk.save(path, quality=95, **({"icc_profile": icc} if icc else {}))
    x, info = to_tensor(path)
    assert info == ImageInfo("RGB", 12, 10)
    expected = np.asarray(Image.open(path).convert("RGB"))
    assert np.array_equal(to_uint8(x), expected)


def test_only_the_first_frame_of_an_animation_is_coded_and_that_is_said(tmp_path):
    frames = [Image.new("RGB", (8, 6), colour) for colour in ("red", "blue", "green")]
    path = tmp_path / "moving.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with pytest.warns(UserWarning, match="3 frames; only the first is coded"):
        x, info = to_tensor(path)
    assert info == ImageInfo("RGB", 6, 8)
    assert to_uint8(x)[0, 0].tolist() == [255, 0, 0]

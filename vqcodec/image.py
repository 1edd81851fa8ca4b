"""Images at the API boundary: PIL images, uint8 arrays and float tensors to and from model tensors.

Inside the library every image is a float32 tensor (1, 3, H, W) in [0, 1]. This module decides
which inputs are accepted, converts them, and remembers the original mode so that decoding gives
back what was given: 8-bit grayscale ("L"), RGB and RGBA. Palette and CMYK images are converted
to RGB and come back as RGB (RGBA where the palette has transparency, as do gray-with-alpha
images). Everything else (16-bit, float, empty images) is refused with an ImageError rather than
silently changed. Of a file with several frames (an animated GIF, a multi-page TIFF) the first is
coded, with a warning.

Transparency: an alpha plane that is not fully opaque travels losslessly beside the lossy colours
(`encode_alpha`: WebP's lossless mode, or PNG beyond WebP's 16383-px sides) and comes back
exactly. The colours of fully transparent pixels are not kept: nobody sees them, so they are
replaced by colours spread from the visible ones (`_fill_hidden`), which cost fewer bits than the
photo left under them and, unlike black, do not blur the cut-out's edge
(`benchmarks/alpha_coding.py`). The encoder then weighs each pixel's error by its squared opacity
(`error_weights`), the error of the picture composited over any background, so it spends no bits
on the hidden colours and fewer on faint ones.

Colour: the models were trained on sRGB photos and decoded PNGs carry no colour profile, so an
RGB image with an embedded ICC profile other than sRGB (a phone's Display P3, Adobe RGB) is
converted to sRGB (relative colorimetric, littleCMS through Pillow's ImageCms) before coding;
otherwise its colours would be shown as sRGB after decoding, visibly wrong. A profile that cannot
be read, or that describes another colour space than the pixels', is ignored, as viewers do.
A CMYK image (a print-workflow JPEG) goes to sRGB through its embedded CMYK profile, or without
one by Pillow's conversion.
"""

from __future__ import annotations

import functools
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError, features

from vqcodec.bitstream import ALPHA_PNG, ALPHA_WEBP
from vqcodec.errors import ImageError

MODES = ("RGB", "L", "RGBA")
MAX_SIDE = 65535  # the container stores each side in 16 bits
MAX_PIXELS = 1 << 27  # ~134 MP: larger inputs would need more memory than a codec call should take

# What Pillow's readers raise for a file that is not a (supported, intact) image.
_READ_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError)


@dataclass(frozen=True)
class ImageInfo:
    """What the decoder needs to give back an image like the input: its mode and size."""

    mode: str  # one of MODES
    height: int
    width: int
    alpha: bytes = b""  # RGBA with transparency: the alpha plane, losslessly coded (`encode_alpha`)

    @functools.cached_property
    def alpha_plane(self) -> np.ndarray | None:
        """The decoded (read-only) alpha plane, None if opaque; decoded once however often it is
        asked for (checking a file, then building its image). ImageError if `alpha` is not one."""
        if not self.alpha:
            return None
        plane = decode_alpha(self.alpha, self.height, self.width)
        plane.setflags(write=False)
        return plane


@dataclass(frozen=True)
class Converted:
    """An input already through `to_tensor`, to hand to several models without converting it again
    (opening, colour management, the hidden colours' fill, the alpha plane's coding)."""

    x: torch.Tensor
    info: ImageInfo


ImageLike = Union[Image.Image, np.ndarray, torch.Tensor, str, os.PathLike, Converted]


def open_image(path: str | Path | BinaryIO) -> Image.Image:
    """Read an image file (a path, or a binary file object), turning every reader failure into an ImageError.

    The size limit is checked from the header, before any pixels are decoded, and an EXIF
    orientation is applied, so a camera photo is coded the way viewers show it (the decoded PNG
    carries no EXIF to rotate it back). Samples deeper than 8 bits are refused, as Pillow would
    otherwise cut 16-bit RGB(A) to 8 bits without a word.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is checked below
            with Image.open(path) as img:
                _check_size(ImageInfo(img.mode, img.height, img.width))
                if any(";16" in _raw_mode(tile) for tile in img.tile) and img.mode in ("RGB", "RGBA"):
                    raise ImageError(f"16-bit {img.mode} images are not supported: vqcodec codes 8-bit images")
                frames = getattr(img, "n_frames", 1)  # before load: counting seeks through the file
                img.load()
                image = ImageOps.exif_transpose(img)
    except FileNotFoundError:
        raise ImageError("no such file") from None
    except _READ_ERRORS as err:
        raise ImageError(f"not a readable image ({err})") from None
    except Image.DecompressionBombError as err:
        raise ImageError(f"image too large ({err})") from None
    if frames > 1:
        warnings.warn(f"the file holds {frames} frames; only the first is coded", stacklevel=2)
    return image


def _raw_mode(tile: object) -> str:
    """The raw sample layout a Pillow tile decodes from ("RGB;16B" for 16-bit big-endian RGB)."""
    args = tile[3] if isinstance(tile, tuple) and len(tile) > 3 else None
    if isinstance(args, tuple) and args:
        args = args[0]
    return args if isinstance(args, str) else ""


def check_image_files(files: list[Path]) -> list[Path]:
    """Return `files` after opening each one's header, so a stray non-image fails before hours of work.

    Only headers are read (about a millisecond a file); pixel data is decoded when it is used.
    """
    for path in files:
        try:
            with Image.open(path):
                pass
        except _READ_ERRORS as err:
            raise ImageError(f"{path} is not a readable image ({err})") from None
    return files


def to_tensor(image: ImageLike) -> tuple[torch.Tensor, ImageInfo]:
    """Convert an accepted input to a model tensor.

    Args:
        image: PIL image (RGB, L, opaque RGBA, or palette), uint8 array (H, W), (H, W, 1),
            (H, W, 3) or (H, W, 4), float tensor (3, H, W) / (1, 3, H, W) in [0, 1], or the path
            of an image file (read by `open_image`).

    Returns:
        x: (1, 3, H, W) float32 in [0, 1] on the CPU, and the ImageInfo to restore the input's mode.
    """
    if isinstance(image, Converted):
        return image.x.clone(), image.info
    if isinstance(image, (str, os.PathLike)):
        image = open_image(image)
    if isinstance(image, Image.Image):
        return _from_pil(image)
    if isinstance(image, np.ndarray):
        return _from_array(image)
    if isinstance(image, torch.Tensor):
        return _from_tensor(image)
    raise ImageError(f"unsupported input type {type(image).__name__}: give a PIL image, uint8 array, tensor or file path")


def to_pil(x: torch.Tensor, info: ImageInfo) -> Image.Image:
    """(1, 3, H, W) float tensor -> PIL image of the original mode (values rounded to 8 bits)."""
    rgb = to_uint8(x)
    image = Image.fromarray(rgb)
    if info.mode == "L":
        return image.convert("L")
    if info.mode == "RGBA":
        image.putalpha(255 if info.alpha_plane is None else Image.fromarray(info.alpha_plane))
    return image


# The alpha field's first byte names its coding (bitstream.ALPHA_CODINGS): WebP's lossless mode
# (about half PNG's size on cut-outs and soft edges) where WebP can hold the picture, else PNG.
WEBP_MAX_SIDE = 16383


def encode_alpha(alpha: np.ndarray) -> bytes:
    """An (H, W) uint8 alpha plane, coded losslessly: a kind byte, then a WebP or PNG image."""
    plane = Image.fromarray(np.ascontiguousarray(alpha), mode="L")
    buffer = io.BytesIO()
    if max(plane.size) <= WEBP_MAX_SIDE and features.check("webp"):
        buffer.write(bytes([ALPHA_WEBP]))
        plane.convert("RGB").save(buffer, format="WEBP", lossless=True, quality=100, method=4)
    else:
        buffer.write(bytes([ALPHA_PNG]))
        plane.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def decode_alpha(data: bytes, height: int, width: int) -> np.ndarray:
    """The (height, width) uint8 alpha plane that `encode_alpha` coded; ImageError if `data` holds
    anything else (its size is checked from the image's header, before any pixel is decoded)."""
    kinds = {ALPHA_PNG: ("PNG", "L"), ALPHA_WEBP: ("WEBP", "RGB")}
    if not data or data[0] not in kinds:
        raise ImageError(f"the alpha plane's coding {data[:1].hex() or 'byte'} is unknown")
    kind, mode = kinds[data[0]]
    if kind == "WEBP" and not features.check("webp"):
        raise ImageError("the alpha plane is coded with WebP, which this Pillow was built without")
    try:
        with Image.open(io.BytesIO(data[1:]), formats=[kind]) as plane:
            if plane.mode != mode or plane.size != (width, height):
                raise ImageError(f"the alpha plane is a {plane.size[0]}x{plane.size[1]} {plane.mode} image, "
                                 f"not {width}x{height}")
            plane.load()
            return np.asarray(plane.getchannel(0)).copy()
    except _READ_ERRORS as err:
        raise ImageError(f"the alpha plane is not a readable {kind} image ({err})") from None


def error_weights(info: ImageInfo) -> torch.Tensor | None:
    """How much each pixel's colour error counts, (1, 1, H, W) float32 in [0, 1]: its squared
    opacity, as a colour error e shows as alpha * e once composited over any background. None for
    an opaque image, and for a fully transparent one (no weight anywhere: every pixel counts alike)."""
    if info.alpha_plane is None:
        return None
    opacity = torch.from_numpy(info.alpha_plane.astype(np.float32)).div_(255)
    if not bool(opacity.any()):
        return None
    return opacity.pow_(2)[None, None]


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) float in [0, 1] -> (H, W, 3) uint8, rounding to nearest."""
    return (x[0].detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def _from_pil(image: Image.Image) -> tuple[torch.Tensor, ImageInfo]:
    mode = image.mode
    if mode == "P":
        has_alpha = "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
        mode = image.mode
    if mode == "1":
        image, mode = image.convert("L"), "L"
    if mode in ("LA", "La", "PA") or (mode in ("RGB", "L") and _keyed_somewhere(image)):
        image, mode = image.convert("RGBA"), "RGBA"  # gray + alpha, or a PNG tRNS colour key: coded as RGBA
    if mode == "CMYK":
        image, mode = _cmyk_in_srgb(image), "RGB"
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        raise ImageError(f"{_describe(mode)} images are not supported: vqcodec codes 8-bit images")
    if mode not in ("RGB", "L", "RGBA"):
        raise ImageError(f"image mode {mode!r} is not supported: convert to RGB, L or RGBA first")
    if mode in ("RGB", "RGBA"):
        image = _in_srgb(image)
    return _from_array(np.asarray(image))


def _keyed_somewhere(image: Image.Image) -> bool:
    """Whether an RGB or L image has a transparent colour key (PNG tRNS) that some pixel has; one
    that no pixel has changes nothing, and the image keeps its mode."""
    if "transparency" not in image.info:
        return False
    return bool((np.asarray(image.convert("RGBA" if image.mode == "RGB" else "LA"))[..., -1] != 255).any())


def _in_srgb(image: Image.Image) -> Image.Image:
    """An RGB(A) image with its embedded ICC profile applied: its colours in sRGB, alpha kept."""
    source = _embedded_profile(image.info.get("icc_profile"), "RGB")
    if source is None:
        return image
    rgb = _through_profile(image.convert("RGB"), source)
    if image.mode == "RGBA":
        rgb.putalpha(image.getchannel("A"))
    return rgb


def _cmyk_in_srgb(image: Image.Image) -> Image.Image:
    """A CMYK image in sRGB: through its embedded CMYK profile, else Pillow's formula (no profile to go by)."""
    source = _embedded_profile(image.info.get("icc_profile"), "CMYK")
    if source is None:
        return image.convert("RGB")
    return _through_profile(image, source)


def _through_profile(image: Image.Image, source: ImageCms.ImageCmsProfile) -> Image.Image:
    """The image's colours, described by `source`, converted to sRGB (relative colorimetric): an RGB image."""
    return ImageCms.profileToProfile(image, source, _srgb_profile(),
                                     renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC, outputMode="RGB")


def _embedded_profile(icc: bytes | None, space: str) -> ImageCms.ImageCmsProfile | None:
    """The embedded profile if it is a readable profile of this colour space ("RGB", "CMYK") and not
    sRGB itself, else None."""
    if not icc:
        return None
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    except (ImageCms.PyCMSError, OSError, ValueError):
        return None  # unreadable: viewers show such images as sRGB, so do we
    if profile.profile.xcolor_space.strip() != space:
        return None
    if "srgb" in (profile.profile.profile_description or "").lower():
        return None  # already sRGB: a conversion could only add rounding
    return profile


@functools.lru_cache(maxsize=1)
def _srgb_profile() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _from_array(array: np.ndarray) -> tuple[torch.Tensor, ImageInfo]:
    if array.dtype != np.uint8:
        raise ImageError(f"arrays must be uint8 (got {array.dtype}); 16-bit and float images are not supported")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        mode, rgb = "L", np.repeat(array[:, :, None], 3, axis=2)
    elif array.ndim == 3 and array.shape[2] == 3:
        mode, rgb = "RGB", array
    elif array.ndim == 3 and array.shape[2] == 4:
        mode, rgb = "RGBA", array[:, :, :3]
    else:
        raise ImageError(f"array shape {array.shape} is not an image: expected (H, W), (H, W, 3) or (H, W, 4)")
    info = ImageInfo(mode, int(rgb.shape[0]), int(rgb.shape[1]))
    _check_size(info)
    if mode == "RGBA" and not (array[:, :, 3] == 255).all():
        info = ImageInfo(mode, info.height, info.width, encode_alpha(array[:, :, 3]))
        rgb = _fill_hidden(rgb, array[:, :, 3])
    x = torch.from_numpy(np.array(rgb, copy=True)).permute(2, 0, 1).unsqueeze(0).float() / 255.0
    return x, info


def _from_tensor(tensor: torch.Tensor) -> tuple[torch.Tensor, ImageInfo]:
    x = tensor.detach()
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
        raise ImageError(f"tensor shape {tuple(tensor.shape)} is not an image: expected (3, H, W) or (1, 3, H, W)")
    if not x.is_floating_point():
        raise ImageError(f"tensors must be float in [0, 1] (got {x.dtype})")
    if not torch.isfinite(x).all():
        raise ImageError("tensor contains NaN or infinite values")
    low, high = float(x.min()), float(x.max())
    if high > 1.5 or low < -0.5:  # far outside [0, 1]: a 0-255 or [-1, 1] scale, not overshoot to clamp
        raise ImageError(f"tensor values span {low:g}..{high:g}: expected floats in [0, 1] "
                         "(divide 0-255 values by 255)")
    info = ImageInfo("RGB", int(x.shape[2]), int(x.shape[3]))
    _check_size(info)
    # Quantize to 8 bits: the codec's contract is 8-bit RGB, so tensors and arrays code the same.
    x = (x.float().cpu().clamp(0, 1) * 255).round() / 255.0
    return x.contiguous(), info


def _fill_hidden(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """`rgb` with the colours of fully transparent pixels replaced by smooth ones spread from the
    visible pixels: a pyramid of visible-pixel means, each level's holes filled from the coarser
    level upsampled (push-pull), so the hidden area continues the picture instead of forming edges."""
    # float32 holds means of 8-bit values well enough, in half float64's memory on large images.
    visible = torch.from_numpy(alpha > 0)[None, None].float()
    if not bool(visible.any()):
        return np.full_like(rgb, 128)  # nothing to see: a flat grey costs the least
    colour = torch.from_numpy(np.asarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None] * visible
    pyramid = [(colour, visible)]
    while max(pyramid[-1][1].shape[-2:]) > 1:
        total, weight = pyramid[-1]
        # Means over 2x2 blocks; their common divisor cancels in total / weight.
        pyramid.append((F.avg_pool2d(total, 2, ceil_mode=True), F.avg_pool2d(weight, 2, ceil_mode=True)))
    total, weight = pyramid[-1]
    filled = total / weight
    for total, weight in reversed(pyramid[:-1]):
        coarse = F.interpolate(filled, size=total.shape[-2:], mode="bilinear", align_corners=False)
        filled = torch.where(weight > 0, total / weight.clamp_min(1e-12), coarse)
    spread = filled[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    return np.where((alpha > 0)[..., None], rgb, spread)


def _check_size(info: ImageInfo) -> None:
    if info.height < 1 or info.width < 1:
        raise ImageError(f"empty image ({info.width}x{info.height})")
    if info.height > MAX_SIDE or info.width > MAX_SIDE or info.height * info.width > MAX_PIXELS:
        raise ImageError(f"image too large ({info.width}x{info.height}); at most {MAX_SIDE} px a side, {MAX_PIXELS} px")


def _describe(mode: str) -> str:
    return {"F": "32-bit float", "I": "32-bit integer"}.get(mode, "16-bit")

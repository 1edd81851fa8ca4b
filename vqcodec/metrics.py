"""Image-quality and rate metrics: one definition each, used by every benchmark.

All distortion metrics compare 8-bit RGB images, the way CompressAI's
`eval_model` does since its "8bit-decoded" results: the reconstruction is
rounded to uint8 before it is measured, so a learned codec gets no credit for
sub-integer precision that no image file could store.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

# pytorch-msssim downsamples 4 times with an 11-tap window; smaller sides make it assert.
MS_SSIM_MIN_SIDE = 161


def to_rgb8(image: Image.Image | np.ndarray) -> np.ndarray:
    """PIL image or uint8 array -> (H, W, 3) uint8 RGB array.

    Gray arrays (H, W) are repeated to three channels; anything that is not
    uint8 is refused, because silently rescaling floats hides bugs.
    """
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise TypeError(f"expected uint8 pixels, got {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {arr.shape}")
    return arr


def _pair(a: Image.Image | np.ndarray, b: Image.Image | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = to_rgb8(a), to_rgb8(b)
    if x.shape != y.shape:
        raise ValueError(f"image sizes differ: {x.shape} vs {y.shape}")
    return x, y


def mse(a: Image.Image | np.ndarray, b: Image.Image | np.ndarray) -> float:
    """Mean squared error over all pixels and channels, in 8-bit units (0..255^2)."""
    x, y = _pair(a, b)
    return float(np.mean((x.astype(np.float64) - y.astype(np.float64)) ** 2))


def psnr(a: Image.Image | np.ndarray, b: Image.Image | np.ndarray) -> float:
    """PSNR in dB over RGB with peak 255; `inf` for identical images."""
    err = mse(a, b)
    return math.inf if err == 0 else 10.0 * math.log10(255.0**2 / err)


def _tensor(x: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(x.astype(np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0)


def ms_ssim(a: Image.Image | np.ndarray, b: Image.Image | np.ndarray) -> float:
    """MS-SSIM on RGB in [0, 1] (pytorch-msssim defaults, data_range=1), as CompressAI.

    Raises ValueError for images whose smaller side is under 161 pixels: the
    five-scale pyramid does not fit, and a shrunken window would be a different
    metric than the published one.
    """
    from pytorch_msssim import ms_ssim as _ms_ssim

    x, y = _pair(a, b)
    if min(x.shape[:2]) < MS_SSIM_MIN_SIDE:
        raise ValueError(f"MS-SSIM needs both sides >= {MS_SSIM_MIN_SIDE} px, got {x.shape[1]}x{x.shape[0]}")
    with torch.no_grad():
        return float(_ms_ssim(_tensor(x), _tensor(y), data_range=1.0))


def ms_ssim_db(value: float) -> float:
    """MS-SSIM as -10 log10(1 - MS-SSIM), the scale RD plots use; `inf` at 1."""
    return math.inf if value >= 1.0 else -10.0 * math.log10(1.0 - value)


def bpp(size_bytes: int, width: int, height: int) -> float:
    """Bits per pixel of a compressed size for a width x height image."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    return 8.0 * size_bytes / (width * height)


def histogram_entropy(counts: np.ndarray) -> float:
    """Entropy in bits per symbol of the symbol frequencies `counts` (unused symbols ignored).

    2**entropy is a codebook's perplexity; entropy times the symbol count is what a memoryless
    coder would need for them.
    """
    total = counts.sum()
    if total <= 0:
        raise ValueError("counts must contain at least one symbol")
    p = counts[counts > 0] / total
    return float(-(p * np.log2(p)).sum())

"""Per-image decoder adaptation: a least-squares correction of the decoder's output, sent in the file.

The decoder is trained for the average photo; any one image is decoded better by a slightly
different last layer. The encoder has the image, so it fits, for that image, a scale and a shift
for each channel of the feature map the decoder's last layer reads, and an offset per colour,
minimising the squared error of the decoded picture. The last layer is linear, so this is a linear
least-squares problem solved in one pass (the idea of VVC's adaptive loop filter, applied to the
network's last features). The parameters are rounded to STEP and Rice-coded into the file: 67
numbers for the bundled models, about 60 bytes; the symbols, and so their bits, do not change.

The encoder sends them only when they buy at least MIN_GAIN_DB_PER_BPP decibels for each bit per
pixel they cost, so tiny images, where 60 bytes weigh a lot, go without.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqcodec.vqvae import VQVAE2, OutputAffine

__all__ = ["Adaptation", "STEP", "MIN_GAIN_DB_PER_BPP", "parameter_count", "fit", "worth_sending", "to_bytes", "from_bytes"]

STEP = 2.0 ** -8                 # quantization step of every parameter (scale deltas, shifts, offsets)
LIMIT = 1 << 12                  # |parameter| <= LIMIT steps: a scale within 1 +- 16
MIN_GAIN_DB_PER_BPP = 30.0       # the family's steepest slope (vqc-1 -> vqc-2 on Kodak is ~28 dB/bpp)
RIDGE = 1e-6                     # relative pull towards "no change": keeps dead or twin channels at 0
MAX_RICE_QUOTIENT = 64           # longest unary part a reader accepts (bounds a forged file's work)
_BAND_PIXELS = 1 << 16           # output pixels per band while fitting: ~100 MB of design matrix


@dataclass(frozen=True)
class Adaptation:
    """Integer parameters in STEPs: scale deltas (C), shifts (C), colour offsets (3), in that order."""

    values: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.values) < 3 or (len(self.values) - 3) % 2:
            raise ValueError(f"an adaptation has 2 C + 3 parameters, got {len(self.values)}")
        if any(not isinstance(v, int) or abs(v) > LIMIT for v in self.values):
            raise ValueError(f"adaptation parameters must be ints within +-{LIMIT}")

    @property
    def channels(self) -> int:
        return (len(self.values) - 3) // 2

    def affine(self, device: torch.device | str = "cpu") -> OutputAffine:
        """The float correction the decoder applies (`VQVAE2.decode(..., affine=)`)."""
        v = torch.tensor(self.values, dtype=torch.float32, device=device) * STEP
        c = self.channels
        return OutputAffine(scale=1 + v[:c], shift=v[c : 2 * c], offset=v[2 * c :])


def parameter_count(vqvae: VQVAE2) -> int:
    """How many parameters an adaptation of this model has."""
    return 2 * vqvae.last_layer().in_channels + 3


@torch.no_grad()
def fit(vqvae: VQVAE2, symbols: list[Tensor], x: Tensor) -> tuple[Adaptation, float, float]:
    """The rounded least-squares adaptation of `symbols`' decoding towards x (1, 3, H, W) in [0, 1].

    Returns (adaptation, mean squared error of the decoded picture without it, with it); the
    errors are of the unclamped float pictures, the second after rounding the parameters.
    """
    layer = vqvae.last_layer()
    features = vqvae.last_features(symbols).float().cpu()  # the fit runs on the CPU, in float64 sums
    x = x.float().cpu()
    height, width = x.shape[-2:]
    count = 2 * layer.in_channels + 3
    gram = torch.zeros(count, count, dtype=torch.float64)
    moment = torch.zeros(count, dtype=torch.float64)
    energy = 0.0
    for design, residual in _bands(layer, features, x):
        gram += design.T @ design
        moment += design.T @ residual
        energy += float(residual @ residual)
    pixels = 3 * height * width
    ridge = RIDGE * float(gram.diagonal().mean()) + 1e-12
    solution = torch.linalg.solve(gram + ridge * torch.eye(count, dtype=torch.float64), moment)
    values = tuple(int(v) for v in (solution / STEP).round().clamp(-LIMIT, LIMIT).tolist())
    chosen = torch.tensor(values, dtype=torch.float64) * STEP
    # squared error after = |r - A p|^2 = |r|^2 - 2 p.A'r + p.A'A p
    after = energy - float(2 * chosen @ moment - chosen @ gram @ chosen)
    return Adaptation(values), energy / pixels, max(after, 0.0) / pixels


def worth_sending(adaptation: Adaptation, mse_without: float, mse_with: float, pixels: int) -> bool:
    """Whether the PSNR the adaptation buys pays for its bytes at MIN_GAIN_DB_PER_BPP (pixels: H * W)."""
    if mse_with >= mse_without:
        return False
    gain_db = 10 * math.log10(mse_without / max(mse_with, 1e-12))
    cost_bpp = 8 * (len(to_bytes(adaptation)) + 2) / pixels  # + the header's length field
    return gain_db >= MIN_GAIN_DB_PER_BPP * cost_bpp


def _bands(layer: nn.Module, features: Tensor, x: Tensor):
    """Per band of feature rows: the design matrix (pixels * 3, 2 C + 3) whose columns are each
    parameter's effect on the decoded picture, and the residual x - x_hat, real pixels only."""
    if not isinstance(layer, nn.ConvTranspose2d) or layer.stride[0] != layer.stride[1]:
        raise ValueError("adaptation needs a decoder that ends in a square-stride transposed convolution")
    stride, channels = layer.stride[0], layer.in_channels
    reach = -(-layer.kernel_size[0] // stride)  # feature rows on each side an output row can read
    height, width = x.shape[-2:]
    rows = features.shape[-2]
    band_rows = max(1, _BAND_PIXELS // (stride * stride * features.shape[-1]))
    for top in range(0, rows, band_rows):
        lo, hi = max(0, top - reach), min(rows, top + band_rows + reach)
        band = features[..., lo:hi, :]
        first, last = (top - lo) * stride, (min(rows, top + band_rows) - lo) * stride
        y0 = top * stride
        last = min(last, first + height - y0)
        if last <= first:
            break
        scaled = channel_contributions(layer, band)[..., first:last, :width]              # (C, 3, h, w)
        shifted = channel_contributions(layer, torch.ones_like(band))[..., first:last, :width]
        x_hat = scaled.sum(0) + layer.bias.detach().float().cpu().view(3, 1, 1) + 0.5   # (3, h, w)
        residual = (x[0, :, y0 : y0 + last - first, :] - x_hat).reshape(-1)
        n = x_hat[0].numel()
        offsets = torch.zeros(3 * n, 3)
        for colour in range(3):
            offsets[colour * n : (colour + 1) * n, colour] = 1
        design = torch.cat([scaled.reshape(channels, -1).T, shifted.reshape(channels, -1).T, offsets], dim=1)
        yield design.double(), residual.double()


def channel_contributions(layer: nn.ConvTranspose2d, features: Tensor) -> Tensor:
    """(1, C, h, w) -> (C, 3, H, W): each input channel's contribution to the output, no bias."""
    channels = features.shape[1]
    out = F.conv_transpose2d(features, layer.weight.detach().float().cpu(), None, stride=layer.stride, padding=layer.padding,
                             groups=channels)
    return out.view(channels, -1, *out.shape[-2:])


# ---- bytes: k u8, then Rice codes of the zigzagged parameters, most significant bit first ----------


def to_bytes(adaptation: Adaptation) -> bytes:
    """Rice-code the parameters with the k that gives the fewest bytes."""
    unsigned = [_zigzag(v) for v in adaptation.values]
    k = min((k for k in range(16) if max(u >> k for u in unsigned) <= MAX_RICE_QUOTIENT),
            key=lambda k: sum((u >> k) + 1 + k for u in unsigned))
    bits: list[int] = []
    for u in unsigned:
        bits += [1] * (u >> k) + [0] + [(u >> i) & 1 for i in reversed(range(k))]
    return bytes([k]) + np.packbits(np.array(bits, dtype=np.uint8)).tobytes()


def from_bytes(data: bytes, count: int) -> Adaptation:
    """Read `count` parameters; ValueError names what is wrong with a damaged field."""
    if not data:
        raise ValueError("adaptation field is empty")
    k = data[0]
    if k >= 16:
        raise ValueError(f"adaptation field has Rice parameter {k}, not 0..15")
    bits = np.unpackbits(np.frombuffer(data[1:], dtype=np.uint8))
    values, at = [], 0
    for _ in range(count):
        ones = 0
        while at < len(bits) and bits[at]:
            ones, at = ones + 1, at + 1
            if ones > MAX_RICE_QUOTIENT:
                raise ValueError("adaptation field holds an over-long code")
        if at + 1 + k > len(bits):
            raise ValueError("adaptation field is truncated")
        remainder = int("".join(map(str, bits[at + 1 : at + 1 + k])) or "0", 2)
        at += 1 + k
        values.append(_unzigzag((ones << k) | remainder))
    if len(bits) - at >= 8 or bits[at:].any():
        raise ValueError("adaptation field has bytes after its parameters")
    try:
        return Adaptation(tuple(values))
    except ValueError as err:
        raise ValueError(f"adaptation field: {err}") from None


def _zigzag(v: int) -> int:
    return 2 * v if v >= 0 else -2 * v - 1


def _unzigzag(u: int) -> int:
    return u // 2 if u % 2 == 0 else -(u + 1) // 2

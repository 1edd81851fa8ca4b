"""Per-image decoder adaptation: a least-squares correction of the decoder's output, sent in the file.

The decoder is trained for the average photo; any one image is decoded better by a slightly
different last layer. The encoder has the image, so it fits, for that image, a scale and a shift
for each channel of the feature map the decoder's last layer reads, and an offset per colour,
minimising the squared error of the decoded picture. The last layer is linear, so this is a linear
least-squares problem solved in one pass (the idea of VVC's adaptive loop filter, applied to the
network's last features). The parameters are rounded to STEP and Rice-coded into the file: 67
numbers for the bundled models, about 60 bytes; the symbols, and so their bits, do not change.

Richer designs (format version 5) give each channel a scale per colour (4 C + 3 numbers) and add a
3x3 cross-colour filter of the decoded picture (81 more), fitted by least squares too; they pay on
large images, where their extra bytes weigh little. The encoder sends the design whose gain, less
its bytes priced at MIN_GAIN_DB_PER_BPP decibels per bit per pixel, is largest, and nothing when
none pays, so tiny images, where 60 bytes weigh a lot, go without.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqcodec import bitstream
from vqcodec.vqvae import VQVAE2, OutputAffine

__all__ = ["Adaptation", "STEP", "MIN_GAIN_DB_PER_BPP", "parameter_count", "fit", "Fit", "best", "worth_sending", "apply_loop_filter",
           "to_bytes", "from_bytes", "FILM", "PER_COLOUR", "LOOP_FILTER", "DESIGNS"]

STEP = 2.0 ** -8                 # quantization step of every parameter (scale deltas, shifts, offsets)
LIMIT = 1 << 12                  # |parameter| <= LIMIT steps: a scale within 1 +- 16
MIN_GAIN_DB_PER_BPP = 30.0       # the family's steepest slope (vqc-1 -> vqc-2 on Kodak is ~28 dB/bpp)
RIDGE = 1e-6                     # relative pull towards "no change": keeps dead or twin channels at 0
MAX_RICE_QUOTIENT = 64           # longest unary part a reader accepts (bounds a forged file's work)
_BAND_PIXELS = 1 << 16           # output pixels per band while fitting: ~100 MB of design matrix


FILM = 0                                  # design: scale and shift per channel, offset per colour (2 C + 3)
PER_COLOUR = bitstream.DESIGN_PER_COLOUR  # design flag: a scale per channel and colour instead (4 C + 3)
LOOP_FILTER = bitstream.DESIGN_LOOP_FILTER  # design flag: then a 3x3 cross-colour filter on the picture (81 more)
DESIGNS = (FILM, PER_COLOUR, FILM | LOOP_FILTER, PER_COLOUR | LOOP_FILTER)
FILTER_TAPS = 81    # 3 output colours x 3 input colours x 3 x 3


@dataclass(frozen=True)
class Adaptation:
    """Integer parameters in STEPs: scale deltas (C, or 3 C colour by colour with PER_COLOUR),
    shifts (C), colour offsets (3), then with LOOP_FILTER the filter's 81 taps, in that order."""

    values: tuple[int, ...]
    design: int = FILM

    def __post_init__(self) -> None:
        if self.design not in DESIGNS:
            raise ValueError(f"adaptation design must be one of {DESIGNS}, got {self.design!r}")
        per_channel = len(self.values) - 3 - (FILTER_TAPS if self.filtered else 0)
        share = 4 if self.per_colour else 2
        if per_channel < 0 or per_channel % share:
            raise ValueError(f"this adaptation design has {share} C + 3{' + 81' if self.filtered else ''} "
                             f"parameters, got {len(self.values)}")
        if any(not isinstance(v, int) or abs(v) > LIMIT for v in self.values):
            raise ValueError(f"adaptation parameters must be ints within +-{LIMIT}")

    @property
    def per_colour(self) -> bool:
        return bool(self.design & PER_COLOUR)

    @property
    def filtered(self) -> bool:
        return bool(self.design & LOOP_FILTER)

    @property
    def channels(self) -> int:
        return (len(self.values) - 3 - (FILTER_TAPS if self.filtered else 0)) // (4 if self.per_colour else 2)

    def affine(self, device: torch.device | str = "cpu") -> OutputAffine:
        """The float correction of the last layer (`VQVAE2.decode(..., affine=)`)."""
        v = torch.tensor(self.values, dtype=torch.float32, device=device) * STEP
        c, scales = self.channels, (3 if self.per_colour else 1) * self.channels
        scale = 1 + (v[:scales].view(3, c) if self.per_colour else v[:c])
        return OutputAffine(scale=scale, shift=v[scales : scales + c], offset=v[scales + c : scales + c + 3])

    def loop_filter(self) -> Tensor | None:
        """The picture filter's taps (3, 3, 3, 3) as conv2d weights, or None without LOOP_FILTER."""
        if not self.filtered:
            return None
        return (torch.tensor(self.values[-FILTER_TAPS:], dtype=torch.float32) * STEP).view(3, 3, 3, 3)


def parameter_count(vqvae: VQVAE2, design: int = FILM) -> int:
    """How many parameters an adaptation of this model has in this design."""
    return _count(vqvae.last_layer().in_channels, design)


def _count(channels: int, design: int) -> int:
    return (4 if design & PER_COLOUR else 2) * channels + 3 + (FILTER_TAPS if design & LOOP_FILTER else 0)


def apply_loop_filter(picture: Tensor, adaptation: Adaptation | None) -> Tensor:
    """picture (1, 3, H, W) plus the adaptation's 3x3 cross-colour filter of it (edges replicated)."""
    taps = adaptation.loop_filter() if adaptation is not None else None
    if taps is None:
        return picture
    padded = F.pad(picture.float(), (1, 1, 1, 1), mode="replicate")
    return picture + F.conv2d(padded, taps.to(picture.device))


@dataclass(frozen=True)
class Fit:
    """A fitted adaptation with the mean squared errors of the decoded picture without and with it."""

    adaptation: Adaptation
    mse_without: float
    mse_with: float


@torch.no_grad()
def fit(vqvae: VQVAE2, symbols: list[Tensor], x: Tensor, designs: tuple[int, ...] = (FILM,),
        weights: Tensor | None = None) -> list[Fit]:
    """The rounded least-squares adaptations of `symbols`' decoding towards x (1, 3, H, W) in [0, 1],
    one per design, in that order; with `weights` (1, 1, H, W), weighted least squares, and the
    errors reported are weighted means (`rdo.squared_error`).

    One pass over the picture gathers the normal equations of the per-colour design; the FILM
    design's are a linear map of them (its scale is the same in every colour). A LOOP_FILTER design
    is then fitted on the picture the other parameters decode to. The errors are of unclamped float
    pictures, after rounding the parameters.
    """
    layer = vqvae.last_layer()
    channels = layer.in_channels
    features = vqvae.last_features(symbols).float()  # the sums run on the CPU, in float64
    x = x.float().cpu()
    roots = weights.float().cpu().clamp_min(0).sqrt() if weights is not None else None  # rows scale by sqrt(w)
    gram, moment, energy = _normal_equations(layer, features.cpu(), x, roots)
    pixels = 3 * (x.shape[-2] * x.shape[-1] if roots is None else max(float(roots.pow(2).sum()), 1e-12))
    fits = []
    for design in designs:
        values, after = _solve(gram, moment, energy, _restriction(channels, design & PER_COLOUR))
        adaptation = Adaptation(values, design & PER_COLOUR)
        if design & LOOP_FILTER:
            adaptation, after = _with_loop_filter(vqvae, features, x, adaptation, design, roots)
        fits.append(Fit(adaptation, energy / pixels, max(after, 0.0) / pixels))
    return fits


def _normal_equations(layer: nn.Module, features: Tensor, x: Tensor,
                      roots: Tensor | None = None) -> tuple[Tensor, Tensor, float]:
    """Gram matrix (4 C + 3)^2, moment (4 C + 3) and residual energy of the per-colour design;
    with `roots` (1, 1, H, W), each pixel's row scaled by its root weight.

    A colour's pixels depend only on its own C scales and offset and on the C shared shifts, so the
    design matrix is mostly zeros: each colour adds the gram of its 2 C + 1 columns to its block
    (a quarter of the work of the whole matrix's gram, and no zeros are built).
    """
    channels = layer.in_channels
    count = 4 * channels + 3
    gram = torch.zeros(count, count, dtype=torch.float64)
    moment = torch.zeros(count, dtype=torch.float64)
    energy = 0.0
    shifts = torch.arange(3 * channels, 4 * channels)
    blocks = [torch.cat([torch.arange(colour * channels, (colour + 1) * channels), shifts,
                         torch.tensor([4 * channels + colour])]) for colour in range(3)]
    for scaled, shifted, residual, root in _bands(layer, features, x, roots):
        n = residual.shape[-1]
        for colour, block in enumerate(blocks):
            columns = torch.cat([scaled[:, colour], shifted[:, colour], torch.ones(1, n)]).double()  # (2 C + 1, n)
            r = residual[colour].double()
            if root is not None:
                columns, r = columns * root.double(), r * root.double()
            gram[block[:, None], block] += columns @ columns.T
            moment[block] += columns @ r
            energy += float(r @ r)
    return gram, moment, energy


def _restriction(channels: int, per_colour: int) -> Tensor:
    """(4 C + 3, n) map from a design's parameters to the per-colour design's: the identity, or for
    FILM its one scale per channel copied to the three colours."""
    if per_colour:
        return torch.eye(4 * channels + 3, dtype=torch.float64)
    restriction = torch.zeros(4 * channels + 3, 2 * channels + 3, dtype=torch.float64)
    for colour in range(3):
        restriction[colour * channels : (colour + 1) * channels, :channels] = torch.eye(channels)
    restriction[3 * channels :, channels:] = torch.eye(channels + 3)
    return restriction


def _solve(gram: Tensor, moment: Tensor, energy: float, restriction: Tensor) -> tuple[tuple[int, ...], float]:
    """Ridge least squares in the restricted parameters, rounded to STEP: (values, squared error)."""
    gram, moment = restriction.T @ gram @ restriction, restriction.T @ moment
    ridge = RIDGE * float(gram.diagonal().mean()) + 1e-12
    solution = torch.linalg.solve(gram + ridge * torch.eye(len(moment), dtype=torch.float64), moment)
    values = tuple(int(v) for v in (solution / STEP).round().clamp(-LIMIT, LIMIT).tolist())
    chosen = torch.tensor(values, dtype=torch.float64) * STEP
    # squared error after = |r - A p|^2 = |r|^2 - 2 p.A'r + p.A'A p
    return values, energy - float(2 * chosen @ moment - chosen @ gram @ chosen)


def _with_loop_filter(vqvae: VQVAE2, features: Tensor, x: Tensor, adaptation: Adaptation,
                      design: int, roots: Tensor | None = None) -> tuple[Adaptation, float]:
    """The adaptation with a 3x3 cross-colour filter fitted to the picture it decodes to (from the
    decoder's last features, so the decoder does not run again)."""
    affine = adaptation.affine(features.device)
    height, width = x.shape[-2:]
    # Band by band, like the fit, so the layer's temporaries stay small on large images.
    picture = torch.cat([vqvae.last_layer_output(band, affine)[..., first:last, :width].float().cpu()
                         for band, first, last, _ in _feature_bands(vqvae.last_layer(), features, height)], dim=-2)
    # Every colour's filter reads the same neighbourhoods: one gram, a moment and an energy per colour.
    gram = torch.zeros(27, 27, dtype=torch.float64)
    moments = torch.zeros(3, 27, dtype=torch.float64)
    energies = [0.0] * 3
    for around, residuals in _filter_bands(picture, x, roots):
        gram += around.T @ around
        for colour in range(3):
            moments[colour] += around.T @ residuals[colour]
            energies[colour] += float(residuals[colour] @ residuals[colour])
    taps, after = [], 0.0
    for colour in range(3):
        values, error = _solve(gram, moments[colour], energies[colour], torch.eye(27, dtype=torch.float64))
        taps += values
        after += error
    return Adaptation(adaptation.values + tuple(taps), design), after


def _filter_bands(picture: Tensor, x: Tensor, roots: Tensor | None = None):
    """Per band of rows: each pixel's 3x3 neighbourhood in all colours (pixels, 27) and the
    residual of each colour (3, pixels), float64; both scaled by the pixel's root weight, if any."""
    height, width = picture.shape[-2:]
    padded = F.pad(picture, (1, 1, 1, 1), mode="replicate")
    band_rows = max(1, _BAND_PIXELS // width)
    for top in range(0, height, band_rows):
        bottom = min(height, top + band_rows)
        around = F.unfold(padded[..., top : bottom + 2, :], 3)[0].T  # (rows * width, 27)
        residuals = (x[0, :, top:bottom] - picture[0, :, top:bottom]).reshape(3, -1)
        if roots is not None:
            root = roots[0, 0, top:bottom].reshape(-1)
            around, residuals = around * root[:, None], residuals * root
        yield around.double(), residuals.double()


def worth_sending(adaptation: Adaptation, mse_without: float, mse_with: float, pixels: int) -> bool:
    """Whether the PSNR the adaptation buys pays for its bytes at MIN_GAIN_DB_PER_BPP (pixels: H * W)."""
    return mse_with < mse_without and _net_gain_db(Fit(adaptation, mse_without, mse_with), pixels) >= 0


def best(fits: list[Fit], pixels: int) -> Adaptation | None:
    """The fitted adaptation whose gain, less its bytes priced at MIN_GAIN_DB_PER_BPP, is largest;
    None when none pays for itself (pixels: the image's H * W)."""
    paying = [f for f in fits if worth_sending(f.adaptation, f.mse_without, f.mse_with, pixels)]
    return max(paying, key=lambda f: _net_gain_db(f, pixels)).adaptation if paying else None


def _net_gain_db(fitted: Fit, pixels: int) -> float:
    gain_db = 10 * math.log10(max(fitted.mse_without, 1e-12) / max(fitted.mse_with, 1e-12))
    cost_bpp = 8 * (len(to_bytes(fitted.adaptation)) + 2) / pixels  # + the header's length field
    return gain_db - MIN_GAIN_DB_PER_BPP * cost_bpp


def _feature_bands(layer: nn.Module, features: Tensor, height: int):
    """Bands of about _BAND_PIXELS output pixels: (band, first, last, y0), where the last layer on
    `band` (feature rows with the layer's reach on each side) gives output rows first:last, which
    are the picture's rows y0 : y0 + last - first (real rows only, up to `height`)."""
    if not isinstance(layer, nn.ConvTranspose2d) or layer.stride[0] != layer.stride[1]:
        raise ValueError("adaptation needs a decoder that ends in a square-stride transposed convolution")
    stride = layer.stride[0]
    reach = -(-layer.kernel_size[0] // stride)  # feature rows on each side an output row can read
    rows = features.shape[-2]
    band_rows = max(1, _BAND_PIXELS // (stride * stride * features.shape[-1]))
    for top in range(0, rows, band_rows):
        lo, hi = max(0, top - reach), min(rows, top + band_rows + reach)
        first, last = (top - lo) * stride, (min(rows, top + band_rows) - lo) * stride
        y0 = top * stride
        last = min(last, first + height - y0)
        if last <= first:
            break
        yield features[..., lo:hi, :], first, last, y0


def _bands(layer: nn.Module, features: Tensor, x: Tensor, roots: Tensor | None = None):
    """Per band of feature rows, real pixels only: each channel's contribution to each colour,
    scaled (C, 3, n) and as a unit shift (C, 3, n), the residual x - x_hat (3, n), and the pixels'
    root weights (n; None without `roots`)."""
    channels, (height, width) = layer.in_channels, x.shape[-2:]
    bias = layer.bias.detach().float().cpu().view(3, 1, 1)
    unit_shifts: dict[tuple[int, ...], Tensor] = {}  # a unit shift's contributions depend on the band's shape only
    for band, first, last, y0 in _feature_bands(layer, features, height):
        scaled = channel_contributions(layer, band)[..., first:last, :width]              # (C, 3, h, w)
        if band.shape not in unit_shifts:
            unit_shifts[band.shape] = channel_contributions(layer, torch.ones_like(band))
        shifted = unit_shifts[band.shape][..., first:last, :width]
        x_hat = scaled.sum(0) + bias + 0.5                                                 # (3, h, w)
        residual = x[0, :, y0 : y0 + last - first, :] - x_hat
        root = roots[0, 0, y0 : y0 + last - first, :].reshape(-1) if roots is not None else None
        yield scaled.reshape(channels, 3, -1), shifted.reshape(channels, 3, -1), residual.reshape(3, -1), root


def channel_contributions(layer: nn.ConvTranspose2d, features: Tensor) -> Tensor:
    """(1, C, h, w) -> (C, 3, H, W): each input channel's contribution to the output, no bias."""
    channels = features.shape[1]
    out = F.conv_transpose2d(features, layer.weight.detach().float().cpu(), None, stride=layer.stride, padding=layer.padding,
                             groups=channels)
    return out.view(channels, -1, *out.shape[-2:])


# ---- bytes: [design u8], k u8, then Rice codes of the zigzagged parameters, most significant bit first


def to_bytes(adaptation: Adaptation, *, with_design: bool = True) -> bytes:
    """Rice-code the parameters with the k that gives the fewest bytes, after the design byte
    (format version 5; version 4 had only the FILM design and no design byte)."""
    if not with_design and adaptation.design != FILM:
        raise ValueError("only the FILM design can be written without its design byte")
    unsigned = [_zigzag(v) for v in adaptation.values]
    k = min((k for k in range(16) if max(u >> k for u in unsigned) <= MAX_RICE_QUOTIENT),
            key=lambda k: sum((u >> k) + 1 + k for u in unsigned))
    bits: list[int] = []
    for u in unsigned:
        bits += [1] * (u >> k) + [0] + [(u >> i) & 1 for i in reversed(range(k))]
    design = bytes([adaptation.design]) if with_design else b""
    return design + bytes([k]) + np.packbits(np.array(bits, dtype=np.uint8)).tobytes()


def from_bytes(data: bytes, channels: int, *, with_design: bool = True) -> Adaptation:
    """Read the adaptation of a model whose last layer reads `channels` channels; ValueError names
    what is wrong with a damaged field."""
    if not data:
        raise ValueError("adaptation field is empty")
    design = FILM
    if with_design:
        design, data = data[0], data[1:]
        if design not in DESIGNS:
            raise ValueError(f"adaptation field has design {design}, not one of {DESIGNS}")
        if not data:
            raise ValueError("adaptation field is truncated")
    k = data[0]
    if k >= 16:
        raise ValueError(f"adaptation field has Rice parameter {k}, not 0..15")
    count = _count(channels, design)
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
        return Adaptation(tuple(values), design)
    except ValueError as err:
        raise ValueError(f"adaptation field: {err}") from None


def _zigzag(v: int) -> int:
    return 2 * v if v >= 0 else -2 * v - 1


def _unzigzag(u: int) -> int:
    return u // 2 if u % 2 == 0 else -(u + 1) // 2

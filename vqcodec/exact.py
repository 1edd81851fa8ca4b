"""Machine-independent evaluation of the prior, for the probabilities the entropy coder uses.

Why: rANS decodes only if both sides hand it bit-identical probabilities, and float32
convolutions sum in an order that depends on the thread count, the CPU's vector width and the
library (measured: the default model's bottom-level logits of a Kodak image differed by up to
1.2e-4 between 1 and 2 threads, and a file compressed with 2 threads failed to decompress with
1). Rounding logits to a 1/32-nat grid does not absorb that: a logit near a grid boundary flips.

How: integer arithmetic, carried in float64. Every convolution's weights become integers of at
most WEIGHT_BITS bits with one scale per output channel, and its input is rounded to the
fixed-point grid 2^-FRACTION_BITS (and clamped), so the convolution sums integer products whose
magnitudes stay below 2^53: float64 computes such sums exactly, in any order, with any blocking
or thread count. What remains are single IEEE operations, correctly rounded on every machine
(scaling, bias, ReLU, masks, adding two tensors), and lookups: the raster order's tanh and
sigmoid come from a table built with `decimal`. The integer weights and scales are derived from
the model's float weights by the same deterministic steps on both sides.

Measured on the bundled models (benchmarks/exact_coding.py): coded sizes move by +0.000 to
+0.015 % (the fixed-point grid is far finer than the probability grid); the coding passes take
1.6-1.9x their float32 time in the fast order, 1.6-2.5x in the raster order.
"""

from __future__ import annotations

import copy
import decimal
import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqcodec.context import Gate, GroupedContextModel

FRACTION_BITS = 12  # activations are rounded to multiples of 2^-12 before each convolution
WEIGHT_BITS = 15  # weights: integers in [-(2^15 - 1), 2^15 - 1] times a per-channel scale
# Activations are clamped to +-2^26 grid steps (+-16384): with 15-bit weights and at most 2^11
# products per output (1,296 in the bundled models) every partial sum stays below 2^52.
ACTIVATION_LIMIT = 2.0**26
MAX_FAN_IN = 2**11
# The fast order's conditioning features are computed in bands of this many rows: whole, a 12 MP
# image's bottom level needed 1.5 GB in float64 for them.
FEATURE_BAND_ROWS = 128
GATE_BITS = 10  # gate inputs are rounded to multiples of 2^-10 before the table lookup
GATE_RANGE = 16  # sigmoid is tabulated on [-16, 16]; beyond it, the end values


class ExactConv(nn.Module):
    """A Conv2d or ConvTranspose2d (groups 1, dilation 1) in exact integer arithmetic.

    y = conv(round(x * 2^F), W_int) * (scale * 2^-F) + bias, per output channel.
    """

    def __init__(self, conv: nn.Conv2d | nn.ConvTranspose2d) -> None:
        super().__init__()
        if conv.groups != 1 or tuple(conv.dilation) != (1, 1):
            raise ValueError("exact convolutions support groups=1 and dilation=1 only")
        self.transposed = isinstance(conv, nn.ConvTranspose2d)
        weight = conv.weight.detach().double()
        if self.transposed:  # (in, out, kh, kw): scale the output channels, axis 1
            weight = weight.transpose(0, 1)
        if weight[0].numel() > MAX_FAN_IN:
            raise ValueError(f"{weight[0].numel()} products per output exceed the exact bound {MAX_FAN_IN}")
        rows = weight.reshape(weight.shape[0], -1)
        scale = (rows.abs().amax(dim=1) / (2**WEIGHT_BITS - 1)).clamp_min(2.0**-60)
        codes = torch.round(weight / scale.view(-1, 1, 1, 1))
        self.register_buffer("codes", codes.transpose(0, 1).contiguous() if self.transposed else codes)
        self.register_buffer("scale", (scale * 2.0**-FRACTION_BITS).view(1, -1, 1, 1))
        bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(scale)
        self.register_buffer("bias", bias.view(1, -1, 1, 1))
        self.stride, self.padding = conv.stride, conv.padding
        self.output_padding = getattr(conv, "output_padding", (0, 0))

    def forward(self, x: Tensor) -> Tensor:
        grid = x.double().mul(2.0**FRACTION_BITS).round_().clamp_(-ACTIVATION_LIMIT, ACTIVATION_LIMIT)  # one new tensor
        if self.transposed:
            total = F.conv_transpose2d(grid, self.codes, stride=self.stride, padding=self.padding,
                                       output_padding=self.output_padding)
        elif self.stride == (1, 1):  # matrix products per kernel tap: float64 conv2d is a slow im2col
            total = _tap_sum(grid, self.codes, self.padding)
        else:
            total = F.conv2d(grid, self.codes, stride=self.stride, padding=self.padding)
        return total.mul_(self.scale).add_(self.bias)  # two correctly rounded operations, no fused multiply-add


def _tap_sum(grid: Tensor, codes: Tensor, padding: tuple[int, int]) -> Tensor:
    """Stride-1 convolution as one channel contraction per kernel tap, summed (exact: integers)."""
    kh, kw = codes.shape[-2:]
    if padding != (0, 0):
        grid = F.pad(grid, (padding[1], padding[1], padding[0], padding[0]))
    height, width = grid.shape[-2] - kh + 1, grid.shape[-1] - kw + 1
    total = None
    for i in range(kh):
        for j in range(kw):
            tap = torch.einsum("bchw,oc->bohw", grid[..., i : i + height, j : j + width], codes[:, :, i, j])
            total = tap if total is None else total.add_(tap)
    return total


class ExactGroupedInput(nn.Module):
    """The fast order's input layer, inp(unshuffle(embed(symbols) * visible, visible)), as lookups.

    inp is linear and its input per cell is one symbol and one visibility bit per phase, so its
    integer sum is a sum over the s * s phases of precomputed integer rows: for phase p and code k,
    T[p, k] = sum_c Wq[:, c s^2 + p] * round(embed[k, c] * 2^F), plus Wq[:, C s^2 + p] * 2^F for the
    visibility channel, where visible. The sums are the ones ExactConv would form, so the output
    is bit-identical to ExactConv(inp) on the unshuffled input, without the full-resolution tensors.
    """

    def __init__(self, embed: nn.Embedding, inp: nn.Conv2d, side: int) -> None:
        super().__init__()
        conv = ExactConv(inp)
        phases, channels = side * side, embed.weight.shape[1]
        codes = conv.codes[:, :, 0, 0].view(-1, channels + 1, phases)  # (out, C + 1, s*s), channel-major
        grid = torch.round(embed.weight.detach().double() * 2.0**FRACTION_BITS).clamp(-ACTIVATION_LIMIT, ACTIVATION_LIMIT)
        self.register_buffer("rows", torch.einsum("kc,ocp->pko", grid, codes[:, :channels]).contiguous())  # (s*s, K, out)
        self.register_buffer("visible_rows", (codes[:, channels] * 2.0**FRACTION_BITS).t().contiguous())  # (s*s, out)
        self.register_buffer("scale", conv.scale)
        self.register_buffer("bias", conv.bias)
        self.side = side

    def forward(self, symbols: Tensor, visible: Tensor) -> Tensor:
        """symbols (B, hp, wp) int64, visible (1, 1, hp, wp) 0/1 -> (B, out, hp / s, wp / s) float64."""
        s = self.side
        batch, hp, wp = symbols.shape
        cells = symbols.view(batch, hp // s, s, wp // s, s)
        shown = visible.to(torch.float64).view(1, hp // s, s, wp // s, s)
        total = None
        for i in range(s):
            for j in range(s):
                phase = i * s + j
                part = (self.rows[phase][cells[:, :, i, :, j]] + self.visible_rows[phase]) \
                    * shown[:, :, i, :, j].unsqueeze(-1)  # (B, hp/s, wp/s, out): integers, or 0
                total = part if total is None else total.add_(part)
        return total.permute(0, 3, 1, 2).mul_(self.scale).add_(self.bias)


@functools.lru_cache(maxsize=1)
def sigmoid_table() -> Tensor:
    """(2 * GATE_RANGE * 2^GATE_BITS + 1,) float64: sigmoid(k / 2^GATE_BITS) for k = -n .. n.

    Built with `decimal` (software arithmetic at 40 digits: powers of exp(-2^-GATE_BITS), then
    1 / (1 + e^-x) and its mirror 1 - that), so it is the same bit for bit on every machine,
    unlike numpy's or libm's exp; each value is within 1e-30 of the true one before the final
    rounding to float64.
    """
    ctx = decimal.Context(prec=40)
    steps = GATE_RANGE << GATE_BITS
    one = decimal.Decimal(1)
    decay = ctx.exp(ctx.divide(-one, decimal.Decimal(2**GATE_BITS)))  # e^(-1 / 2^GATE_BITS)
    power, upper = one, []  # upper[k] = sigmoid(k / 2^GATE_BITS), k >= 0
    for _ in range(steps + 1):
        upper.append(ctx.divide(one, ctx.add(one, power)))
        power = ctx.multiply(power, decay)
    lower = [ctx.subtract(one, value) for value in reversed(upper[1:])]  # sigmoid(-x) = 1 - sigmoid(x)
    return torch.tensor([float(v) for v in lower + upper], dtype=torch.float64)


class TableGate(nn.Module):
    """tanh(a) * sigmoid(b) from the sigmoid table; tanh(a) = 2 sigmoid(2a) - 1."""

    def forward(self, x: Tensor) -> Tensor:
        a, b = x.double().chunk(2, dim=1)
        table, steps = sigmoid_table(), GATE_RANGE << GATE_BITS
        unit = 2.0**GATE_BITS
        tanh_index = (torch.round(a * unit).clamp_(-steps // 2, steps // 2) * 2).long() + steps
        sigmoid_index = torch.round(b * unit).clamp_(-steps, steps).long() + steps
        return (2 * table.take(tanh_index) - 1) * table.take(sigmoid_index)


def exact_prior(prior: nn.Module) -> nn.Module:
    """A float64 copy of a SymbolPrior whose convolutions and gates compute exactly (see module doc).

    Used for coding only; training, rate estimates and encoder-side optimization keep the float
    prior. The copy computes the same `logits`/`stepper` interface.
    """
    exact = copy.deepcopy(prior).double().eval()
    for module in list(exact.modules()):
        if isinstance(module, GroupedContextModel):
            module.input_table = ExactGroupedInput(module.embed, module.inp, module.side)
            module.feature_band_rows = FEATURE_BAND_ROWS
    for module in list(exact.modules()):
        for name, child in list(module.named_children()):
            if isinstance(module, GroupedContextModel) and name == "inp":
                continue  # its input_table computes this layer; the layer itself never runs here
            if isinstance(child, (nn.Conv2d, nn.ConvTranspose2d)):
                setattr(module, name, ExactConv(child))
            elif isinstance(child, Gate):
                setattr(module, name, TableGate())
    return exact

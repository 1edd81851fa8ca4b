"""Rate-distortion optimised encoding: symbols chosen for pixels and bits together.

Nearest-code quantization picks, position by position, the code closest to the encoder's vector;
it looks at neither the decoded picture nor the bits. `optimize_symbols` starts there and takes a
few Adam steps on the vectors to lower

    J = MSE(x, decoder(codes)) + weight * bits(codes) / pixels

  * distortion: the decoder's gradient reaches the vectors through straight-through quantization;
  * rate: each vector is softly assigned to its nearest codes (softmax of -distance / temperature)
    and the assignment is scored by the prior's code lengths given the current symbols (held
    fixed within a step), so vectors drift towards codes the prior finds cheap.

J of the final symbols is measured exactly (decoded picture; teacher-forced code lengths are the
coded size) and compared with J of the nearest codes: the better wins, so the result is never
worse than nearest codes by J.
With a decoder correction (`correction`, the per-image adaptation of `vqcodec.adapt` fitted to
the nearest codes), the distortion is that of the corrected decoder, which the file will carry.
With `weights` (an image with transparency: each pixel's squared opacity), the distortion is the
weighted mean squared error, the error of the picture composited over any background, so bits
are not spent on colours nobody sees.
The output is ordinary symbols: decoding does not change. The idea is Yang et al. 2020,
"Improving Inference for Neural Image Compression" (scalar latents); here with vector
quantization and an autoregressive prior.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from vqcodec.prior import SymbolPrior
from vqcodec.quantize import VectorQuantizer
from vqcodec.vqvae import VQVAE2, OutputAffine

Progress = Callable[[int, int], None]  # (tiles done, tiles in all)
# Given the nearest codes, the decoder correction to judge distortion under (None: the plain decoder).
Correction = Callable[[list[Tensor]], "OutputAffine | None"]

DEFAULT_STEPS = 10
LEARNING_RATE = 2e-3
# The rate weight as an exchange rate: weight = RATE_WEIGHT * MSE0 / bpp0 (of the nearest codes)
# trades 1 dB of PSNR for about 20 % of the rate, the slope of Pillow's JPEG curve (3.8 dB per
# doubling), so a change is kept only when it beats that trade. Measured on held-out training
# crops with vqc-4, 10 steps: rate -7 % at +0.02 dB.
RATE_WEIGHT = 1.3
TEMPERATURE = 0.3  # softness of the assignment, as a share of the mean nearest-to-second code gap
CANDIDATES = 8  # codes per position in the soft assignment (memory: 8 x h x w per level)
REFRESH = 3  # steps between recomputations of the prior's code lengths (the costliest part of a step)
# Larger images are optimised in tiles: the backward pass needs ~2 GB per megapixel.
MAX_PIXELS = 2_000_000
TILE_PIXELS = 1024  # side of those tiles, before the decoder's reach is added around them


def optimize_symbols(vqvae: VQVAE2, prior: SymbolPrior, x: Tensor, order: str,
                     steps: int = DEFAULT_STEPS, progress: Progress | None = None,
                     correction: Correction | None = None, weights: Tensor | None = None) -> list[Tensor]:
    """Symbols of one image chosen for rate and distortion.

    Args:
        vqvae: the model (eval mode; its weights are not changed).
        prior: the symbol prior, on the CPU.
        x: (1, 3, H, W) float32 in [0, 1], on the VQ-VAE's device.
        order: the decode order whose code lengths count ("fast" or "raster").
        steps: optimization steps; 0 gives the nearest codes (what `VQVAE2.encode` returns).
        progress: called as progress(tiles done, tiles in all) after each tile of a large image.
        correction: called once with the nearest codes; the decoder correction it returns (the
            same for every tile) is applied wherever the optimisation decodes.
        weights: (1, 1, H, W) float32 in [0, 1] on x's device, how much each pixel's error counts
            (None: all alike).
    Returns:
        Symbols per level, bottom first, (1, h_l, w_l) int64 on x's device.
    """
    vectors, nearest = vqvae.latent_vectors(x)
    if steps <= 0 or min(q.codebook_size for q in vqvae.quantizers) < 2:
        return nearest
    affine = correction(nearest) if correction is not None else None
    if x.shape[-2] * x.shape[-1] <= MAX_PIXELS:
        return _optimized(vqvae, prior, x, vectors, nearest, order, steps, affine, weights)
    return _optimized_in_tiles(vqvae, prior, x, vectors, nearest, order, steps, progress, affine, weights)


def _optimized_in_tiles(vqvae: VQVAE2, prior: SymbolPrior, x: Tensor, vectors: list[Tensor],
                        nearest: list[Tensor], order: str, steps: int, progress: Progress | None,
                        affine: OutputAffine | None, weights: Tensor | None = None) -> list[Tensor]:
    """`_optimized` tile by tile, so memory stays bounded on large images.

    Each tile is optimised as an image of its own together with the decoder's reach around it
    (`VQVAE2.decode_halo`), which gives the decoded tile its true surroundings and the prior some
    context; only the tile's own symbols are kept. Every tile has its own exchange rate and its own
    keep-or-nearest test, judged on that crop.
    """
    ratios, scale = vqvae.level_ratios(), vqvae.config.downsample[0]
    chosen = [s.clone() for s in nearest]
    tiles = vqvae.tiles(*nearest[0].shape[-2:], TILE_PIXELS // scale)
    for done, t in enumerate(tiles, 1):
        tile_weights = t.crop_pixels(weights, scale) if weights is not None else None
        found = _optimized(vqvae, prior, t.crop_pixels(x, scale), t.crop(vectors, ratios), t.crop(nearest, ratios),
                           order, steps, affine, tile_weights)
        t.paste(chosen, found, ratios)
        if progress is not None:
            progress(done, len(tiles))
    return chosen


def _optimized(vqvae: VQVAE2, prior: SymbolPrior, x: Tensor, vectors: list[Tensor], nearest: list[Tensor],
               order: str, steps: int, affine: OutputAffine | None = None,
               weights: Tensor | None = None) -> list[Tensor]:
    """The optimisation proper on one image (or tile): `vectors` and their `nearest` codes are its latents."""
    quantizers = list(vqvae.quantizers)
    pixels = x.shape[-2] * x.shape[-1]
    lengths = CodeLengths(prior, nearest, order, x.device)
    start_mse, start_bits = _distortion(vqvae, nearest, x, affine, weights), lengths.total(nearest)
    weight = RATE_WEIGHT * start_mse / max(start_bits / pixels, 1e-9)  # this image's exchange rate
    for moved in descent(vqvae, prior, x, vectors, lengths, order, steps, weight, affine, weights=weights):
        vectors = moved
    final = [q.nearest(z) for q, z in zip(quantizers, vectors)]
    final_bits = CodeLengths(prior, final, order, x.device).total(final)
    final_cost = _distortion(vqvae, final, x, affine, weights) + weight * final_bits / pixels
    return final if final_cost < start_mse + weight * start_bits / pixels else nearest


def descent(vqvae: VQVAE2, prior: SymbolPrior, x: Tensor, vectors: list[Tensor], lengths: CodeLengths,
            order: str, steps: int, weight: float, affine: OutputAffine | None = None,
            learning_rate: Callable[[int], float] | None = None,
            weights: Tensor | None = None) -> Iterator[list[Tensor]]:
    """The Adam steps on copies of `vectors`, yielding them after each step (the same tensors,
    updated in place). `lengths`: the code lengths of their nearest codes; `weight`: the exchange
    rate of bits for squared error; `learning_rate(step)`: a schedule (default: LEARNING_RATE);
    `weights`: each pixel's share of the squared error (None: all alike)."""
    quantizers = list(vqvae.quantizers)
    pixels = x.shape[-2] * x.shape[-1]
    temperatures: list[float] = []
    vectors = [z.detach().clone().requires_grad_(True) for z in vectors]
    optimizer = Adam(vectors, lr=LEARNING_RATE)
    for step in range(steps):
        with torch.enable_grad():
            found = [q.nearest_k(z, min(CANDIDATES, q.codebook_size)) for q, z in zip(quantizers, vectors)]
            candidates = [indices for indices, _ in found]
            symbols = [c[:, 0] for c in candidates]
            if step == 0:  # the encoder's own spacing of the codes sets the softness
                temperatures = [TEMPERATURE * _mean_gap(distances) for _, distances in found]
            if step and step % REFRESH == 0:
                lengths = CodeLengths(prior, symbols, order, x.device)
            decoded = vqvae.decode_vectors(_straight_through(quantizers, vectors, symbols), x.shape[-2:], affine)
            rate = sum(_soft_bits(q, z, lengths.at(level, c), c, t)
                       for level, (q, z, c, t) in enumerate(zip(quantizers, vectors, candidates, temperatures)))
            loss = squared_error(decoded, x, weights) + weight * rate / pixels
            if learning_rate is not None:
                optimizer.lr = learning_rate(step)
            optimizer.step(torch.autograd.grad(loss, vectors))  # the weights get no gradient
        yield vectors


class Adam:
    """torch.optim.Adam's update (default settings, its one-tensor-at-a-time path on the CPU), written out.

    Why not torch.optim.Adam: constructing it the first time imports torch._dynamo, about 2 s per
    process, more than optimising a 256x256 image takes. The operations are torch's, in its order,
    so the symbols come out the same (checked by tests/test_rdo.py).
    """

    def __init__(self, params: list[Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.means = [torch.zeros_like(p) for p in params]
        self.squares = [torch.zeros_like(p) for p in params]
        self.steps = 0

    @torch.no_grad()
    def step(self, grads: tuple[Tensor, ...]) -> None:
        self.steps += 1
        beta1, beta2 = self.betas
        bias1, bias2 = 1 - beta1 ** float(self.steps), 1 - beta2 ** float(self.steps)
        for param, grad, mean, square in zip(self.params, grads, self.means, self.squares):
            mean.lerp_(grad, 1 - beta1)
            square.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (square.sqrt() / bias2**0.5).add_(self.eps)
            param.addcdiv_(mean, denom, value=-(self.lr / bias1))


class CodeLengths:
    """The prior's code length (bits) of every code at every position, given some symbols.

    Kept as logits and their log-sum-exp per position: a (1, K, h, w) table of lengths would
    cost a pass over K codes just to be read at a few of them.
    """

    @torch.no_grad()
    def __init__(self, prior: SymbolPrior, symbols: list[Tensor], order: str, device: torch.device) -> None:
        logits = prior.logits([s.cpu() for s in symbols], order)  # type: ignore[arg-type]
        self.logits = [z.float().to(device) for z in logits]
        self.norms = [torch.logsumexp(z, dim=1, keepdim=True) for z in self.logits]

    def at(self, level: int, codes: Tensor) -> Tensor:
        """Bits of `codes` (1, k, h, w) int64 at their positions: (1, k, h, w) float32."""
        return (self.norms[level] - self.logits[level].gather(1, codes)) / math.log(2)

    def total(self, symbols: list[Tensor]) -> float:
        """Bits of the whole symbol maps: their coded size, up to the coder's few bytes."""
        return float(sum(self.at(level, s.unsqueeze(1)).sum() for level, s in enumerate(symbols)))


@torch.no_grad()
def _distortion(vqvae: VQVAE2, symbols: list[Tensor], x: Tensor, affine: OutputAffine | None = None,
                weights: Tensor | None = None) -> float:
    return float(squared_error(vqvae.decode(symbols, size=x.shape[-2:], affine=affine), x, weights))


def squared_error(picture: Tensor, x: Tensor, weights: Tensor | None = None) -> Tensor:
    """Mean squared error of picture against x (1, 3, H, W); with weights (1, 1, H, W), the
    weighted mean (0 where every weight is 0: nothing is seen, nothing is wrong)."""
    if weights is None:
        return F.mse_loss(picture, x)
    return ((picture - x).pow(2) * weights).sum() / (3 * weights.sum()).clamp_min(1e-12)


def _straight_through(quantizers: list[VectorQuantizer], vectors: list[Tensor], symbols: list[Tensor]) -> list[Tensor]:
    """The codes of `symbols` in the forward pass, the identity towards `vectors` in the backward one."""
    return [z + (q.lookup(s) - z).detach() for q, z, s in zip(quantizers, vectors, symbols)]


def _mean_gap(distances: Tensor) -> float:
    """Mean gap between the nearest and second-nearest code's squared distance; distances (1, k, h, w)."""
    return max(float((distances[:, 1] - distances[:, 0]).mean()), 1e-12)


def _soft_bits(quantizer: VectorQuantizer, z: Tensor, lengths: Tensor, candidates: Tensor,
               temperature: float) -> Tensor:
    """Expected code length of z's soft assignment to its candidate codes; differentiable in z.

    candidates (1, k, h, w): z's nearest codes; lengths (1, k, h, w): their bits.
    """
    codes = F.embedding(candidates, quantizer.codebook.float()).permute(0, 1, 4, 2, 3)  # (1, k, D, h, w)
    distances = (z.unsqueeze(1) - codes).pow(2).sum(2)  # (1, k, h, w)
    weights = F.softmax(-distances / temperature, dim=1)
    return (weights * lengths).sum()

"""Training recipes of the bundled model family, so `vqcodec train --config vqc-N` rebuilds each one.

The family spans rate by design rather than by training length: vqc-1/2 put the bottom level on a
x8 grid (few symbols), vqc-3/4 on a x4 grid; the odd members use 256-symbol codebooks, the even ones
1024 at the bottom; vqc-5 and vqc-6 have no recipe, they run vqc-4 on the image resampled
(`vqcodec.models.RESAMPLED`). The step counts are what the shipped weights saw in total (a short CPU budget; the
model cards give the exact history, which resumed and fine-tuned runs); a GPU run should raise them.

Stages: `vqcodec train --config NAME`, `... --refine`, `vqcodec train-prior --config NAME`, then (where
the recipe has one) `vqcodec train-decoder --config NAME`, which leaves the symbols and the prior as
they are. The decoder stages of vqc-3 and vqc-4 ran four times (4 refine blocks for 3,000 steps,
then 8 for 8,500 and 7,500 more, then 12 for 5,500 more, once 8-bit priors had made room in the
16 MB weights budget, then 16 for 6,800 more); those of vqc-1 and vqc-2 three times (4 blocks for
2,000 steps, then 8,500 more, then 8 blocks for 7,000 more); each recipe is one stage of the total.
The shipped priors were also fine-tuned again on the same symbols after the decoder stage;
`prior_steps` counts all the prior steps they saw (order does not matter: the symbols never
change); where a fine-tuning trained one decode order only (`--order`), it counts the steps of the
order that saw the most, since a rebuild trains both orders together.
The fast orders of vqc-3 and vqc-4 were rebuilt with more groups and depth, then width, on the way,
and vqc-1's and vqc-2's with more depth and width (warm-started, see their cards). The fast orders
of vqc-1, vqc-2 and vqc-3 last learned the symbols the default encoder writes (`train-prior --order fast
--symbols rdo --init-prior`, 600 of their prior_steps), a stage after the rebuild: it needs a
trained prior to optimise the symbols with.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from vqcodec.models import RESAMPLED
from vqcodec.vqvae import VQVAE2Config


@dataclass(frozen=True)
class Refine:
    """A second VQ-VAE stage: the same run resumed on larger crops until `steps` in total.

    Small crops buy many cheap steps, but their top maps are all border (4x4 to 8x8), so the top
    codebook learns border patterns and collapses on whole images; the larger crops fix that.
    """

    steps: int
    crop: int
    batch_size: int


@dataclass(frozen=True)
class DecoderStage:
    """The last stage: decoder fine-tuning on the frozen symbols (`vqcodec train-decoder --config NAME`).

    It grows the decoder to `refine_blocks` identity-initialised residual blocks in its trunk and
    `tail_blocks` before its last layer, and trains only the decoder side on whole 256-px crops, so
    the bitstreams (and the prior) stay exactly as they were.
    """

    steps: int
    refine_blocks: int = 4
    tail_blocks: int = 0
    crop: int = 256
    batch_size: int = 8
    lr: float = 2e-4
    warmup_steps: int = 100


@dataclass(frozen=True)
class Recipe:
    """Everything that defines one bundled model besides the training data."""

    vqvae: VQVAE2Config
    prior: dict[str, Any] = field(default_factory=dict)  # PriorConfig fields; sizes come from the VQ-VAE
    vqvae_steps: int = 1000
    prior_steps: int = 600
    batch_size: int = 16
    crop: int = 64  # VQ-VAE crops: small crops buy many more steps per CPU-second
    prior_crop: int = 128  # the prior needs larger maps to learn spatial context
    lr: float = 8e-4
    warmup_steps: int = 100
    msssim_weight: float = 0.0
    # Share of VQ-VAE samples decoded from the top level alone: without it the top level died in
    # stage 1 (its encoder output became one vector) and the codebook was used only along borders.
    top_only: float = 0.2
    vqvae_refine: Refine | None = None  # `vqcodec train --config NAME --refine` after the first stage
    decoder: DecoderStage | None = None  # `vqcodec train-decoder --config NAME` after the prior


def _vqvae(downsample: tuple[int, int], codebook_size: tuple[int, int]) -> VQVAE2Config:
    return VQVAE2Config(channels=64, res_blocks=2, res_channels=32, downsample=downsample,
                        codebook_size=codebook_size, code_dim=(32, 32), dead_after=100)


_PRIOR = {"channels": 48, "layers": 5, "fast_layers": 5}
# The x4-grid members' fast order has 4x4 groups on both levels and 7 residual units: with 2x2 bottom
# groups a quarter of the bottom symbols saw no neighbour (vqc-4: 7.7 bits each, 5.9 in raster order).
# Its networks are 80 channels wide where the raster PixelCNN has 48: each cell of the grouped
# model holds a whole 4x4 block (held-out fast rate -2.5 % / -3.3 % when widened from 48).
_PRIOR_X4 = {**_PRIOR, "fast_layers": 7, "fast_groups": (4, 4), "fast_channels": 80}
# The x8-grid members' fast order was widened to 64 channels and 6 units (warm-started from 48 and 5:
# held-out fast rate vqc-1 -3.5 %, vqc-2 -3.7 %); 4x4 bottom groups instead gained vqc-2 0.4 %, not shipped.
_PRIOR_X8 = {**_PRIOR, "fast_layers": 6, "fast_channels": 64}

# x8-grid members refine on 192-px crops (12x12 top maps), x4-grid members on 128 px (16x16).
_REFINE_X8 = Refine(steps=6000, crop=192, batch_size=8)
_REFINE_X4 = Refine(steps=4200, crop=128, batch_size=16)

RECIPES: dict[str, Recipe] = {
    # Prior crops give every member 32x32 bottom and 16x16 top maps per crop: smaller maps are all
    # border, and a prior trained on them fails on whole images (measured: top level > 8 bits/symbol).
    "vqc-1": Recipe(_vqvae((8, 2), (256, 256)), _PRIOR_X8, vqvae_steps=3000, prior_steps=13250, prior_crop=256,
                    vqvae_refine=_REFINE_X8, decoder=DecoderStage(steps=17500, refine_blocks=8)),
    "vqc-2": Recipe(_vqvae((8, 2), (1024, 512)), _PRIOR_X8, vqvae_steps=3000, prior_steps=11400, prior_crop=256,
                    vqvae_refine=_REFINE_X8, decoder=DecoderStage(steps=17500, refine_blocks=8)),
    "vqc-3": Recipe(_vqvae((4, 2), (256, 256)), _PRIOR_X4, vqvae_steps=2000, prior_steps=39050, prior_crop=128,
                    vqvae_refine=_REFINE_X4, decoder=DecoderStage(steps=23800, refine_blocks=16)),
    "vqc-4": Recipe(_vqvae((4, 2), (1024, 512)), _PRIOR_X4,
                    vqvae_steps=2000, prior_steps=39876, prior_crop=128,
                    vqvae_refine=_REFINE_X4, decoder=DecoderStage(steps=22800, refine_blocks=16)),
}


def get(name: str) -> Recipe:
    """The recipe of a bundled model; ValueError naming the known ones otherwise."""
    if name in RESAMPLED:  # no networks of its own to train
        base, scale = RESAMPLED[name]
        raise ValueError(f"{name} has no recipe: it runs {base}'s networks on the image resampled x{scale:g}; "
                         f"train {base} (--config {base})")
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    return RECIPES[name]


def with_steps(recipe: Recipe, vqvae_steps: int, prior_steps: int) -> Recipe:
    """The same recipe with another training length (e.g. for a GPU budget)."""
    return replace(recipe, vqvae_steps=vqvae_steps, prior_steps=prior_steps)

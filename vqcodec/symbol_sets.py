"""Symbol maps computed once for a set of training images, then learnt by the prior in random crops.

Two uses (`train.py`, `PriorTrainConfig.symbols`):

- The symbols the default encoder writes. Priors first learn nearest-code symbols, but the
  default encoder writes rate-distortion optimised ones (`rdo.py`), which drift towards the codes
  the prior finds cheap: the coded distribution is not the one the prior learned. Optimising costs
  seconds per crop on a CPU (vqc-4: ~5 s for 256x256), too slow for every batch, so a run
  optimises a fixed set of training images once with the prior it starts from. Measured in
  benchmarks/prior_on_rdo_symbols.py.
- The nearest codes of every training image in each of its four flips (`FLIPS`, the flips the
  image pipeline draws from): encoding the batch's crops afresh took a third of a CPU training
  step of vqc-4's wide VQ-VAE, once the prior's own step had been made cheaper.

Either set is built by `build` (stored in the run's output folder, resumable); training draws
random crops of its maps (`random_crops`), cut on whole top-level cells so every level stays
aligned.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from vqcodec import rdo, resample
from vqcodec.files import write_atomically
from vqcodec.image import open_image, to_tensor
from vqcodec.prior import SymbolPrior
from vqcodec.vqvae import VQVAE2

SAVE_EVERY_S = 60.0  # seconds between saves of a set being built, so a stopped run loses little
FLIPS = ("", "h", "v", "hv")  # an image as it is, mirrored left-right, upside down, both
Progress = Callable[[int, int], None]  # (images done, images in all)


def build(path: Path, vqvae: VQVAE2, prior: SymbolPrior, files: Sequence[Path], order: str, steps: int,
          scales: Sequence[float] = (1.0,), source: str = "", progress: Progress | None = None,
          flips: Sequence[str] = ("",)) -> list[list[Tensor]]:
    """The symbol maps of `files`, each in every one of `flips`, kept in `path`.

    Entry i (file i // len(flips) in flip i % len(flips)) is coded at scales[i % len(scales)],
    with `steps` steps of rate-distortion optimisation in decode order `order` (0: nearest codes).
    A set already in `path` made the same way (same source, order, steps, files, scales and flips)
    is continued where it stopped; one made any other way is an error rather than silently reused.
    `source` names the model the symbols come from (a digest), so a set of another model's
    symbols is refused.

    Returns:
        Per entry, its symbol maps bottom first, (h_l, w_l) int16 on the CPU.
    Raises:
        ValueError: `path` holds a set made differently, or a flip is not one of FLIPS.
    """
    if not flips or not set(flips) <= set(FLIPS):
        raise ValueError(f"flips must be among {FLIPS}, got {tuple(flips)}")
    recipe = {"source": source, "order": order, "steps": steps, "files": [Path(f).name for f in files],
              "scales": [float(s) for s in scales], "flips": list(flips)}
    maps: list[list[Tensor]] = []
    if path.exists():
        stored = torch.load(path, weights_only=True)
        if {"flips": [""], **stored["recipe"]} != recipe:  # sets from before flips were all unflipped
            raise ValueError(f"{path} holds symbols made another way (another model, order, steps, image "
                             f"list, scales or flips); delete it or choose another output folder")
        maps = stored["maps"]
    device = next(vqvae.parameters()).device
    entries = [(file, flip) for file in files for flip in flips]
    saved = time.monotonic()
    for i in range(len(maps), len(entries)):
        file, flip = entries[i]
        x, _ = to_tensor(open_image(file).convert("RGB"))
        x = resample.to_coded_size(_flipped(x, flip), scales[i % len(scales)]).to(device)
        maps.append([s[0].to(torch.int16).cpu() for s in rdo.optimize_symbols(vqvae, prior, x, order, steps)])
        if time.monotonic() - saved >= SAVE_EVERY_S or i + 1 == len(entries):
            write_atomically(path, lambda tmp: torch.save({"recipe": recipe, "maps": maps}, tmp))
            saved = time.monotonic()
        if progress is not None:
            progress(i + 1, len(entries))
    return maps


def _flipped(x: Tensor, flip: str) -> Tensor:
    """(B, C, H, W) mirrored left-right ("h" in flip) and upside down ("v" in flip)."""
    dims = [dim for letter, dim in (("v", -2), ("h", -1)) if letter in flip]
    return torch.flip(x, dims) if dims else x


def random_crops(maps: Sequence[Sequence[Tensor]], side: int, ratios: Sequence[int], count: int,
                 generator: torch.Generator) -> list[Tensor]:
    """`count` random crops of `side` bottom cells a side, from random images of the set.

    Crops start on whole top-level cells (ratios: bottom cells per cell of each level, as
    `VQVAE2.level_ratios`), so each level is cut at the same place; maps smaller than `side`
    cap it (the batch's crops share one size).

    Returns:
        Per level, bottom first, (count, side / ratio, side / ratio) int64.
    """
    cell = ratios[-1]
    side = min([side, *(min(m[0].shape) for m in maps)]) // cell * cell
    if side < cell:
        raise ValueError(f"symbol maps smaller than one top-level cell ({cell} bottom cells)")
    crops: list[list[Tensor]] = [[] for _ in ratios]
    for _ in range(count):
        image = maps[int(torch.randint(len(maps), (1,), generator=generator))]
        height, width = image[0].shape
        top = int(torch.randint((height - side) // cell + 1, (1,), generator=generator)) * cell
        left = int(torch.randint((width - side) // cell + 1, (1,), generator=generator)) * cell
        for level, ratio in enumerate(ratios):
            crops[level].append(image[level][top // ratio:(top + side) // ratio, left // ratio:(left + side) // ratio])
    return [torch.stack(level).long() for level in crops]

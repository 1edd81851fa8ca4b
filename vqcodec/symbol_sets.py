"""The symbols the encoder writes, computed once for a set of training images, for prior fine-tuning.

Priors learn nearest-code symbols, drawn on the fly from random crops (`train.py`), but the
default encoder writes rate-distortion optimised ones (`rdo.py`), which drift towards the codes
the prior finds cheap: the coded distribution is not the one the prior learned. Optimising costs
seconds per crop on a CPU (vqc-4: ~5 s for 256x256), too slow for every batch, so a run
optimises a fixed set of training images once with the prior it starts from (`build`, stored in
its output folder and resumable) and then learns random crops of those maps (`random_crops`),
cut on whole top-level cells so every level stays aligned. Measured in
benchmarks/prior_on_rdo_symbols.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from vqcodec import rdo, resample
from vqcodec.files import write_atomically
from vqcodec.image import open_image, to_tensor
from vqcodec.prior import SymbolPrior
from vqcodec.vqvae import VQVAE2

SAVE_EVERY = 10  # images between saves of a set being built, so a stopped run loses little
Progress = Callable[[int, int], None]  # (images done, images in all)


def build(path: Path, vqvae: VQVAE2, prior: SymbolPrior, files: Sequence[Path], order: str, steps: int,
          scales: Sequence[float] = (1.0,), source: str = "", progress: Progress | None = None) -> list[list[Tensor]]:
    """The optimised symbol maps of `files` (image i coded at scales[i % len(scales)]), kept in `path`.

    A set already in `path` made the same way (same source, order, steps, files and scales) is
    continued where it stopped; one made any other way is an error rather than silently reused.
    `source` names the model the symbols come from (a digest), so a set of another model's
    symbols is refused.

    Returns:
        Per image, its symbol maps bottom first, (h_l, w_l) int16 on the CPU.
    Raises:
        ValueError: `path` holds a set made differently.
    """
    recipe = {"source": source, "order": order, "steps": steps, "files": [Path(f).name for f in files],
              "scales": [float(s) for s in scales]}
    maps: list[list[Tensor]] = []
    if path.exists():
        stored = torch.load(path, weights_only=True)
        if stored["recipe"] != recipe:
            raise ValueError(f"{path} holds symbols made another way (another model, order, steps, image "
                             f"list or scales); delete it or choose another output folder")
        maps = stored["maps"]
    device = next(vqvae.parameters()).device
    for i in range(len(maps), len(files)):
        x, _ = to_tensor(open_image(files[i]).convert("RGB"))
        x = resample.to_coded_size(x, scales[i % len(scales)]).to(device)
        maps.append([s[0].to(torch.int16).cpu() for s in rdo.optimize_symbols(vqvae, prior, x, order, steps)])
        if (i + 1) % SAVE_EVERY == 0 or i + 1 == len(files):
            write_atomically(path, lambda tmp: torch.save({"recipe": recipe, "maps": maps}, tmp))
        if progress is not None:
            progress(i + 1, len(files))
    return maps


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

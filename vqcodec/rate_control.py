"""Rate control: the model whose file best meets a bits-per-pixel target, for one image.

Each model of the family codes an image at its own rate, and which model lands nearest a target
depends on the image (a sky and a forest differ by 3x at the same model). `compress_to_target`
keeps the largest file within the target, else the smallest file, among the models, without
compressing with every one of them: each model first estimates its rate from the nearest codes
(the prior's code lengths plus the container's exact bytes, about a tenth of a compression), and
only the models whose estimate can still meet the target are compressed, highest first.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from vqcodec import rdo
from vqcodec.codec import Order, cached_codec
from vqcodec.errors import VQCodecError
from vqcodec.image import ImageLike, open_image, to_tensor
from vqcodec.models import list_models

# A bound on what rate-distortion optimisation saves against the nearest codes' rate (measured: 1.5
# to 8.8 %, bundled models on six photos; raising the rate weight 30-fold saves only 3 % more, so the
# optimisation cannot move a model much further): a model whose nearest-code estimate exceeds the
# target by more cannot meet it, and is not compressed.
OPTIMISATION_SAVING_BOUND = 0.15


def compress_to_target(image: ImageLike, target_bpp: float, *, models: Sequence[str | Path] | None = None,
                       order: Order = "fast", optimize: int = rdo.DEFAULT_STEPS, device: str = "cpu",
                       progress: rdo.Progress | None = None) -> tuple[str, bytes]:
    """The largest file within `target_bpp` bits per pixel, else the smallest file, and its model.

    Args:
        image: as for `Codec.compress`.
        target_bpp: the rate to stay within: 8 * file bytes / pixels, header included.
        models: names or weight files to choose from (default: the bundled family).
        order, optimize, device, progress: as for `Codec.compress`.
    Returns:
        (model name as recorded in the file, the file's bytes).
    """
    if not (isinstance(target_bpp, (int, float)) and math.isfinite(target_bpp) and target_bpp > 0):
        raise VQCodecError(f"the bpp target must be a positive number (got {target_bpp!r})")
    candidates = list(models) if models is not None else list_models()
    if not candidates:
        raise VQCodecError("no models to choose from: none are bundled and none were given")
    if isinstance(image, (str, os.PathLike)):
        image = open_image(image)  # once, not once per model
    _, info = to_tensor(image)  # refuses a bad image before any model is loaded
    pixels = info.height * info.width
    codecs = [cached_codec(model, device) for model in candidates]
    estimate = {codec: codec.estimate_bits(image, order=order, optimize=0, container=True) / pixels
                for codec in codecs}
    reach = 1 - OPTIMISATION_SAVING_BOUND if optimize else 1.0  # nearest codes: the file holds the estimate
    files = {}
    for codec in sorted(codecs, key=estimate.__getitem__, reverse=True):
        if estimate[codec] * reach > target_bpp:
            continue
        files[codec] = codec.compress(image, order=order, optimize=optimize, progress=progress)
        if 8 * len(files[codec]) / pixels <= target_bpp:
            return codec.name, files[codec]
    lowest = min(codecs, key=estimate.__getitem__)
    if lowest not in files:
        files[lowest] = lowest.compress(image, order=order, optimize=optimize, progress=progress)
    smallest = min(files, key=lambda codec: len(files[codec]))
    return smallest.name, files[smallest]

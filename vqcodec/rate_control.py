"""Rate control: which model of the family codes an image, by a bits-per-pixel target or by a slope.

Each model of the family codes an image at its own rate, and which model lands nearest a target
depends on the image (a sky and a forest differ by 3x at the same model). `compress_to_target`
keeps the largest file within the target, else the smallest file, among the models, without
compressing with every one of them: each model first estimates its rate from the nearest codes
(the prior's code lengths plus the container's exact bytes, about a tenth of a compression), and
only the models whose estimate can still meet the target are compressed, highest first.

`compress_at_slope` picks instead the model whose point is best at a constant exchange rate, the
slope: the dB of PSNR one bit per pixel must buy. Every image is then coded where its own curve
has that slope, which suits a collection coded at one setting: bits go to the images where they
buy the most. Each model's point is estimated from its nearest codes (rate as above, PSNR of their
decoded picture); the chosen model's file is then exactly what `Codec.compress` makes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vqcodec import rdo
from vqcodec.codec import Codec, Order, cached_codec
from vqcodec.errors import VQCodecError
from vqcodec.image import Converted, ImageLike, error_weights, to_pil, to_tensor
from vqcodec.models import list_models

# A bound on what rate-distortion optimisation saves against the nearest codes' rate (measured: 1.5
# to 8.8 %, bundled models on six photos; raising the rate weight 30-fold saves only 3 % more, so the
# optimisation cannot move a model much further): a model whose nearest-code estimate exceeds the
# target by more cannot meet it, and is not compressed.
OPTIMISATION_SAVING_BOUND = 0.15


def _is_positive_number(value: object) -> bool:
    """A finite number above 0; True and False are not numbers here."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def compress_to_target(image: ImageLike, target_bpp: float, *, models: Sequence[str | Path] | None = None,
                       order: Order = "fast", optimize: int = rdo.DEFAULT_STEPS, device: str = "cpu",
                       progress: rdo.Progress | None = None, adapt_decoder: bool = True) -> tuple[str, bytes]:
    """The largest file within `target_bpp` bits per pixel, else the smallest file, and its model.

    Args:
        image: as for `Codec.compress`.
        target_bpp: the rate to stay within: 8 * file bytes / pixels, header included.
        models: names or weight files to choose from (default: the bundled family).
        order, optimize, device, progress, adapt_decoder: as for `Codec.compress`.
    Returns:
        (model name as recorded in the file, the file's bytes).
    """
    if not _is_positive_number(target_bpp):
        raise VQCodecError(f"the bpp target must be a positive number (got {target_bpp!r})")
    image, codecs = _image_and_codecs(image, models, device)
    pixels = image.info.height * image.info.width
    estimate = {codec: codec.estimate_bits(image, order=order, optimize=0, container=True,
                                           adapt_decoder=adapt_decoder) / pixels
                for codec in codecs}
    compress = {"order": order, "optimize": optimize, "progress": progress, "adapt_decoder": adapt_decoder}
    reach = 1 - OPTIMISATION_SAVING_BOUND if optimize else 1.0  # nearest codes: the file holds the estimate
    files = {}
    for codec in sorted(codecs, key=estimate.__getitem__, reverse=True):
        if estimate[codec] * reach > target_bpp:
            continue
        files[codec] = codec.compress(image, **compress)
        if 8 * len(files[codec]) / pixels <= target_bpp:
            return codec.name, files[codec]
    lowest = min(codecs, key=estimate.__getitem__)
    if lowest not in files:
        files[lowest] = lowest.compress(image, **compress)
    smallest = min(files, key=lambda codec: len(files[codec]))
    return smallest.name, files[smallest]


def _image_and_codecs(image: ImageLike, models: Sequence[str | Path] | None, device: str
                      ) -> tuple[Converted, list[Codec]]:
    """The image (converted once, not once per model) and the candidate models' codecs.

    A bad image or an empty model list is refused before any model is loaded.
    """
    candidates = list(models) if models is not None else list_models()
    if not candidates:
        raise VQCodecError("no models to choose from: none are bundled and none were given")
    return Converted(*to_tensor(image)), [cached_codec(model, device) for model in candidates]


# PSNR of a near-perfect picture is capped here so that an exact one (infinite PSNR) still compares.
PSNR_CAP_DB = 80.0


@dataclass(frozen=True)
class Point:
    """A model's estimated rate and quality for one image, from its nearest codes."""

    model: str
    bpp: float
    psnr: float

    def cost(self, slope: float) -> float:
        """Rate priced at `slope` dB per bpp, minus quality: lower is better."""
        return slope * self.bpp - self.psnr


def nearest_code_points(image: ImageLike, codecs: Sequence[Codec], order: Order = "fast",
                        adapt_decoder: bool = True) -> list[Point]:
    """Each model's point for `image`: estimated file bpp and the PSNR (8-bit RGB) of its nearest codes
    (decoded with their decoder adaptation, which the file size then includes, unless adapt_decoder is False)."""
    converted = Converted(*to_tensor(image))
    original = to_pil(converted.x, converted.info)
    weights = error_weights(converted.info)  # an image with transparency is judged composited, as coded
    pixels = converted.info.height * converted.info.width
    points = []
    for codec in codecs:
        symbols = codec.encode(converted, order=order, optimize=0, adapt_decoder=adapt_decoder)
        psnr = _psnr_8bit(original, codec.decode(symbols), weights)
        points.append(Point(codec.name, codec.file_bits(symbols, order=order) / pixels, psnr))
    return points


def _psnr_8bit(a: Image.Image, b: Image.Image, weights: torch.Tensor | None = None) -> float:
    """PSNR over 8-bit RGB (as the benchmarks score it; `metrics` is not on the codec's import path), capped;
    with `weights` (`image.error_weights`), of the composited picture, the error the encoder minimises."""
    x, y = (torch.from_numpy(np.asarray(image.convert("RGB"), np.float64)).permute(2, 0, 1)[None] for image in (a, b))
    error = float(rdo.squared_error(y, x, weights.double() if weights is not None else None))
    return PSNR_CAP_DB if error == 0 else min(10 * math.log10(255.0**2 / error), PSNR_CAP_DB)


def best_at_slope(points: Sequence[Point], slope: float) -> int:
    """Index of the point of lowest cost at `slope` (ties: the earlier one)."""
    costs = [point.cost(slope) for point in points]
    return costs.index(min(costs))


def compress_at_slope(image: ImageLike, slope: float, *, models: Sequence[str | Path] | None = None,
                      order: Order = "fast", optimize: int = rdo.DEFAULT_STEPS, device: str = "cpu",
                      progress: rdo.Progress | None = None, adapt_decoder: bool = True) -> tuple[str, bytes]:
    """The file of the model whose rate-quality point is best at `slope` dB of PSNR per bpp.

    A higher slope prices bits higher: smaller files. Every model is estimated from its nearest
    codes (an encode and a decode each, no entropy coding), then only the chosen one compresses.

    Args:
        image: as for `Codec.compress`.
        slope: dB of PSNR one bit per pixel must buy, a positive number.
        models: names or weight files to choose from (default: the bundled family).
        order, optimize, device, progress, adapt_decoder: as for `Codec.compress`.
    Returns:
        (model name as recorded in the file, the file's bytes).
    """
    if not _is_positive_number(slope):
        raise VQCodecError(f"the slope must be a positive number of dB per bpp (got {slope!r})")
    image, codecs = _image_and_codecs(image, models, device)
    chosen = codecs[best_at_slope(nearest_code_points(image, codecs, order, adapt_decoder), slope)]
    return chosen.name, chosen.compress(image, order=order, optimize=optimize, progress=progress,
                                        adapt_decoder=adapt_decoder)

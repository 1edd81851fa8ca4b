"""The models that ship inside the package, found by name with no download.

Each trained model is one safetensors file (VQ-VAE-2 + PixelCNN prior, configs in its metadata)
with a model card beside it (`<name>.md`). The highest-rate members reuse a trained model's file
and code the image resampled by a factor (`vqcodec.resample`); they have cards of their own.
Names run from low rate (vqc-1) to high rate.
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path
from typing import NamedTuple

from vqcodec.bitstream import check_model_name
from vqcodec.errors import ModelNotFoundError

# name -> weights file in this package, from lowest to highest rate
BUNDLED: dict[str, str] = {
    "vqc-1": "vqc-1.safetensors",
    "vqc-2": "vqc-2.safetensors",
    "vqc-3": "vqc-3.safetensors",
    "vqc-4": "vqc-4.safetensors",
}
# name -> (trained model whose weights it runs, coding scale): above vqc-4's rate, by resampling
RESAMPLED: dict[str, tuple[str, float]] = {
    "vqc-5": ("vqc-4", 1.25),
    "vqc-6": ("vqc-4", 1.5),
}
DEFAULT = "vqc-3"


class Resolved(NamedTuple):
    """A model to load: the name files record, its weights file and its coding scale."""

    name: str
    path: Path
    scale: float = 1.0


def list_models() -> list[str]:
    """Names of the bundled models whose weights are installed, lowest rate first."""
    return [name for name in [*BUNDLED, *RESAMPLED] if _bundled_file(name).is_file()]


def trained_model(name: str) -> str:
    """The trained member whose weights a bundled name runs: itself, or a resampled member's base."""
    return RESAMPLED[name][0] if name in RESAMPLED else name


def is_bundled(name: str) -> bool:
    """Whether `name` is a member of the bundled family (trained or resampled)."""
    return name in BUNDLED or name in RESAMPLED


def resolve(name_or_path: str | Path) -> Resolved:
    """Map a bundled model name ("default" included) or a weights path to the model to load.

    A path's model name is its file stem, which is what files compressed with it will record, so
    the stem must be a name a .vqc header can hold (checked here, before any encoding work); a
    path is always coded at scale 1.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ModelNotFoundError(f"a model is a bundled name or a weights path, got {type(name_or_path).__name__}")
    name = DEFAULT if str(name_or_path) == "default" else str(name_or_path)
    if is_bundled(name):
        path = _bundled_file(name)
        if not path.is_file():
            raise ModelNotFoundError(f"bundled model {name!r} is not installed (missing {path.name})")
        return Resolved(name, path, RESAMPLED[name][1] if name in RESAMPLED else 1.0)
    path = Path(name_or_path)
    if path.suffix == ".safetensors" or path.exists():
        if not path.is_file():
            raise ModelNotFoundError(f"model file {path} does not exist")
        try:
            check_model_name(path.stem)
        except ValueError as err:
            raise ModelNotFoundError(f"model file {path.name}: its stem names the model in every .vqc file, "
                                     f"so rename it ({err})") from None
        return Resolved(path.stem, path)
    available = ", ".join(list_models()) or "none installed"
    raise ModelNotFoundError(f"unknown model {name!r}; bundled models: {available}")


def resolve_recorded(name: str) -> str:
    """The bundled model a .vqc header names; files only ever select bundled models by themselves.

    A header must not be able to point at a weights file on disk, and a file made with a model
    loaded from a path needs that path given again to decode.
    """
    if not is_bundled(name):
        raise ModelNotFoundError(f"file was made by model {name!r}, which is not bundled; "
                                 f"pass its weights file (--model / model=) to decode it")
    return name


def model_card(name: str) -> str:
    """The markdown model card of a bundled model."""
    if not is_bundled(name):
        raise ModelNotFoundError(f"unknown model {name!r}")
    card = _package_file(f"{name}.md")
    return card.read_text() if card.is_file() else ""


def _bundled_file(name: str) -> Path:
    """The weights file of a bundled name (a resampled member's is its trained model's)."""
    return _package_file(BUNDLED[trained_model(name)])


def _package_file(filename: str) -> Path:
    return Path(str(importlib.resources.files(__name__) / filename))

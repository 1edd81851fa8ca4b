"""The models that ship inside the package, found by name with no download.

Each bundled model is one safetensors file (VQ-VAE-2 + PixelCNN prior, configs in its metadata)
with a model card beside it (`<name>.md`). Names run from low rate (vqc-1) to high rate.
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

from vqcodec.bitstream import check_model_name
from vqcodec.errors import ModelNotFoundError

# name -> weights file in this package, from lowest to highest rate
BUNDLED: dict[str, str] = {
    "vqc-1": "vqc-1.safetensors",
    "vqc-2": "vqc-2.safetensors",
    "vqc-3": "vqc-3.safetensors",
    "vqc-4": "vqc-4.safetensors",
}
DEFAULT = "vqc-3"


def list_models() -> list[str]:
    """Names of the bundled models whose weights are installed, lowest rate first."""
    return [name for name in BUNDLED if _bundled_file(name).is_file()]


def resolve(name_or_path: str | Path) -> tuple[str, Path]:
    """Map a bundled model name ("default" included) or a weights path to (model name, file path).

    A path's model name is its file stem, which is what files compressed with it will record, so
    the stem must be a name a .vqc header can hold (checked here, before any encoding work).
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ModelNotFoundError(f"a model is a bundled name or a weights path, got {type(name_or_path).__name__}")
    name = DEFAULT if str(name_or_path) == "default" else str(name_or_path)
    if name in BUNDLED:
        path = _bundled_file(name)
        if not path.is_file():
            raise ModelNotFoundError(f"bundled model {name!r} is not installed (missing {path.name})")
        return name, path
    path = Path(name_or_path)
    if path.suffix == ".safetensors" or path.exists():
        if not path.is_file():
            raise ModelNotFoundError(f"model file {path} does not exist")
        try:
            check_model_name(path.stem)
        except ValueError as err:
            raise ModelNotFoundError(f"model file {path.name}: its stem names the model in every .vqc file, "
                                     f"so rename it ({err})") from None
        return path.stem, path
    available = ", ".join(list_models()) or "none installed"
    raise ModelNotFoundError(f"unknown model {name!r}; bundled models: {available}")


def resolve_recorded(name: str) -> str:
    """The bundled model a .vqc header names; files only ever select bundled models by themselves.

    A header must not be able to point at a weights file on disk, and a file made with a model
    loaded from a path needs that path given again to decode.
    """
    if name not in BUNDLED:
        raise ModelNotFoundError(f"file was made by model {name!r}, which is not bundled; "
                                 f"pass its weights file (--model / model=) to decode it")
    return name


def model_card(name: str) -> str:
    """The markdown model card of a bundled model."""
    if name not in BUNDLED:
        raise ModelNotFoundError(f"unknown model {name!r}")
    card = _bundled_file(name).with_suffix(".md")
    return card.read_text() if card.is_file() else ""


def _bundled_file(name: str) -> Path:
    return Path(str(importlib.resources.files(__name__) / BUNDLED[name]))

"""vqcodec: learned image compression with a hierarchical VQ-VAE, a PixelCNN prior and rANS.

    >>> import vqcodec
    >>> data = vqcodec.compress(image)          # PIL image, uint8 array, float tensor or path -> bytes
    >>> image = vqcodec.decompress(data)        # bytes -> PIL image (model read from the header)
    >>> name, data = vqcodec.compress_to_target(image, 0.3)  # the bundled model that best meets 0.3 bpp
    >>> name, data = vqcodec.compress_at_slope(image, 8.0)   # the model best at 8 dB per bpp

The public names below load lazily, so `import vqcodec.bitstream` stays free of torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from vqcodec.errors import BitstreamError, ImageError, ModelNotFoundError, VQCodecError

__version__ = "0.12.3"

_LAZY = {
    "Codec": "vqcodec.codec",
    "Symbols": "vqcodec.codec",
    "compress": "vqcodec.codec",
    "decompress": "vqcodec.codec",
    "compress_to_target": "vqcodec.rate_control",
    "compress_at_slope": "vqcodec.rate_control",
    "Header": "vqcodec.bitstream",
    "read_header": "vqcodec.bitstream",
    "list_models": "vqcodec.models",
}

__all__ = [*_LAZY, "VQCodecError", "BitstreamError", "ImageError", "ModelNotFoundError", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vqcodec' has no attribute {name!r}")

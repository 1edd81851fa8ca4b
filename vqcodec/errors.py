"""The one exception family for everything a user of vqcodec can get wrong."""


class VQCodecError(Exception):
    """Base class of every error the codec raises on bad input or bad files."""


class BitstreamError(VQCodecError):
    """A .vqc file is truncated, corrupt, hostile or from an unknown format version."""


class ImageError(VQCodecError):
    """An input image cannot be read or has an unsupported mode, depth or size."""


class ModelNotFoundError(VQCodecError):
    """A model name or path does not resolve to usable weights (or the weights differ)."""

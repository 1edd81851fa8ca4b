"""The .vqc container: header, entropy-coded chunks, checksums. Standard library only.

Layout (little-endian; docs/bitstream.md is the normative spec)::

    prefix   "VQC" | version u8 | flags u8 | mode u8 | width u16 | height u16        10 bytes
    model    name length u8 | name (ASCII)                                      1 + 1..32
    digest   weights digest                                                           8
    levels   level count u8 | (h u16, w u16) per level, bottom first                1 + 4 L
    chunks   chunk count u8 | length u32 per chunk, top level first                 1 + 4 C
    check    CRC32 of the decoded symbol maps u32                                        4
    adapt    (version 4) length u16 | decoder adaptation (vqcodec.adapt), 0 = none     2 + n
    alpha    (version 6) length u32 | the alpha plane, lossless (WebP or PNG)           4 + m
    payload  the chunks, concatenated
    trailer  CRC32 of every byte before it u32                                           4

``unpack`` checks magic, version and the trailer CRC before it parses anything else, then
bounds every field; any failure is a BitstreamError that names the field. Nothing is
allocated from a size read out of the file except the header fields themselves.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass
from numbers import Integral
from typing import Iterable, Union

from vqcodec.errors import BitstreamError

__all__ = ["MAGIC", "VERSION", "ALPHA_VERSION", "NEWEST", "READABLE_VERSIONS", "Header", "pack", "unpack",
           "read_header", "symbols_checksum", "MAX_LEVELS", "MAX_SIDE", "MAX_ADAPTATION", "DESIGN_VERSION", "MAX_PIXELS", "MAX_SYMBOLS", "MAX_NAME_LENGTH", "check_model_name",
           "DESIGN_PER_COLOUR", "DESIGN_LOOP_FILTER", "design_name", "ALPHA_PNG", "ALPHA_WEBP", "ALPHA_CODINGS"]

MAGIC = b"VQC"
VERSION = 5  # what writers produce; 5: the adaptation field starts with its design (vqcodec.adapt)
# ... and for an image with transparency: version 5 plus flag bit 1 and the alpha field. Each file
# has the lowest version that holds it, so readers of version 5 read every opaque image's file.
ALPHA_VERSION = 6
# Version 4 had the adaptation field with one design and no design byte; version 3 is 4 without the
# adaptation field; version 2 coded with the float32 prior instead of the exact one (vqcodec.exact);
# version 1 also had the one-position raster schedule.
READABLE_VERSIONS = (1, 2, 3, 4, 5, 6)
NEWEST = READABLE_VERSIONS[-1]
ADAPTATION_VERSION = 4       # the first version with the adaptation field
DESIGN_VERSION = 5           # the first version whose adaptation field names its design
MAX_ADAPTATION = 4096        # bytes; the bundled models' adaptations take about 70
# From DESIGN_VERSION on, the adaptation field's first byte is a bit set naming the correction's
# design (vqcodec.adapt fits and reads the numbers after it; `vqcodec info` names it):
DESIGN_PER_COLOUR = 0x01     # a scale per channel and colour, instead of one per channel
DESIGN_LOOP_FILTER = 0x02    # then a 3x3 cross-colour filter on the corrected picture
# The alpha field's first byte names how the plane is coded (vqcodec.image codes and decodes it):
ALPHA_PNG, ALPHA_WEBP = 0, 1
ALPHA_CODINGS = {ALPHA_PNG: "PNG", ALPHA_WEBP: "WebP lossless"}

MAX_SIDE = 65535                 # image sides and symbol-map sides
MAX_PIXELS = 1 << 28             # width * height (16384 x 16384): bounds what a reader allocates
MAX_SYMBOLS = 1 << 24            # sum of h * w over all levels
MAX_LEVELS = 4
MAX_NAME_LENGTH = 32
DIGEST_SIZE = 8

_PREFIX = struct.Struct("<3sBBBHH")   # magic, version, flags, mode, width, height
_U8 = struct.Struct("<B")             # name length, level count, chunk count
_SHAPE = struct.Struct("<HH")         # h, w of one symbol map
_U32 = struct.Struct("<I")            # chunk length, symbols CRC, alpha length, file CRC
_U16 = struct.Struct("<H")            # adaptation length

_FLAG_RASTER = 0x01                   # bit 0: decode order (0 = fast, 1 = raster)
_FLAG_ALPHA = 0x02                    # bit 1 (version 6): the alpha field follows the adaptation field
_ORDERS = {"fast": 0, "raster": _FLAG_RASTER}
ORDERS: tuple[str, ...] = tuple(_ORDERS)  # the decode orders a file can record
_MODES = {"L": 1, "RGB": 3, "RGBA": 4}            # code = channel count
_MODE_NAMES = {code: name for name, code in _MODES.items()}
# Printable ASCII, no path separators, no surrounding spaces: the name selects a bundled model.
_NAME = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")

_MIN_FILE = _PREFIX.size + 1 + 1 + DIGEST_SIZE + 1 + _SHAPE.size + 1 + _U32.size * 3

Buffer = Union[bytes, bytearray, memoryview]


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def design_name(design: int) -> str:
    """What an adaptation design byte corrects, in words ("unknown design N" for other values)."""
    if not 0 <= design <= DESIGN_PER_COLOUR | DESIGN_LOOP_FILTER:
        return f"unknown design {design}"
    name = "scale per channel and colour" if design & DESIGN_PER_COLOUR else "scale per channel"
    return f"{name}, 3x3 colour filter" if design & DESIGN_LOOP_FILTER else name


def check_model_name(name: object) -> None:
    """Raise ValueError unless `name` can be recorded in a header (1..32 printable ASCII, no slashes)."""
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME_LENGTH:
        raise ValueError(f"model name must be a str of 1..{MAX_NAME_LENGTH} characters, got {name!r}")
    if not _NAME.fullmatch(name) or "/" in name or "\\" in name:
        raise ValueError(f"model name must be printable ASCII without slashes or surrounding "
                         f"spaces, got {name!r}")


def _check_level_shapes(shapes: object) -> tuple[tuple[int, int], ...]:
    if not isinstance(shapes, (tuple, list)) or not 1 <= len(shapes) <= MAX_LEVELS:
        raise ValueError(f"level shapes must be 1..{MAX_LEVELS} (h, w) pairs, got {shapes!r}")
    result = []
    for level, shape in enumerate(shapes):
        if (not isinstance(shape, (tuple, list)) or len(shape) != 2
                or not all(_is_int(side) and 1 <= side <= MAX_SIDE for side in shape)):
            raise ValueError(f"level shape {level} must be (h, w) with sides 1..{MAX_SIDE}, "
                             f"got {shape!r}")
        result.append((int(shape[0]), int(shape[1])))
    total = sum(h * w for h, w in result)
    if total > MAX_SYMBOLS:
        raise ValueError(f"level shapes hold {total} symbols, more than {MAX_SYMBOLS}")
    return tuple(result)


@dataclass(frozen=True)
class Header:
    """Everything a decoder needs besides the chunks. Validated on construction (ValueError).

    Attributes:
        model_name: bundled model that decodes the file; printable ASCII, 1..32 characters.
        weights_digest: 8 bytes, the first 8 of the SHA-256 of the weights file.
        width, height: original image size, 1..65535 each, width * height <= MAX_PIXELS.
        mode: "RGB" | "L" | "RGBA" (with `alpha`, or else opaque).
        order: "fast" | "raster", the decode schedule the encoder used.
        level_shapes: per level, bottom first, (h, w) of each symbol map (lists become tuples).
        symbols_crc: CRC32 over the symbol maps (see ``symbols_checksum``), 0..2**32 - 1.
        version: format version of the file (one of READABLE_VERSIONS); None (the default) gives
            the one writers produce for these fields: ALPHA_VERSION with `alpha`, else VERSION.
        adaptation: the coded decoder adaptation (`vqcodec.adapt`), b"" for none (always, before
            version 4); at most MAX_ADAPTATION bytes. The bitstream layer does not interpret it.
        alpha: an RGBA image's alpha plane, coded losslessly (`vqcodec.image.encode_alpha`: a
            kind byte, then a WebP or PNG image), b"" for an opaque image; present exactly in
            version 6. The bitstream layer does not interpret it either.
    """

    model_name: str
    weights_digest: bytes
    width: int
    height: int
    mode: str
    order: str
    level_shapes: tuple[tuple[int, int], ...]
    symbols_crc: int
    version: int | None = None
    adaptation: bytes = b""
    alpha: bytes = b""

    def __post_init__(self) -> None:
        if self.version is None:
            object.__setattr__(self, "version", _written_version(self.alpha))
        check_model_name(self.model_name)
        if not isinstance(self.weights_digest, bytes) or len(self.weights_digest) != DIGEST_SIZE:
            raise ValueError(f"weights digest must be {DIGEST_SIZE} bytes, got {self.weights_digest!r}")
        for field, value in (("width", self.width), ("height", self.height)):
            if not _is_int(value) or not 1 <= value <= MAX_SIDE:
                raise ValueError(f"{field} must be an int in 1..{MAX_SIDE}, got {value!r}")
        if self.width * self.height > MAX_PIXELS:
            raise ValueError(f"image of {self.width} x {self.height} exceeds {MAX_PIXELS} pixels")
        if self.mode not in _MODES:
            raise ValueError(f"mode must be one of {sorted(_MODES)}, got {self.mode!r}")
        if self.order not in _ORDERS:
            raise ValueError(f"order must be one of {sorted(_ORDERS)}, got {self.order!r}")
        shapes = _check_level_shapes(self.level_shapes)
        if not _is_int(self.symbols_crc) or not 0 <= self.symbols_crc <= 0xFFFFFFFF:
            raise ValueError(f"symbols CRC must be an int in 0..2**32-1, got {self.symbols_crc!r}")
        if self.version not in READABLE_VERSIONS:
            raise ValueError(f"version must be one of {READABLE_VERSIONS}, got {self.version!r}")
        if not isinstance(self.adaptation, bytes) or len(self.adaptation) > MAX_ADAPTATION:
            raise ValueError(f"adaptation must be bytes of length 0..{MAX_ADAPTATION}")
        if self.adaptation and self.version < ADAPTATION_VERSION:
            raise ValueError(f"format version {self.version} has no adaptation field")
        if not isinstance(self.alpha, bytes) or len(self.alpha) > 0xFFFFFFFF:
            raise ValueError("alpha must be bytes of length 0..2**32-1")
        if bool(self.alpha) != (self.version >= ALPHA_VERSION):
            raise ValueError(f"the alpha field is in format version {ALPHA_VERSION} files, and only there "
                             f"(version {self.version}, {len(self.alpha)} alpha bytes)")
        if self.alpha and self.mode != "RGBA":
            raise ValueError(f"an alpha plane needs mode 'RGBA', not {self.mode!r}")
        object.__setattr__(self, "level_shapes", shapes)
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))
        object.__setattr__(self, "symbols_crc", int(self.symbols_crc))

    @property
    def levels(self) -> int:
        """Number of levels (and of chunks)."""
        return len(self.level_shapes)


def symbols_checksum(level_bytes: Iterable[Buffer]) -> int:
    """CRC32 for ``Header.symbols_crc``.

    Args:
        level_bytes: per level, TOP level first, the symbol map as int32 little-endian bytes in
            raster order (numpy: ``symbols.astype("<i4").tobytes()``).
    """
    crc = 0
    for chunk in level_bytes:
        crc = zlib.crc32(chunk, crc)
    return crc


def _written_version(alpha: bytes) -> int:
    """The version a writer gives a file: the lowest that holds it."""
    return ALPHA_VERSION if alpha else VERSION


def _encode_header(header: Header, chunk_lengths: list[int]) -> bytes:
    flags = _ORDERS[header.order] | (_FLAG_ALPHA if header.alpha else 0)
    name = header.model_name.encode("ascii")
    parts = [_PREFIX.pack(MAGIC, header.version, flags, _MODES[header.mode], header.width, header.height),
             _U8.pack(len(name)), name, header.weights_digest, _U8.pack(header.levels)]
    parts += [_SHAPE.pack(h, w) for h, w in header.level_shapes]
    parts.append(_U8.pack(len(chunk_lengths)))
    parts += [_U32.pack(length) for length in chunk_lengths]
    parts.append(_U32.pack(header.symbols_crc))
    parts += [_U16.pack(len(header.adaptation)), header.adaptation]
    if header.alpha:
        parts += [_U32.pack(len(header.alpha)), header.alpha]
    return b"".join(parts)


def pack(header: Header, chunks: list[bytes]) -> bytes:
    """Serialise a file.

    Args:
        header: a validated Header.
        chunks: one entropy-coded chunk per level, TOP level first.

    Returns:
        The complete file: header, chunks, CRC32 trailer.

    Raises:
        ValueError: header is not a Header, or the chunks do not fit the header.
    """
    if not isinstance(header, Header):
        raise ValueError(f"header must be a Header, got {type(header).__name__}")
    if header.version != _written_version(header.alpha):
        raise ValueError(f"writers produce format version {VERSION} ({ALPHA_VERSION} with an alpha plane) "
                         f"only, got a version {header.version} header")
    if len(chunks) != header.levels:
        raise ValueError(f"expected {header.levels} chunks (one per level), got {len(chunks)}")
    lengths = [len(chunk) for chunk in chunks]
    if any(length > 0xFFFFFFFF for length in lengths):
        raise ValueError("a chunk is longer than 2**32 - 1 bytes")
    body = _encode_header(header, lengths) + b"".join(bytes(chunk) for chunk in chunks)
    return body + _U32.pack(zlib.crc32(body))


class _Reader:
    """Bounds-checked cursor over a buffer; every read names its field."""

    def __init__(self, data: memoryview) -> None:
        self.data, self.offset = data, 0

    def read(self, fmt: struct.Struct, field: str) -> tuple:
        if self.offset + fmt.size > len(self.data):
            raise BitstreamError(f"file is truncated: it ends inside the {field} field")
        values = fmt.unpack_from(self.data, self.offset)
        self.offset += fmt.size
        return values

    def take(self, size: int, field: str) -> bytes:
        if self.offset + size > len(self.data):
            raise BitstreamError(f"file is truncated: it ends inside the {field} field")
        value = bytes(self.data[self.offset:self.offset + size])
        self.offset += size
        return value


def _check_prefix(data: memoryview) -> None:
    if len(data) < 4 and (MAGIC + bytes([NEWEST])).startswith(bytes(data)):
        raise BitstreamError(f"file is truncated: {len(data)} bytes")
    if len(data) < 4 or bytes(data[:3]) != MAGIC:
        raise BitstreamError("not a vqcodec file (magic bytes are not 'VQC')")
    version = data[3]
    if version > NEWEST:
        raise BitstreamError(f"format version {version} is newer than this vqcodec reads "
                             f"(version {NEWEST}); upgrade vqcodec")
    if version not in READABLE_VERSIONS:
        raise BitstreamError(f"format version {version} is invalid")


def _parse_fields(reader: _Reader) -> tuple[Header, list[int]]:
    """Parse the header after the magic and version checks; returns it and the chunk lengths."""
    _, version, flags, mode, width, height = reader.read(_PREFIX, "prefix")
    if flags & ~(_FLAG_RASTER | (_FLAG_ALPHA if version >= ALPHA_VERSION else 0)):
        raise BitstreamError(f"flags field has unknown bits set (0x{flags:02x})")
    if version >= ALPHA_VERSION and not flags & _FLAG_ALPHA:
        raise BitstreamError(f"flags field: a version {version} file must have its alpha bit set")
    if flags & _FLAG_ALPHA and mode != _MODES["RGBA"]:
        raise BitstreamError(f"flags field: the alpha bit is set in a file of mode code {mode}, not RGBA")
    if mode not in _MODE_NAMES:
        raise BitstreamError(f"image mode field holds unknown code {mode}")
    if width == 0 or height == 0:
        raise BitstreamError(f"width/height field is zero ({width} x {height})")
    if width * height > MAX_PIXELS:
        raise BitstreamError(f"width/height field: {width} x {height} exceeds {MAX_PIXELS} pixels")
    (name_length,) = reader.read(_U8, "model name length")
    if not 1 <= name_length <= MAX_NAME_LENGTH:
        raise BitstreamError(f"model name length field is {name_length}, not 1..{MAX_NAME_LENGTH}")
    raw_name = reader.take(name_length, "model name")
    try:
        name = raw_name.decode("ascii")
        check_model_name(name)
    except (UnicodeDecodeError, ValueError):
        raise BitstreamError(f"model name field is not a valid name: {raw_name!r}") from None
    digest = reader.take(DIGEST_SIZE, "weights digest")
    (levels,) = reader.read(_U8, "level count")
    if not 1 <= levels <= MAX_LEVELS:
        raise BitstreamError(f"level count field is {levels}, not 1..{MAX_LEVELS}")
    shapes = [reader.read(_SHAPE, f"level {level} shape") for level in range(levels)]
    try:
        shapes_checked = _check_level_shapes(shapes)
    except ValueError as err:
        raise BitstreamError(f"level shape fields: {err}") from None
    (chunk_count,) = reader.read(_U8, "chunk count")
    if chunk_count != levels:
        raise BitstreamError(f"chunk count field is {chunk_count}, but the file has {levels} levels")
    lengths = [reader.read(_U32, f"chunk {index} length")[0] for index in range(chunk_count)]
    (symbols_crc,) = reader.read(_U32, "symbols CRC")
    adaptation = b""
    if version >= ADAPTATION_VERSION:
        (adaptation_length,) = reader.read(_U16, "adaptation length")
        if adaptation_length > MAX_ADAPTATION:
            raise BitstreamError(f"adaptation length field is {adaptation_length}, more than {MAX_ADAPTATION}")
        adaptation = reader.take(adaptation_length, "adaptation")
    alpha = b""
    if flags & _FLAG_ALPHA:
        (alpha_length,) = reader.read(_U32, "alpha length")
        if alpha_length == 0:
            raise BitstreamError("alpha length field is 0, but the alpha bit is set")
        alpha = reader.take(alpha_length, "alpha")
    try:
        header = Header(model_name=name, weights_digest=digest, width=width, height=height,
                        mode=_MODE_NAMES[mode], order="raster" if flags & _FLAG_RASTER else "fast",
                        level_shapes=shapes_checked, symbols_crc=symbols_crc, version=version,
                        adaptation=adaptation, alpha=alpha)
    except ValueError as err:  # every field is checked above; kept as a safety net
        raise BitstreamError(f"invalid header: {err}") from None
    return header, lengths


def _byte_view(data: object) -> memoryview:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BitstreamError(f"expected the bytes of a .vqc file, got {type(data).__name__}")
    return memoryview(data).cast("B")


def read_header(data: Buffer) -> Header:
    """Parse and validate the header only (for ``vqcodec info``).

    Does not verify the file CRC or the payload; ``data`` may be just the beginning of a file.

    Raises:
        BitstreamError: not a vqcodec file, newer version, truncated header or a field out of
            bounds (the message names the field).
    """
    view = _byte_view(data)
    _check_prefix(view)
    return _parse_fields(_Reader(view))[0]


def unpack(data: Buffer) -> tuple[Header, list[bytes]]:
    """Parse a whole file strictly.

    Checks, in order: magic, version, minimum length, CRC32 trailer (before any other field is
    trusted), every header field's bounds, chunk lengths summing exactly to the payload.

    Returns:
        (header, chunks), one chunk per level, TOP level first.

    Raises:
        BitstreamError: naming the field that is wrong.
    """
    view = _byte_view(data)
    _check_prefix(view)
    if len(view) < _MIN_FILE:
        raise BitstreamError(f"file is truncated: {len(view)} bytes is shorter than the smallest "
                             f"valid file ({_MIN_FILE} bytes)")
    body = view[:-_U32.size]
    (stored_crc,) = _U32.unpack_from(view, len(body))
    if zlib.crc32(body) != stored_crc:
        raise BitstreamError("file CRC field does not match: the file is corrupt or truncated")
    reader = _Reader(body)
    header, lengths = _parse_fields(reader)
    payload = len(body) - reader.offset
    if sum(lengths) != payload:
        raise BitstreamError(f"chunk length fields sum to {sum(lengths)} bytes, but the payload "
                             f"holds {payload} bytes")
    chunks = []
    for length in lengths:
        chunks.append(reader.take(length, "chunk"))
    return header, chunks

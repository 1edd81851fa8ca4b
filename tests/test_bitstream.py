"""The .vqc container: round trips, strict parsing of corrupt and hostile files, golden bytes."""

from __future__ import annotations

import os
import random
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import pytest

from vqcodec.bitstream import (ALPHA_VERSION, MAGIC, MAX_ADAPTATION, MAX_PIXELS, MAX_SYMBOLS, NEWEST, VERSION, Header, pack, read_header,
                               symbols_checksum, unpack)
from vqcodec.errors import BitstreamError

EXPECTED = Path(__file__).parent / "expected"


def make_header(**changes: object) -> Header:
    fields: dict[str, object] = dict(model_name="vq-q3", weights_digest=bytes.fromhex("0123456789abcdef"),
                                     width=768, height=512, mode="RGB", order="fast",
                                     level_shapes=((128, 192), (64, 96)), symbols_crc=0xDEADBEEF)
    fields.update(changes)
    return Header(**fields)  # type: ignore[arg-type]


CHUNKS = [b"\x11\x22\x33\x44" * 3, b"\x55\x66\x77\x88"]   # top level first


def small_file() -> bytes:
    return pack(make_header(), CHUNKS)


def with_crc(body: bytes) -> bytes:
    """A file body (everything but the trailer) completed with a valid CRC32 trailer."""
    return body + struct.pack("<I", zlib.crc32(body))


def edit(data: bytes, offset: int, fmt: str, value: object) -> bytes:
    """Overwrite one field of a packed file and fix the trailer CRC (a 'hostile' file)."""
    body = bytearray(data[:-4])
    struct.pack_into(fmt, body, offset, *(value if isinstance(value, tuple) else (value,)))
    return with_crc(bytes(body))


# offsets in small_file(): prefix 0..9, name length 10, name 11..15, digest 16..23, level count 24,
# shapes 25..32, chunk count 33, chunk lengths 34..41, symbols CRC 42..45, payload 46..61, CRC 62
NAME_LEN, LEVELS, SHAPES, CHUNK_COUNT, LENGTHS = 10, 24, 25, 33, 34


# --- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("header", [
    make_header(),
    make_header(model_name="x", mode="L", order="raster", width=1, height=1, level_shapes=((1, 1),),
                symbols_crc=0),
    make_header(model_name="m" * 32, mode="RGBA", width=65535, height=4096,
                level_shapes=((1024, 2048), (512, 1024), (256, 512), (1, 65535)), symbols_crc=0xFFFFFFFF),
])
def test_round_trip(header: Header) -> None:
    chunks = [bytes([level]) * (4 * level) for level in range(header.levels)]   # includes b""
    data = pack(header, chunks)
    assert unpack(data) == (header, chunks)
    assert read_header(data) == header
    assert unpack(bytearray(data)) == (header, chunks)
    assert unpack(memoryview(data)) == (header, chunks)


def test_header_size_and_layout() -> None:
    data = small_file()
    assert data[:4] == MAGIC + bytes([VERSION])
    overhead = len(data) - sum(map(len, CHUNKS))
    assert overhead == 52  # prefix 10 + name 6 + digest 8 + levels 9 + chunks 9 + CRCs 4 + 4 + adaptation 2
    assert data[-4:] == struct.pack("<I", zlib.crc32(data[:-4]))
    assert data[NAME_LEN] == 5 and data[LEVELS] == 2 and data[CHUNK_COUNT] == 2
    assert struct.unpack_from("<II", data, LENGTHS) == (12, 4)
    smallest = pack(make_header(model_name="x", width=1, height=1, level_shapes=((1, 1),)), [b""])
    assert len(smallest) == 40 and unpack(smallest)[1] == [b""]


def test_header_accepts_lists_and_normalises_to_tuples() -> None:
    header = make_header(level_shapes=[[128, 192], (64, 96)])
    assert header.level_shapes == ((128, 192), (64, 96))
    assert header == make_header() and hash(header) == hash(make_header())


def test_read_header_needs_only_the_header() -> None:
    data = small_file()
    assert read_header(data[:48]) == make_header()
    with pytest.raises(BitstreamError, match="adaptation length"):
        read_header(data[:47])
    with pytest.raises(BitstreamError, match="symbols CRC"):
        read_header(data[:45])


def test_symbols_checksum() -> None:
    maps = [b"\x01\x00\x00\x00" * 6, b"\x02\x00\x00\x00" * 24]
    assert symbols_checksum(maps) == zlib.crc32(b"".join(maps))
    assert symbols_checksum([]) == 0


def golden_header_file() -> bytes:
    return pack(make_header(model_name="default", order="raster", mode="RGBA", width=1000, height=667,
                            level_shapes=((168, 252), (84, 126)), symbols_crc=0x01020304),
                [b"\x01\x00\x00\x00", b"\x02\x00\x00\x00\x03\x00\x00\x00"])


def test_golden_header() -> None:
    """Accidental format changes fail here. Regenerate deliberately with VQCODEC_REGEN=1."""
    data = golden_header_file()
    path = EXPECTED / f"header_v{VERSION}.bin"
    if os.environ.get("VQCODEC_REGEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
    assert path.read_bytes() == data
    assert unpack(path.read_bytes())[0].model_name == "default"


@pytest.mark.parametrize("version", [1, 2, 3])
def test_older_versions_still_parse(version) -> None:
    """The golden files of vqcodec 0.1 (one-position raster schedule), 0.2 (float32 prior) and 0.3
    to 0.8 (no adaptation field) read as their versions, with no adaptation."""
    old = (EXPECTED / f"header_v{version}.bin").read_bytes()
    header, chunks = unpack(old)
    assert header.version == version and header.order == "raster"
    assert header == replace(unpack(golden_header_file())[0], version=version)
    assert chunks == [b"\x01\x00\x00\x00", b"\x02\x00\x00\x00\x03\x00\x00\x00"]
    assert read_header(old).version == version


def test_adaptation_round_trips_and_counts_in_the_size() -> None:
    header = make_header(adaptation=bytes(range(70)))
    data = pack(header, CHUNKS)
    assert unpack(data) == (header, CHUNKS) and read_header(data).adaptation == bytes(range(70))
    assert len(data) == len(small_file()) + 70


def test_adaptation_is_bounded_and_absent_before_version_4() -> None:
    with pytest.raises(ValueError, match="adaptation"):
        make_header(adaptation=b"\x00" * (MAX_ADAPTATION + 1))
    with pytest.raises(ValueError, match="no adaptation field"):
        make_header(version=3, adaptation=b"\x01")
    with pytest.raises(ValueError, match="adaptation"):
        make_header(adaptation="not bytes")


def test_adaptation_longer_than_the_file_raises() -> None:
    data = edit(small_file(), LENGTHS + 12, "<H", 200)
    with pytest.raises(BitstreamError, match="adaptation"):
        unpack(data)


def test_writers_produce_only_the_current_version() -> None:
    assert unpack(small_file())[0].version == VERSION
    with pytest.raises(ValueError, match="version"):
        pack(make_header(version=1), CHUNKS)
    with pytest.raises(ValueError, match="version"):
        make_header(version=NEWEST + 1)


# --- corrupt files ----------------------------------------------------------------------------


@pytest.mark.parametrize("make", [lambda: small_file(), lambda: alpha_file()], ids=["version 5", "version 6"])
def test_every_truncation_raises(make) -> None:
    data = make()
    for end in range(len(data)):
        with pytest.raises(BitstreamError):
            unpack(data[:end])


def test_every_header_truncation_raises_in_read_header() -> None:
    data = small_file()
    for end in range(48):
        with pytest.raises(BitstreamError):
            read_header(data[:end])


def test_every_bit_flip_raises() -> None:
    data = small_file()
    for position in range(len(data)):
        for bit in range(8):
            flipped = bytearray(data)
            flipped[position] ^= 1 << bit
            with pytest.raises(BitstreamError):
                unpack(bytes(flipped))


def test_trailing_and_leading_data_raise() -> None:
    data = small_file()
    for bad in (data + b"\x00", data + data, b"\x00" + data, with_crc(data[:-4] + b"\x00\x00\x00\x00")):
        with pytest.raises(BitstreamError):
            unpack(bad)


def test_random_bytes_raise() -> None:
    rng = random.Random(0)
    for _ in range(500):
        junk = rng.randbytes(rng.randrange(0, 120))
        with pytest.raises(BitstreamError):
            unpack(junk)
        with pytest.raises(BitstreamError):
            unpack(MAGIC + bytes([VERSION]) + junk)


def test_random_bodies_with_valid_crc_raise_or_are_canonical() -> None:
    """Fuzz the parser behind the CRC: it must raise BitstreamError or accept a canonical file."""
    rng = random.Random(1)
    base = small_file()[:-4]
    for trial in range(3000):
        body = bytearray(base)
        for _ in range(rng.randrange(1, 4)):
            body[rng.randrange(4, len(body))] = rng.randrange(256)
        if trial % 3 == 0:
            body = body[:rng.randrange(4, len(body) + 1)] + rng.randbytes(rng.randrange(0, 8))
        data = with_crc(bytes(body))
        try:
            header, chunks = unpack(data)
        except BitstreamError:
            continue
        assert pack(header, chunks) == data


# --- hostile headers: valid CRC, absurd values ------------------------------------------------


HOSTILE = {
    "version 0": (3, "<B", 0, "version"),
    "newer version": (3, "<B", NEWEST + 1, "newer"),
    "unknown flag": (4, "<B", 0x80, "flags"),
    "unknown mode": (5, "<B", 2, "mode"),
    "zero width": (6, "<H", 0, "width"),
    "zero height": (8, "<H", 0, "height"),
    "too many pixels": (6, "<HH", (65535, MAX_PIXELS // 65535 + 1), "pixels"),
    "name length 0": (NAME_LEN, "<B", 0, "model name"),
    "name length 33": (NAME_LEN, "<B", 33, "model name"),
    "name length 255": (NAME_LEN, "<B", 255, "model name"),
    "name not ascii": (11, "<B", 0xC3, "model name"),
    "name with slash": (11, "<B", ord("/"), "model name"),
    "name control char": (11, "<B", 0x07, "model name"),
    "0 levels": (LEVELS, "<B", 0, "level count"),
    "5 levels": (LEVELS, "<B", 5, "level count"),
    "255 levels": (LEVELS, "<B", 255, "level"),
    "zero map side": (SHAPES, "<H", 0, "level shape"),
    "too many symbols": (SHAPES, "<HH", (65535, 65535), "symbols"),
    "chunk count 0": (CHUNK_COUNT, "<B", 0, "chunk count"),
    "chunk count 255": (CHUNK_COUNT, "<B", 255, "chunk count"),
    "huge chunk": (LENGTHS, "<I", 0xFFFFFFFF, "chunk length"),
    "short chunks": (LENGTHS, "<I", 8, "chunk length"),
    "long chunks": (LENGTHS + 4, "<I", 5, "chunk length"),
    "huge adaptation": (LENGTHS + 12, "<H", 0xFFFF, "adaptation length"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_header_raises_naming_the_field(name: str) -> None:
    offset, fmt, value, field = HOSTILE[name]
    data = edit(small_file(), offset, fmt, value)
    with pytest.raises(BitstreamError, match=field):
        unpack(data)
    if name not in {"huge chunk", "short chunks", "long chunks"}:
        with pytest.raises(BitstreamError, match=field):
            read_header(data)


def test_wrong_magic_raises() -> None:
    with pytest.raises(BitstreamError, match="not a vqcodec file"):
        unpack(b"PNG" + small_file()[3:])
    with pytest.raises(BitstreamError, match="truncated"):
        unpack(b"VQ")


def test_total_symbols_bound_is_enforced() -> None:
    assert 4096 * 4096 == MAX_SYMBOLS
    make_header(width=16384, height=16384, level_shapes=((4096, 4096),))
    with pytest.raises(ValueError, match="symbols"):
        make_header(level_shapes=((4096, 4096), (1, 1)))


# --- invalid headers are refused when built ---------------------------------------------------


@pytest.mark.parametrize("changes", [
    {"model_name": ""}, {"model_name": "m" * 33}, {"model_name": "naïve"}, {"model_name": "a/b"},
    {"model_name": " padded"}, {"model_name": 3}, {"weights_digest": b"1234567"},
    {"weights_digest": "12345678"}, {"width": 0}, {"height": 65536}, {"width": 2.0}, {"width": True},
    {"width": 65535, "height": 65535}, {"mode": "CMYK"}, {"order": "exact"}, {"level_shapes": ()},
    {"level_shapes": ((1, 1),) * 5}, {"level_shapes": ((0, 4),)}, {"level_shapes": ((4, 4, 4),)},
    {"level_shapes": ((4, 65536),)}, {"symbols_crc": -1}, {"symbols_crc": 1 << 32},
])
def test_invalid_header_raises_value_error(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        make_header(**changes)


def test_pack_refuses_wrong_chunks() -> None:
    with pytest.raises(ValueError):
        pack(make_header(), CHUNKS[:1])
    with pytest.raises(ValueError):
        pack("not a header", CHUNKS)  # type: ignore[arg-type]


# --- the alpha field (version 6) -------------------------------------------------------------

ALPHA = b"\x01" + bytes(range(40))  # the bitstream layer does not interpret it
ALPHA_LENGTH = LENGTHS + 12 + 2  # after the symbols CRC and an empty adaptation field


def alpha_file(alpha: bytes = ALPHA) -> bytes:
    return pack(make_header(mode="RGBA", alpha=alpha), CHUNKS)


def test_an_alpha_plane_makes_a_version_6_file_and_counts_in_its_size() -> None:
    header = make_header(mode="RGBA", alpha=ALPHA)
    assert header.version == ALPHA_VERSION == 6 and make_header(mode="RGBA").version == VERSION == 5
    data = alpha_file()
    assert data[3] == 6 and data[4] == 0x02
    assert unpack(data) == (header, CHUNKS) and read_header(data).alpha == ALPHA
    assert len(data) == len(pack(make_header(mode="RGBA"), CHUNKS)) + 4 + len(ALPHA)
    raster = pack(make_header(mode="RGBA", order="raster", alpha=ALPHA), CHUNKS)
    assert raster[4] == 0x03 and unpack(raster)[0].order == "raster"


def test_the_alpha_field_is_in_version_6_rgba_headers_only() -> None:
    with pytest.raises(ValueError, match="needs mode 'RGBA'"):
        make_header(mode="RGB", alpha=ALPHA)
    with pytest.raises(ValueError, match="only there"):
        make_header(mode="RGBA", alpha=ALPHA, version=5)
    with pytest.raises(ValueError, match="only there"):
        make_header(mode="RGBA", version=6)
    with pytest.raises(ValueError, match="version"):
        pack(replace(make_header(mode="RGBA"), version=4), CHUNKS)


@pytest.mark.parametrize("case, message", [
    ("alpha bit in a version 5 file", "unknown bits"),
    ("version 6 without the alpha bit", "must have its alpha bit"),
    ("alpha bit in an RGB file", "not RGBA"),
    ("empty alpha field", "alpha length field is 0"),
    ("alpha longer than the file", "alpha"),
])
def test_hostile_alpha_fields_raise(case: str, message: str) -> None:
    data = {"alpha bit in a version 5 file": lambda: edit(pack(make_header(mode="RGBA"), CHUNKS), 4, "<B", 0x02),
            "version 6 without the alpha bit": lambda: edit(alpha_file(), 4, "<B", 0x00),
            "alpha bit in an RGB file": lambda: edit(alpha_file(), 5, "<B", 3),
            "empty alpha field": lambda: edit(alpha_file(), ALPHA_LENGTH, "<I", 0),
            "alpha longer than the file": lambda: edit(alpha_file(), ALPHA_LENGTH, "<I", 10_000)}[case]()
    with pytest.raises(BitstreamError, match=message):
        unpack(data)


def test_golden_alpha_header() -> None:
    """Version 6's bytes: the golden header with an alpha field. Regenerate with VQCODEC_REGEN=1."""
    data = pack(replace(unpack(golden_header_file())[0], version=None, alpha=ALPHA),
                [b"\x01\x00\x00\x00", b"\x02\x00\x00\x00\x03\x00\x00\x00"])
    path = EXPECTED / f"header_v{ALPHA_VERSION}.bin"
    if os.environ.get("VQCODEC_REGEN") == "1":
        path.write_bytes(data)
    assert path.read_bytes() == data
    assert unpack(data)[0] == replace(unpack(golden_header_file())[0], version=6, alpha=ALPHA)


def test_every_adaptation_design_has_a_name():
    from vqcodec import adapt, bitstream

    names = [bitstream.design_name(design) for design in adapt.DESIGNS]
    assert len(set(names)) == len(adapt.DESIGNS) and not any("unknown" in name for name in names)
    assert bitstream.design_name(adapt.PER_COLOUR | adapt.LOOP_FILTER) == "scale per channel and colour, 3x3 colour filter"
    assert bitstream.design_name(4) == "unknown design 4"

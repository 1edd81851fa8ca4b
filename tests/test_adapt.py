"""Per-image decoder adaptation: least-squares fit, its bytes, and files that carry it."""

from __future__ import annotations

import random
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import photo_like
from vqcodec import adapt, bitstream
from vqcodec.adapt import LIMIT, Adaptation
from vqcodec.errors import BitstreamError, VQCodecError


def image_tensor(height: int, width: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(photo_like(height, width, seed=seed)).permute(2, 0, 1)[None].float() / 255


def test_bytes_round_trip() -> None:
    rng = random.Random(0)
    for count in (3, 19, 67):
        for spread in (0, 3, 200, LIMIT):
            values = tuple(rng.randint(-spread, spread) for _ in range(count))
            assert adapt.from_bytes(adapt.to_bytes(Adaptation(values)), count) == Adaptation(values)
    extremes = Adaptation((LIMIT, -LIMIT, 0, 1, -1))
    assert adapt.from_bytes(adapt.to_bytes(extremes), 5) == extremes


def test_small_values_take_few_bytes() -> None:
    assert len(adapt.to_bytes(Adaptation((0,) * 67))) == 1 + 9  # k = 0: one bit each
    assert len(adapt.to_bytes(Adaptation(tuple(range(-33, 34))))) < 67


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:1], "truncated"),
    (lambda b: b + b"\x00", "after its parameters"),
    (lambda b: bytes([16]) + b[1:], "Rice parameter"),
    (lambda b: b"", "empty"),
    (lambda b: b[:1] + b"\xff" * 20, "over-long"),
])
def test_damaged_bytes_raise(damage, message) -> None:
    data = adapt.to_bytes(Adaptation(tuple(range(-9, 10))))
    with pytest.raises(ValueError, match=message):
        adapt.from_bytes(damage(data), 19)


def test_values_are_bounded() -> None:
    with pytest.raises(ValueError, match="within"):
        Adaptation((LIMIT + 1, 0, 0, 0, 0))
    with pytest.raises(ValueError, match="2 C \\+ 3"):
        Adaptation((0, 0, 0, 0))


def test_zero_adaptation_decodes_as_none(codec, one_thread) -> None:
    symbols = codec.encode(photo_like(40, 56, seed=2), optimize=0, adapt_decoder=False).levels
    zero = Adaptation((0,) * adapt.parameter_count(codec.vqvae))
    with torch.no_grad():
        plain = codec.vqvae.decode(symbols)
        adapted = codec.vqvae.decode(symbols, affine=zero.affine())
    assert torch.equal(plain, adapted)


def test_fit_reports_the_error_the_decoder_then_makes(codec, one_thread) -> None:
    """The least-squares fit lowers the picture's error, and by what it says (the normal equations
    and the decoder agree), also on an image whose size is not a multiple of the model's."""
    x = image_tensor(45, 70, seed=3)
    symbols = codec.encode(x, optimize=0, adapt_decoder=False).levels
    adaptation, without, with_ = adapt.fit(codec.vqvae, symbols, x)
    with torch.no_grad():
        plain = codec.vqvae.decode(symbols, size=(45, 70))
        adapted = codec.vqvae.decode(symbols, size=(45, 70), affine=adaptation.affine())
    assert float((plain - x).pow(2).mean()) == pytest.approx(without, rel=1e-4)
    assert float((adapted - x).pow(2).mean()) == pytest.approx(with_, rel=1e-3)
    assert with_ < 0.9 * without  # a random decoder leaves much for a linear correction to take
    assert any(adaptation.values)


def test_fit_and_decode_agree_in_tiles(codec, one_thread, monkeypatch) -> None:
    """Large images decode tile by tile and are fitted band by band: the same numbers as whole."""
    x = image_tensor(96, 136, seed=5)
    symbols = codec.encode(x, optimize=0, adapt_decoder=False).levels
    whole = adapt.fit(codec.vqvae, symbols, x)
    monkeypatch.setattr(adapt, "_BAND_PIXELS", 16 * 136)  # bands of 8 feature rows
    banded = adapt.fit(codec.vqvae, symbols, x)
    assert banded[0] == whole[0] and banded[1:] == pytest.approx(whole[1:], rel=1e-6)
    with torch.no_grad():
        features = codec.vqvae.last_features(symbols)
        tiled_features = codec.vqvae.last_features(symbols, tile_pixels=32)
        picture = codec.vqvae.decode(symbols, affine=whole[0].affine())
        tiled = codec.vqvae.decode(symbols, affine=whole[0].affine(), tile_pixels=32)
    assert torch.allclose(features, tiled_features, atol=1e-5)
    assert torch.allclose(picture, tiled, atol=1e-5)


def test_worth_sending_prices_the_bytes() -> None:
    adaptation = Adaptation(tuple(range(-9, 10)))
    size = 8 * (len(adapt.to_bytes(adaptation)) + 2)
    # 1 dB for `size` bits is worth it at 30 dB/bpp once the image has over 30 x size pixels
    tenth_db = 10 ** -0.1
    assert adapt.worth_sending(adaptation, 1e-3, 1e-3 * tenth_db, 31 * size)
    assert not adapt.worth_sending(adaptation, 1e-3, 1e-3 * tenth_db, 29 * size)
    assert not adapt.worth_sending(adaptation, 1e-3, 1e-3, 10 ** 9)


@pytest.fixture
def always_worth(monkeypatch):
    monkeypatch.setattr(adapt, "MIN_GAIN_DB_PER_BPP", 0.0)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * np.log10(255.0**2 / np.mean((a.astype(float) - b.astype(float)) ** 2))


def test_files_carry_the_adaptation_and_decode_better(codec, one_thread, always_worth) -> None:
    original = photo_like(48, 64, seed=7)
    adapted = codec.compress(original, optimize=0)
    plain = codec.compress(original, optimize=0, adapt_decoder=False)
    header, plain_header = bitstream.unpack(adapted)[0], bitstream.unpack(plain)[0]
    assert header.adaptation and not plain_header.adaptation
    assert len(adapted) == len(plain) + len(header.adaptation)  # same symbols, same chunks
    symbols = codec.decode_symbols(adapted)
    assert symbols.adaptation == codec.encode(original, optimize=0).adaptation
    better, worse = np.asarray(codec.decompress(adapted)), np.asarray(codec.decompress(plain))
    assert psnr(original, better) > psnr(original, worse) + 0.2  # an untrained decoder: 10.5 -> 10.9 dB
    assert codec.file_bits(symbols) == pytest.approx(8 * len(adapted), abs=128)  # rANS: 2 words a chunk


def test_tiny_images_go_without(codec, one_thread) -> None:
    """70 bytes on a 16x16 image would be 2 bpp: never worth it at the default price."""
    assert not bitstream.unpack(codec.compress(photo_like(16, 16, seed=1), optimize=0))[0].adaptation


def test_damaged_adaptation_in_a_file_is_a_clear_error(codec, one_thread, always_worth) -> None:
    data = codec.compress(photo_like(48, 64, seed=7), optimize=0)
    header, chunks = bitstream.unpack(data)
    for damaged in (header.adaptation[:1], header.adaptation + b"\x00", bytes([200]) + header.adaptation[1:]):
        forged = bitstream.pack(bitstream.Header(**{**header.__dict__, "adaptation": damaged}), chunks)
        with pytest.raises(BitstreamError, match="adaptation"):
            codec.decompress(forged)


def test_symbols_with_a_foreign_adaptation_are_refused(codec, one_thread) -> None:
    symbols = codec.encode(photo_like(24, 24, seed=1), optimize=0)
    wrong = symbols._replace(adaptation=Adaptation((0,) * (adapt.parameter_count(codec.vqvae) + 2)))
    with pytest.raises(VQCodecError, match="adaptation"):
        codec.compress_symbols(wrong)
    with pytest.raises(VQCodecError, match="adaptation"):
        codec.decode(wrong)

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
    for channels in (0, 8, 32):
        for design in adapt.DESIGNS:
            count = (4 if design & adapt.PER_COLOUR else 2) * channels + 3 + (81 if design & adapt.LOOP_FILTER else 0)
            for spread in (0, 3, 200, LIMIT):
                adaptation = Adaptation(tuple(rng.randint(-spread, spread) for _ in range(count)), design)
                assert adapt.from_bytes(adapt.to_bytes(adaptation), channels) == adaptation
    extremes = Adaptation((LIMIT, -LIMIT, 0, 1, -1))
    assert adapt.from_bytes(adapt.to_bytes(extremes), 1) == extremes


def test_version_4_fields_have_no_design_byte() -> None:
    film = Adaptation(tuple(range(-9, 10)))
    old = adapt.to_bytes(film, with_design=False)
    assert adapt.to_bytes(film) == bytes([adapt.FILM]) + old
    assert adapt.from_bytes(old, 8, with_design=False) == film
    with pytest.raises(ValueError, match="FILM"):
        adapt.to_bytes(Adaptation((0,) * 35, adapt.PER_COLOUR), with_design=False)


def test_small_values_take_few_bytes() -> None:
    assert len(adapt.to_bytes(Adaptation((0,) * 67))) == 1 + 1 + 9  # design, k = 0: one bit each
    assert len(adapt.to_bytes(Adaptation(tuple(range(-33, 34))))) < 67


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:1], "truncated"),
    (lambda b: b[:2], "truncated"),
    (lambda b: b + b"\x00", "after its parameters"),
    (lambda b: b[:1] + bytes([16]) + b[2:], "Rice parameter"),
    (lambda b: bytes([4]) + b[1:], "design"),
    (lambda b: b"", "empty"),
    (lambda b: b[:2] + b"\xff" * 20, "over-long"),
])
def test_damaged_bytes_raise(damage, message) -> None:
    data = adapt.to_bytes(Adaptation(tuple(range(-9, 10))))
    with pytest.raises(ValueError, match=message):
        adapt.from_bytes(damage(data), 8)


def test_values_are_bounded() -> None:
    with pytest.raises(ValueError, match="within"):
        Adaptation((LIMIT + 1, 0, 0, 0, 0))
    with pytest.raises(ValueError, match="2 C \\+ 3"):
        Adaptation((0, 0, 0, 0))
    with pytest.raises(ValueError, match="4 C \\+ 3"):
        Adaptation((0,) * 5, adapt.PER_COLOUR)
    with pytest.raises(ValueError, match="design"):
        Adaptation((0,) * 5, 4)


@pytest.mark.parametrize("design", [adapt.FILM, adapt.PER_COLOUR])
def test_zero_adaptation_decodes_as_none(codec, one_thread, design) -> None:
    symbols = codec.encode(photo_like(40, 56, seed=2), optimize=0, adapt_decoder=False).levels
    zero = Adaptation((0,) * adapt.parameter_count(codec.vqvae, design), design)
    with torch.no_grad():
        plain = codec.vqvae.decode(symbols)
        adapted = codec.vqvae.decode(symbols, affine=zero.affine())
    assert torch.allclose(plain, adapted, atol=1e-6)


def decoded(codec, symbols, size, adaptation: Adaptation) -> torch.Tensor:
    with torch.no_grad():
        picture = codec.vqvae.decode(symbols, size=size, affine=adaptation.affine())
    return adapt.apply_loop_filter(picture, adaptation)


def test_fit_reports_the_error_the_decoder_then_makes(codec, one_thread) -> None:
    """Each design's least-squares fit lowers the picture's error, and by what it says (the normal
    equations and the decoder agree), also on an image whose size is not a multiple of the model's;
    the richer designs leave less."""
    x = image_tensor(45, 70, seed=3)
    symbols = codec.encode(x, optimize=0, adapt_decoder=False).levels
    fits = adapt.fit(codec.vqvae, symbols, x, adapt.DESIGNS)
    assert [f.adaptation.design for f in fits] == list(adapt.DESIGNS)
    with torch.no_grad():
        plain = codec.vqvae.decode(symbols, size=(45, 70))
    for fitted in fits:
        assert float((plain - x).pow(2).mean()) == pytest.approx(fitted.mse_without, rel=1e-4)
        after = float((decoded(codec, symbols, (45, 70), fitted.adaptation) - x).pow(2).mean())
        assert after == pytest.approx(fitted.mse_with, rel=1e-3)
        assert fitted.mse_with < 0.9 * fitted.mse_without  # a random decoder leaves much to correct
    film, per_colour, film_filtered, filtered = (f.mse_with for f in fits)
    assert per_colour < film and film_filtered < film and filtered < per_colour


def test_fit_and_decode_agree_in_tiles(codec, one_thread, monkeypatch) -> None:
    """Large images decode tile by tile and are fitted band by band: the same numbers as whole."""
    x = image_tensor(96, 136, seed=5)
    symbols = codec.encode(x, optimize=0, adapt_decoder=False).levels
    whole = adapt.fit(codec.vqvae, symbols, x, adapt.DESIGNS)
    monkeypatch.setattr(adapt, "_BAND_PIXELS", 16 * 136)  # bands of 8 feature rows, 16 picture rows
    banded = adapt.fit(codec.vqvae, symbols, x, adapt.DESIGNS)
    for one, other in zip(whole, banded):
        assert one.adaptation == other.adaptation
        assert (one.mse_without, one.mse_with) == pytest.approx((other.mse_without, other.mse_with), rel=1e-6)
    with torch.no_grad():
        features = codec.vqvae.last_features(symbols)
        tiled_features = codec.vqvae.last_features(symbols, tile_pixels=32)
    assert torch.allclose(features, tiled_features, atol=1e-5)
    for fitted in whole:
        with torch.no_grad():
            picture = codec.vqvae.decode(symbols, affine=fitted.adaptation.affine())
            tiled = codec.vqvae.decode(symbols, affine=fitted.adaptation.affine(), tile_pixels=32)
        assert torch.allclose(picture, tiled, atol=1e-5)


def test_best_prices_each_design_by_its_bytes() -> None:
    small, large = Adaptation((0,) * 19), Adaptation(tuple(range(-17, 18)), adapt.PER_COLOUR)
    small_fit, large_fit = adapt.Fit(small, 1e-3, 0.8e-3), adapt.Fit(large, 1e-3, 0.7e-3)
    extra_bits = 8 * (len(adapt.to_bytes(large)) - len(adapt.to_bytes(small)))
    # 10 log10(0.8 / 0.7) = 0.58 dB more for extra_bits: worth it when 30 * extra_bits / pixels < 0.58
    assert adapt.best([small_fit, large_fit], round(30 * extra_bits / 0.5)) == large
    assert adapt.best([small_fit, large_fit], round(30 * extra_bits / 0.65)) == small
    assert adapt.best([small_fit, large_fit], 100) is None
    assert adapt.best([], 10**6) is None


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
    assert symbols.adaptation.design in adapt.DESIGNS
    better, worse = np.asarray(codec.decompress(adapted)), np.asarray(codec.decompress(plain))
    assert psnr(original, better) > psnr(original, worse) + 0.2  # an untrained decoder: 10.5 -> 10.9 dB
    assert codec.file_bits(symbols) == pytest.approx(8 * len(adapted), abs=128)  # rANS: 2 words a chunk


def test_tiny_images_go_without(codec, one_thread) -> None:
    """70 bytes on a 16x16 image would be 2 bpp: never worth it at the default price."""
    assert not bitstream.unpack(codec.compress(photo_like(16, 16, seed=1), optimize=0))[0].adaptation


def test_damaged_adaptation_in_a_file_is_a_clear_error(codec, one_thread, always_worth) -> None:
    data = codec.compress(photo_like(48, 64, seed=7), optimize=0)
    header, chunks = bitstream.unpack(data)
    for damaged in (header.adaptation[:2], header.adaptation + b"\x00", header.adaptation[:1] + bytes([200]) + header.adaptation[2:],
                    bytes([9]) + header.adaptation[1:]):
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


def test_version_4_files_still_decode(codec, one_thread, always_worth) -> None:
    """0.9.0 wrote format 4: the adaptation field without its design byte, FILM design only."""
    original = photo_like(48, 64, seed=7)
    x = image_tensor(48, 64, seed=7)
    symbols = codec.encode(original, optimize=0, adapt_decoder=False)
    film = adapt.fit(codec.vqvae, symbols.levels, x)[0].adaptation
    new = codec.compress_symbols(symbols._replace(adaptation=film))
    header, chunks = bitstream.unpack(new)
    assert header.version == bitstream.VERSION == 5
    body = bytearray(bitstream.pack(bitstream.Header(**{**header.__dict__, "adaptation": adapt.to_bytes(
        film, with_design=False)}), chunks)[:-4])
    body[3] = 4
    old = bytes(body) + struct.pack("<I", zlib.crc32(bytes(body)))
    assert codec.decode_symbols(old).adaptation == film
    assert np.array_equal(np.asarray(codec.decompress(old)), np.asarray(codec.decompress(new)))


def test_a_weighted_fit_ignores_the_pixels_of_no_weight_and_reports_weighted_errors(codec, one_thread) -> None:
    """Pixels of weight 0 (fully transparent ones) leave every design's fit exactly as it was,
    whatever colours they hold; the errors reported are the weighted means the decoder makes."""
    x = image_tensor(40, 56, seed=4)
    symbols = codec.encode(x, optimize=0, adapt_decoder=False).levels
    weights = torch.linspace(0, 1, 56).pow(2).expand(1, 1, 40, 56).clone()
    weights[..., :14] = 0
    other = x.clone()
    other[..., :14] = torch.rand(1, 3, 40, 14)
    fits = adapt.fit(codec.vqvae, symbols, x, adapt.DESIGNS, weights)
    assert [f.adaptation for f in fits] == [f.adaptation for f in adapt.fit(codec.vqvae, symbols, other,
                                                                            adapt.DESIGNS, weights)]
    assert [f.adaptation for f in fits] != [f.adaptation for f in adapt.fit(codec.vqvae, symbols, x, adapt.DESIGNS)]
    with torch.no_grad():
        plain = codec.vqvae.decode(symbols, size=(40, 56))
    for fitted in fits:
        assert float(((plain - x).pow(2) * weights).sum() / (3 * weights.sum())) == pytest.approx(
            fitted.mse_without, rel=1e-4)
        after = decoded(codec, symbols, (40, 56), fitted.adaptation)
        assert float(((after - x).pow(2) * weights).sum() / (3 * weights.sum())) == pytest.approx(
            fitted.mse_with, rel=1e-3)

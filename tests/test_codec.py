from __future__ import annotations

import struct
import threading
import zlib
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import photo_like
from vqcodec import bitstream, entropy
from vqcodec.codec import Codec, symbols_crc
from vqcodec.errors import BitstreamError, ImageError, ModelNotFoundError, VQCodecError
from vqcodec.image import encode_alpha

SIZES = [(37, 53), (8, 8), (1, 1), (17, 40)]


@pytest.mark.parametrize("order", ["fast", "raster"])
@pytest.mark.parametrize("size", SIZES)
def test_round_trip_is_bit_exact(codec, order, size):
    image = Image.fromarray(photo_like(*size, seed=size[0]))
    data = codec.compress(image, order=order)
    encoded = codec.encode(image, order=order)
    decoded = codec.decode_symbols(data)
    for a, b in zip(encoded.levels, decoded.levels):
        assert torch.equal(a, b)
    restored = codec.decompress(data)
    assert restored.size == image.size and restored.mode == "RGB"
    assert np.array_equal(np.asarray(restored), np.asarray(codec.decode(encoded)))


def older_version_file(codec, image, order: str, version: int) -> bytes:
    """What an older vqcodec wrote: version 1 (0.1) had the one-position raster scan and version 2
    (0.2) the wavefront one, both coded with the float32 prior; version 3 (0.3 to 0.8) the exact
    prior. None had the adaptation field (its 2-byte length, 0 here, is cut out)."""
    symbols = codec.encode(image, order=order, adapt_decoder=False).levels
    chunks = [codec._encode_level(symbols, level, order, version=version) for level in reversed(range(len(symbols)))]
    header, _ = bitstream.unpack(codec.compress(image, order=order, adapt_decoder=False))
    body = bytearray(bitstream.pack(header, chunks)[:-4])
    field = len(body) - sum(map(len, chunks)) - 2
    assert body[field : field + 2] == b"\x00\x00"
    del body[field : field + 2]
    body[3] = version
    return bytes(body) + struct.pack("<I", zlib.crc32(bytes(body)))


@pytest.mark.parametrize("order, version", [("raster", 1), ("raster", 2), ("fast", 2), ("fast", 3), ("raster", 3)])
def test_older_version_files_still_decode(codec, order, version):
    image = Image.fromarray(photo_like(37, 53, seed=4))
    old = older_version_file(codec, image, order, version)
    new = codec.compress(image, order=order, adapt_decoder=False)
    assert bitstream.unpack(old)[0].version == version and bitstream.unpack(new)[0].version == bitstream.VERSION
    assert np.array_equal(np.asarray(codec.decompress(old)), np.asarray(codec.decompress(new)))


def test_the_version_byte_selects_schedule_and_arithmetic(codec):
    """A version-1 raster chunk read with the current schedule and exact prior fails its checks."""
    image = Image.fromarray(photo_like(37, 53, seed=4))
    old = older_version_file(codec, image, "raster", 1)
    assert bitstream.unpack(old)[1] != bitstream.unpack(codec.compress(image, order="raster"))[1]
    forged = bytearray(old[:-4])
    forged[3] = bitstream.VERSION
    forged += struct.pack("<I", zlib.crc32(bytes(forged)))
    with pytest.raises(BitstreamError):
        codec.decompress(bytes(forged))


def test_file_size_is_the_cross_entropy(codec):
    image = photo_like(96, 128, seed=3)
    data = codec.compress(image)
    header, chunks = bitstream.unpack(data)
    symbols = codec.encode(image).levels
    ideal = 0.0
    for level in reversed(range(len(symbols))):
        stepper = codec._stepper(symbols, level, "fast")
        flat = symbols[level].reshape(-1)
        for step, positions in enumerate(stepper.schedule):
            probs = entropy.canonical_probabilities(stepper.logits(step, symbols[level]).numpy())
            ideal += entropy.ideal_bits(flat[positions].numpy(), probs)
    payload_bits = 8 * sum(len(c) for c in chunks)
    assert payload_bits <= 1.01 * ideal + 64 * len(chunks)  # rANS flush: at most two words per chunk
    assert len(data) - sum(len(c) for c in chunks) - len(header.adaptation) <= 64  # header


def test_estimate_bits_matches_file_size(codec):
    image = photo_like(64, 64, seed=4)
    data = codec.compress(image)
    payload = sum(len(c) for c in bitstream.unpack(data)[1])
    assert codec.estimate_bits(image) == pytest.approx(8 * payload, rel=0.05, abs=96)
    container = codec.estimate_bits(image, container=True) - codec.estimate_bits(image)
    assert container == 8 * (len(data) - payload)  # header, chunk lengths, checksum: known exactly


def test_same_bytes_with_one_and_two_threads(codec):
    image = photo_like(40, 56, seed=5)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = [codec.compress(image, order=o) for o in ("fast", "raster")]
        torch.set_num_threads(2)
        two = [codec.compress(image, order=o) for o in ("fast", "raster")]
    finally:
        torch.set_num_threads(before)
    assert one == two


def test_concurrent_calls_agree(codec):
    images = [photo_like(24, 32, seed=s) for s in range(4)]
    expected = [codec.compress(im) for im in images]
    results: dict[int, bytes] = {}

    def work(i: int) -> None:
        results[i] = codec.compress(images[i])
        assert np.array_equal(np.asarray(codec.decompress(results[i])), np.asarray(codec.decompress(expected[i])))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(4)] == expected


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_modes_come_back(codec, mode):
    image = Image.fromarray(photo_like(20, 24)).convert(mode)
    restored = codec.decompress(codec.compress(image))
    assert restored.mode == mode and restored.size == image.size


def translucent(height: int = 20, width: int = 24) -> np.ndarray:
    """A photo-like RGBA array: a fully transparent left quarter, then a soft ramp of alpha."""
    alpha = np.tile(np.linspace(0, 255, width).round().astype(np.uint8), (height, 1))
    alpha[:, : width // 4] = 0
    return np.dstack([photo_like(height, width, seed=3), alpha])


@pytest.mark.parametrize("order", ["fast", "raster"])
def test_translucent_alpha_comes_back_exactly_in_a_version_6_file(codec, order):
    rgba = translucent()
    data = codec.compress(Image.fromarray(rgba), order=order)
    header = bitstream.read_header(data)
    assert header.version == bitstream.ALPHA_VERSION and header.mode == "RGBA" and header.alpha
    restored = codec.decompress(data)
    assert restored.mode == "RGBA" and np.array_equal(np.asarray(restored)[..., 3], rgba[..., 3])
    assert codec.compress(rgba, order=order) == data  # arrays code like images
    symbols = codec.decode_symbols(data)
    assert symbols.info.alpha == header.alpha and codec.compress_symbols(symbols, order=order) == data
    assert codec.file_bits(symbols, order=order) / 8 == pytest.approx(len(data), abs=16)  # alpha bytes included
    opaque = rgba.copy()
    opaque[..., 3] = 255
    assert bitstream.read_header(codec.compress(opaque, order=order)).version == bitstream.VERSION


@pytest.mark.parametrize("scale", [1, 1.5])
def test_the_encoder_weighs_errors_by_opacity(codec, monkeypatch, scale):
    """An image with transparency is optimised for its composited picture: other symbols than an
    encoder that counts every pixel alike would choose, in a file that still round-trips."""
    import vqcodec.codec as codec_module

    codec = Codec(codec.vqvae, codec.prior, name="tiny", digest=codec.digest, scale=scale)
    rgba = translucent(40, 48)
    weighted = codec.encode(rgba)
    monkeypatch.setattr(codec_module, "error_weights", lambda info: None)
    alike = codec.encode(rgba)
    assert any(not torch.equal(a, b) for a, b in zip(weighted.levels, alike.levels))
    data = codec.compress_symbols(weighted)
    assert all(torch.equal(a, b) for a, b in zip(codec.decode_symbols(data).levels, weighted.levels))
    assert np.array_equal(np.asarray(codec.decompress(data))[..., 3], rgba[..., 3])


def test_the_alpha_plane_is_decoded_once_per_compress_and_per_decompress(codec, monkeypatch):
    """The plane is decoded to check a file (or weigh the encoder's errors) and that decoding is kept
    for the image, not repeated."""
    import vqcodec.image as image_module

    calls = []
    real_decode = image_module.decode_alpha

    def counted(*args):
        calls.append(args)
        return real_decode(*args)

    monkeypatch.setattr(image_module, "decode_alpha", counted)
    rgba = translucent()
    data = codec.compress(rgba)
    assert len(calls) == 1
    restored = codec.decompress(data)
    assert len(calls) == 2 and np.array_equal(np.asarray(restored)[..., 3], rgba[..., 3])


def test_a_forged_alpha_field_is_a_bitstream_error(codec):
    header, chunks = bitstream.unpack(codec.compress(translucent()))
    wrong_size = encode_alpha(np.zeros((19, 24), dtype=np.uint8))
    for alpha in (b"\x00not a png", b"\x09", wrong_size):
        forged = bitstream.pack(replace(header, alpha=alpha), chunks)
        with pytest.raises(BitstreamError, match="alpha field"):
            codec.decompress(forged)


def test_arrays_and_tensors_code_like_images(codec):
    array = photo_like(16, 24, seed=6)
    tensor = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    assert codec.compress(array) == codec.compress(Image.fromarray(array)) == codec.compress(tensor)
    x_hat = codec.decompress_tensor(codec.compress(tensor))
    assert x_hat.shape == (1, 3, 16, 24) and x_hat.dtype == torch.float32


def test_batches(codec):
    images = [photo_like(16, 16, seed=s) for s in range(3)]
    files = codec.compress_batch(images)
    assert files == [codec.compress(im) for im in images]
    assert [im.size for im in codec.decompress_batch(files)] == [(16, 16)] * 3


def test_truncated_flipped_and_random_files_raise(codec):
    data = codec.compress(photo_like(24, 24, seed=7))
    for cut in range(len(data)):
        with pytest.raises(BitstreamError):
            codec.decompress(data[:cut])
    rng = np.random.default_rng(0)
    for bit in rng.choice(8 * len(data), size=64, replace=False):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(BitstreamError):
            codec.decompress(bytes(flipped))
    for n in (0, 3, 64, 1000):
        with pytest.raises(BitstreamError):
            codec.decompress(rng.integers(0, 256, n, dtype=np.uint8).tobytes())


def test_payload_corruption_behind_a_valid_crc_is_caught(codec):
    """Even with a recomputed file CRC, changed payload words decode to symbols that fail the symbol CRC."""
    data = codec.compress(photo_like(32, 32, seed=8))
    header, chunks = bitstream.unpack(data)
    bottom = bytearray(chunks[-1])
    bottom[0] ^= 0x5A
    forged = bitstream.pack(header, [*chunks[:-1], bytes(bottom)])
    with pytest.raises(BitstreamError):
        codec.decompress(forged)


def test_file_from_other_weights_is_refused(codec, other_model_path):
    other = Codec.load(other_model_path)
    assert other.name == codec.name and other.digest != codec.digest
    with pytest.raises(BitstreamError, match="different weights"):
        codec.decompress(other.compress(photo_like(16, 16)))


def test_symbols_crc_depends_on_every_level():
    levels = [torch.zeros(1, 4, 4, dtype=torch.int64), torch.zeros(1, 2, 2, dtype=torch.int64)]
    base = symbols_crc(levels)
    levels[1][0, 1, 1] = 1
    assert symbols_crc(levels) != base


def test_errors():
    with pytest.raises(ModelNotFoundError):
        Codec.load("no-such-model")
    assert issubclass(ImageError, VQCodecError) and issubclass(BitstreamError, VQCodecError)


def test_a_model_file_name_must_fit_in_a_header(tmp_path, tiny_model_path):
    odd = tmp_path / "modèle.safetensors"  # not ASCII: files could not record which model made them
    odd.write_bytes(tiny_model_path.read_bytes())
    with pytest.raises(ModelNotFoundError, match="rename it"):
        Codec.load(odd)


def test_module_decompress_only_follows_headers_to_bundled_models(codec):
    import vqcodec

    data = codec.compress(photo_like(8, 8), optimize=0)  # recorded model name: "tiny", not bundled
    with pytest.raises(ModelNotFoundError, match="not bundled"):
        vqcodec.decompress(data)


def test_bad_inputs_raise_codec_errors(codec):
    with pytest.raises(ImageError):
        codec.compress(np.zeros((4, 4, 3), dtype=np.uint16))
    with pytest.raises(VQCodecError, match="order"):
        codec.compress(photo_like(8, 8), order="zigzag")  # type: ignore[arg-type]


def test_api_argument_errors_are_codec_errors(codec, tiny_model_path):
    x = torch.from_numpy(photo_like(8, 8)).permute(2, 0, 1).float()  # 0-255 floats: a common slip
    with pytest.raises(ImageError, match="divide 0-255 values by 255"):
        codec.compress(x)
    assert codec.decompress(codec.compress(x / 255, optimize=0)).size == (8, 8)
    for bad in (None, 1.5, True):
        with pytest.raises(VQCodecError, match="optimize"):
            codec.compress(x / 255, optimize=bad)  # type: ignore[arg-type]
    for data in ("abc", None):
        with pytest.raises(BitstreamError, match="expected the bytes"):
            codec.decompress(data)  # type: ignore[arg-type]
    assert Codec.load(tiny_model_path, device=torch.device("cpu")).device.type == "cpu"
    with pytest.raises(VQCodecError, match="unsupported device"):
        Codec.load(tiny_model_path, device="tpu")


def test_batch_errors_name_the_failing_item(codec):
    good = codec.compress(photo_like(8, 8), optimize=0)
    with pytest.raises(BitstreamError, match="item 1: "):
        codec.decompress_batch([good, good[:-3]])
    with pytest.raises(ImageError, match="item 0: "):
        codec.compress_batch([np.zeros((4, 4, 2), dtype=np.uint8)])


def test_caller_mistakes_with_models_headers_and_symbols_are_codec_errors(codec):
    with pytest.raises(BitstreamError, match="expected the bytes"):
        bitstream.read_header("VQC...")  # type: ignore[arg-type]
    with pytest.raises(ModelNotFoundError, match="bundled name or a weights path"):
        Codec.load(123)  # type: ignore[arg-type]
    symbols = codec.encode(photo_like(8, 8), optimize=0)
    assert codec.decode(symbols).size == (8, 8)
    bad = symbols.levels[0].clone()
    bad[0, 0, 0] = codec.vqvae.config.codebook_size[0]
    with pytest.raises(VQCodecError, match="outside its codebook"):
        codec.decode(symbols._replace(levels=[bad, *symbols.levels[1:]]))
    with pytest.raises(VQCodecError, match="do not fit"):
        codec.decode(symbols._replace(levels=symbols.levels[:1]))


def test_edited_symbols_compress_to_a_file_of_exactly_those_symbols(codec):
    symbols = codec.encode(photo_like(24, 40, seed=4), optimize=0)
    edited = [s.clone() for s in symbols.levels]
    edited[0][0, :2, :3] = (edited[0][0, :2, :3] + 1) % codec.vqvae.config.codebook_size[0]
    data = codec.compress_symbols(symbols._replace(levels=edited), order="raster")
    decoded = codec.decode_symbols(data)
    assert all(torch.equal(a, b) for a, b in zip(decoded.levels, edited)) and decoded.info == symbols.info
    assert bitstream.read_header(data).order == "raster"
    assert codec.compress_symbols(symbols) == codec.compress(photo_like(24, 40, seed=4), optimize=0)
    with pytest.raises(VQCodecError, match="outside its codebook"):
        codec.compress_symbols(symbols._replace(levels=[edited[0] + 10**6, *edited[1:]]))
    with pytest.raises(VQCodecError, match="order"):
        codec.compress_symbols(symbols, order="sideways")  # type: ignore[arg-type]


def test_rate_estimates_of_large_maps_run_in_bands_and_stay_close(codec, monkeypatch):
    from vqcodec import codec as codec_module

    image = photo_like(128, 96, seed=6)
    symbols = codec.encode(image, optimize=0).levels
    for order in ("fast", "raster"):
        with torch.no_grad():
            whole = float(sum(b.sum() for b in codec.prior.bits(symbols, order)))
        assert codec.prior.bits_in_bands(symbols, order, band_rows=16, context_rows=4) == pytest.approx(whole, rel=1e-6)
        banded = codec.prior.bits_in_bands(symbols, order, band_rows=4, context_rows=2)  # the 16 top rows in 4 bands
        assert banded != whole and banded == pytest.approx(whole, rel=0.03), order
    encoded = codec.encode(image, optimize=0)
    assert codec.symbol_bits(encoded, order="raster") == pytest.approx(whole, rel=1e-6)  # the raster one above
    monkeypatch.setattr(codec_module, "ESTIMATE_IN_BANDS_ABOVE", 100)
    assert codec.estimate_bits(image, optimize=0) == pytest.approx(codec.prior.bits_in_bands(symbols, "fast"))
    assert codec.symbol_bits(encoded) == codec.estimate_bits(image, optimize=0)
    with pytest.raises(VQCodecError, match="order"):
        codec.symbol_bits(encoded, order="sideways")  # type: ignore[arg-type]


def test_a_forged_image_size_beyond_what_encoders_make_is_refused_before_decoding(codec, monkeypatch):
    import dataclasses

    data = codec.compress(photo_like(16, 16), optimize=0)
    header, chunks = bitstream.unpack(data)
    ratios = [16 // h for h, _ in header.level_shapes]  # pixels per symbol, per level
    side = 12000  # 144 MP: the container allows it, no encoder produces it
    forged = bitstream.pack(dataclasses.replace(header, width=side, height=side,
                                                level_shapes=tuple((side // r, side // r) for r in ratios)), chunks)
    monkeypatch.setattr(Codec, "_decode_level", lambda *a, **k: pytest.fail("decoded a forged header"))
    with pytest.raises(BitstreamError, match="claims a 12000x12000 image"):
        codec.decompress(forged)


@pytest.mark.parametrize("order", ["fast", "raster"])
def test_coding_a_step_in_parts_writes_the_same_bytes(codec, monkeypatch, order):
    import vqcodec.codec as codec_module

    image = photo_like(48, 64, seed=9)
    whole = codec.compress(image, order=order, optimize=0)
    parts = []
    real_parts = Codec._parts
    monkeypatch.setattr(codec_module, "CODING_PART_ENTRIES", 3 * max(codec.prior.config.codebook_size))
    monkeypatch.setattr(Codec, "_parts", lambda self, *a: parts.append(real_parts(self, *a)) or parts[-1])
    assert codec.compress(image, order=order, optimize=0) == whole
    if order == "fast":
        assert max(len(p) for p in parts) > 3  # the steps were cut into several parts
    assert all(torch.equal(a, b) for a, b in zip(codec.decode_symbols(whole).levels,
                                                 codec.encode(image, order=order, optimize=0).levels))

"""rANS coding of symbol steps: round trips, rate, determinism, malformed data."""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vqcodec import entropy
from vqcodec.entropy import SymbolDecoder, SymbolEncoder, canonical_probabilities, encode_steps, ideal_bits
from vqcodec.errors import BitstreamError

pytestmark = pytest.mark.filterwarnings("error")


def random_steps(seed: int, count: int = 12, max_n: int = 150) -> list[tuple[np.ndarray, np.ndarray]]:
    """Steps of varying size n (0 included) and alphabet K (1 included), symbols drawn from probs."""
    rng = np.random.default_rng(seed)
    steps = []
    for index in range(count):
        n = int(rng.integers(0, max_n))
        k = [1, 2, 3, 16, 257, 512][index % 6]
        logits = (rng.standard_normal((n, k)) * rng.uniform(0.5, 6)).astype(np.float32)
        probs = canonical_probabilities(logits)
        cumulative = np.cumsum(probs, axis=1)
        draws = rng.random((n, 1))
        symbols = np.minimum((cumulative < draws).sum(axis=1), k - 1).astype(np.int64)
        steps.append((symbols, probs))
    return steps


def decode_all(data: bytes, steps: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    decoder = SymbolDecoder(data)
    decoded = [decoder.decode(probs) for _, probs in steps]
    decoder.finish()
    return decoded


@pytest.mark.parametrize("seed", range(5))
def test_round_trip(seed: int) -> None:
    steps = random_steps(seed)
    decoded = decode_all(encode_steps(steps), steps)
    for (symbols, _), result in zip(steps, decoded):
        assert result.dtype == np.int64
        np.testing.assert_array_equal(result, symbols)


def test_encoding_is_deterministic() -> None:
    steps = random_steps(7)
    assert encode_steps(steps) == encode_steps(steps)


def test_step_by_step_encoder_writes_the_same_stream() -> None:
    steps = random_steps(8)
    encoder = SymbolEncoder()
    for symbols, probs in reversed(steps):
        encoder.push(symbols, probs)
    assert encoder.finish() == encode_steps(steps)
    with pytest.raises(ValueError, match="lie in"):
        SymbolEncoder().push(np.array([5]), canonical_probabilities(np.zeros((1, 3), np.float32)))


def test_no_steps_and_empty_steps_round_trip() -> None:
    empty = (np.zeros(0, np.int64), np.zeros((0, 5)))
    for steps in ([], [empty], [empty, empty]):
        data = encode_steps(steps)
        assert len(data) == 4
        assert [r.size for r in decode_all(data, steps)] == [0] * len(steps)


def test_size_close_to_ideal() -> None:
    steps = random_steps(11, count=30, max_n=400)
    data = encode_steps(steps)
    ideal = sum(ideal_bits(symbols, probs) for symbols, probs in steps)
    assert ideal > 10_000
    assert 8 * len(data) <= 1.01 * ideal + 3 * 32


def test_skewed_distribution_size() -> None:
    # Very confident rows: rate is dominated by the fixed-point floor of constriction.
    probs = canonical_probabilities(np.tile(np.array([[8.0, 0, 0, 0]], np.float32), (5000, 1)))
    symbols = np.zeros(5000, np.int64)
    symbols[::50] = 2
    data = encode_steps([(symbols, probs)])
    assert 8 * len(data) <= 1.01 * ideal_bits(symbols, probs) + 3 * 32
    np.testing.assert_array_equal(decode_all(data, [(symbols, probs)])[0], symbols)


def test_perfect_false_without_any_warning() -> None:
    # constriction prints its perfect=... warning from Rust to stderr, not through `warnings`.
    code = ("import numpy as np, vqcodec.entropy as e; p = e.canonical_probabilities(np.zeros((4, 3), "
            "np.float32)); d = e.SymbolDecoder(e.encode_steps([(np.arange(4) % 3, p)])); d.decode(p); d.finish()")
    run = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    assert "perfect=False" in Path(entropy.__file__).read_text()


# --- canonical probabilities ------------------------------------------------------------------


def test_canonical_probabilities_shape_and_normalisation() -> None:
    logits = np.random.default_rng(0).standard_normal((50, 37)).astype(np.float32) * 4
    probs = canonical_probabilities(logits)
    assert probs.dtype == np.float64 and probs.shape == (50, 37) and probs.flags.c_contiguous
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-12)
    # close to the exact softmax: the grid moves each logit by at most 1/64 nat
    exact = np.exp(logits - logits.max(axis=1, keepdims=True))
    exact /= exact.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, exact, rtol=0.04)


def test_canonical_probabilities_absorbs_float_drift() -> None:
    rng = np.random.default_rng(1)
    logits = (rng.standard_normal((2000, 8)) * 3).astype(np.float32)
    drifted = np.nextafter(logits, np.float32(np.inf))       # one float32 ULP everywhere
    same_rows = (canonical_probabilities(logits) == canonical_probabilities(drifted)).all(axis=1)
    assert same_rows.mean() > 0.95
    # invariant to a per-row shift that lands on the grid
    np.testing.assert_array_equal(canonical_probabilities(logits),
                                  canonical_probabilities(logits + np.float32(2.0)))


def test_canonical_probabilities_golden_hash() -> None:
    """Pins grid, exp table and normalisation: a change here breaks every existing file."""
    n, k = 64, 33
    logits = ((np.arange(n * k).reshape(n, k) * 7919 % 1000) / 37.0 - 13.0).astype(np.float32)
    logits[3, :] = -np.inf
    logits[3, 5] = 0.0
    logits[4, 7] = -np.inf
    digest = hashlib.sha256(canonical_probabilities(logits).astype("<f8").tobytes()).hexdigest()
    assert digest == GOLDEN_PROBABILITIES_SHA256


GOLDEN_PROBABILITIES_SHA256 = "e3771491415a2c5cf3c6fc23d674207286b14499f55d828873c572fd950929b9"


def test_exp_table_is_correctly_rounded_exp() -> None:
    table = entropy._exp_table()
    for k in range(0, len(table), 7):
        exact = math.exp(-k / entropy.GRID_PER_NAT)
        assert abs(table[k] - exact) <= 2 * math.ulp(exact)
    assert table[0] == 1.0


def test_canonical_probabilities_extreme_values() -> None:
    probs = canonical_probabilities(np.array([[-np.inf, 0.0, -np.inf], [1e30, -1e30, 0.0],
                                              [-np.inf, -np.inf, -np.inf]], np.float32))
    assert np.isfinite(probs).all() and (probs > 0).all()
    np.testing.assert_allclose(probs[2], 1 / 3)
    assert probs[0, 1] > 0.999999
    for bad in (np.array([[np.nan, 0.0]]), np.array([[np.inf, 0.0]])):
        with pytest.raises(ValueError):
            canonical_probabilities(bad)
    with pytest.raises(ValueError):
        canonical_probabilities(np.zeros(4, np.float32))
    assert canonical_probabilities(np.zeros((0, 4), np.float32)).shape == (0, 4)


def test_ideal_bits() -> None:
    probs = np.full((3, 4), 0.25)
    assert ideal_bits(np.array([0, 1, 3]), probs) == pytest.approx(6.0)
    assert ideal_bits(np.array([0]), np.array([[2.0, 6.0]])) == pytest.approx(2.0)


# --- malformed data and misuse --------------------------------------------------------------


@pytest.mark.parametrize("data", [b"\x01", b"\x01\x00\x00\x00\x02", b"", b"\x05\x00\x00\x00\x00\x00\x00\x00"])
def test_malformed_chunks_raise(data: bytes) -> None:
    with pytest.raises(BitstreamError):
        SymbolDecoder(data)


def test_decode_past_end_raises() -> None:
    steps = random_steps(3)[:4]
    decoder = SymbolDecoder(encode_steps(steps))
    for _, probs in steps:
        decoder.decode(probs)
    with pytest.raises(BitstreamError, match="past the end"):
        decoder.decode(np.full((1, 4), 0.25))


def test_decode_past_end_of_confident_zeros_raises() -> None:
    # Symbol 0 with probability ~1 barely moves an ANS state; the guard word must still catch it.
    probs = canonical_probabilities(np.array([[20.0, 0.0, 0.0]] * 10, np.float32))
    decoder = SymbolDecoder(encode_steps([(np.zeros(10, np.int64), probs)]))
    np.testing.assert_array_equal(decoder.decode(probs), 0)
    with pytest.raises(BitstreamError):
        decoder.decode(probs)


def test_too_few_steps_fails_finish() -> None:
    steps = random_steps(4)
    decoder = SymbolDecoder(encode_steps(steps))
    for _, probs in steps[:-2]:
        decoder.decode(probs)
    with pytest.raises(BitstreamError):
        decoder.finish()
    with pytest.raises(BitstreamError):
        decoder.decode(steps[-1][1])


def test_one_extra_symbol_in_last_step_fails() -> None:
    symbols, probs = random_steps(5, count=6)[4]
    decoder = SymbolDecoder(encode_steps([(symbols[:-1], probs[:-1])]))
    decoder.decode(probs)
    with pytest.raises(BitstreamError):
        decoder.finish()


def outcome(data: bytes, steps: list[tuple[np.ndarray, np.ndarray]]) -> str:
    """'raised', 'different' or 'same' for decoding data with the probs of steps."""
    try:
        decoded = decode_all(data, steps)
    except BitstreamError:
        return "raised"
    same = all(np.array_equal(d, s) for d, (s, _) in zip(decoded, steps))
    return "same" if same else "different"


def test_wrong_data_raises_or_decodes_differently() -> None:
    steps = random_steps(6)
    data = encode_steps(steps)
    rng = np.random.default_rng(0)
    corrupt = [bytes(rng.integers(0, 256, len(data), dtype=np.uint8)) for _ in range(20)]
    corrupt += [data[4:], data[:-4], data + data[-4:], encode_steps(random_steps(8))]
    for position in range(0, len(data), max(1, len(data) // 40)):
        flipped = bytearray(data)
        flipped[position] ^= 0x10
        corrupt.append(bytes(flipped))
    outcomes = [outcome(bad, steps) for bad in corrupt]
    assert "same" not in outcomes
    # the guard word alone catches most corruption, before the symbols CRC of the codec
    assert outcomes.count("raised") >= 0.8 * len(outcomes)


def test_wrong_probabilities_detected() -> None:
    steps = random_steps(9)
    data = encode_steps(steps)
    shuffled = [(symbols, probs[::-1].copy()) for symbols, probs in steps]
    assert outcome(data, shuffled) != "same"


def test_constriction_decoder_is_total() -> None:
    """Pins the constriction behaviour that entropy.py's docstring documents."""
    ans = entropy.constriction.stream.stack.AnsCoder
    model = entropy._CATEGORICAL
    probs = np.full((5, 3), 1 / 3)
    garbage = ans(np.array([0x12345678, 0x9ABCDEF], np.uint32)).decode(model, probs)
    assert garbage.shape == (5,)                                  # random words decode silently
    assert ans(np.zeros(0, np.uint32)).decode(model, probs).tolist() == [0] * 5  # past end: zeros
    with pytest.raises(ValueError):
        ans(np.array([7, 0], np.uint32))                          # only a zero last word is refused


def test_bad_arguments_raise_value_error() -> None:
    probs = np.full((3, 4), 0.25)
    with pytest.raises(ValueError):
        encode_steps([(np.array([0, 1]), probs)])                 # length mismatch
    with pytest.raises(ValueError):
        encode_steps([(np.array([0, 1, 4]), probs)])              # symbol out of range
    with pytest.raises(ValueError):
        encode_steps([(np.array([0, 1, 2]), probs.astype(np.float32))])
    with pytest.raises(ValueError):
        encode_steps([(np.array([0, 1, 2]), -probs)])             # not normalisable
    decoder = SymbolDecoder(encode_steps([]))
    with pytest.raises(ValueError):
        decoder.decode(np.full((3,), 0.25))

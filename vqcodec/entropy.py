"""Entropy coding of symbol maps with rANS (constriction), step by step.

The only module that imports ``constriction``; it never imports torch. The torch side stops at
logits; ``codec.py`` converts them to numpy and hands them here::

    logits (n, K) float32 ─► canonical_probabilities ─► probs (n, K) float64 ─┬─► encode_steps | SymbolEncoder ─► bytes
                                                                              └─► SymbolDecoder.decode

Determinism: the encoder and the decoder must hand constriction bit-identical probabilities
(measured with constriction 0.5.0: changing one probability by a single float32 ULP broke
decoding in a quarter of trials). ``canonical_probabilities`` therefore rounds logits to a
1/32-nat grid and looks ``exp`` up in a table of correctly rounded values built with
``decimal`` (numpy's SIMD ``exp`` differs from the correctly rounded value in about a quarter
of these inputs and may differ between CPUs); the normalising sum is a sequential
``cumsum`` (numpy's pairwise ``sum`` may be vectorised differently on other machines). The
rounding cannot make float32 noise harmless (a logit near a grid boundary flips), so the
logits themselves come from the exact prior (``vqcodec.exact``), the same on every machine.

Stream layout: ANS is a stack (last in, first out). ``encode_steps`` starts from a coder that
holds one guard word, pushes the steps in reverse decode order and each step with
``encode_reverse``, so the decoder pops step 0 first and ends on the guard word alone.

How constriction 0.5 treats invalid data (checked by tests/test_entropy.py):

- its decoder is total: any sequence of words decodes to *some* symbols without an error;
- decoding past the end of the data silently yields symbol 0 again and again;
- the only error on decode is a last word of zero (``ValueError`` when the coder is built).

Because of this the guard word does the detecting: every state the encoder passes through
after the guard is larger than the guard (an ANS step with a symbol of probability < 1 from a
state >= 2**24 strictly grows the state, and once words are flushed they stay), so a decoder
that reaches the guard-only state (or anything smaller) before its last step has run past the
end, and ``finish`` requires exactly the guard to remain. Wrong data that slips through both
checks decodes to wrong symbols, which the codec detects with the symbols CRC of the header.
"""

from __future__ import annotations

import decimal
import functools

import constriction
import numpy as np

from vqcodec.errors import BitstreamError

__all__ = ["GRID_PER_NAT", "canonical_probabilities", "encode_steps", "SymbolEncoder", "SymbolDecoder", "ideal_bits"]

GRID_PER_NAT = 32
"""Logits are rounded to multiples of 1 / GRID_PER_NAT nats before the softmax."""

_MAX_STEPS_BELOW = 32 * GRID_PER_NAT
"""Logits more than 32 nats below their row's maximum all get exp(-32) (about 1.3e-14)."""

_GUARD = 0x5651_4331
"""Initial coder state (one word, >= 2**24): marks the end of the data for the decoder."""

# perfect=False explicitly: constriction's default is perfect=True plus a deprecation warning,
# and encoder and decoder must agree on it. Without fixed probabilities the model is a family
# whose per-symbol rows are passed to every call.
_CATEGORICAL = constriction.stream.model.Categorical(perfect=False)


@functools.lru_cache(maxsize=1)
def _exp_table() -> np.ndarray:
    """(_MAX_STEPS_BELOW + 1,) float64: exp(-k / GRID_PER_NAT), correctly rounded.

    Built with ``decimal`` (software arithmetic, correctly rounded ``exp``), so the table is the
    same bit for bit on every machine, unlike ``np.exp`` or ``math.exp``.
    """
    ctx = decimal.Context(prec=40)
    values = [float(ctx.exp(ctx.divide(decimal.Decimal(-k), GRID_PER_NAT)))
              for k in range(_MAX_STEPS_BELOW + 1)]
    table = np.array(values, dtype=np.float64)
    table.flags.writeable = False
    return table


def canonical_probabilities(logits: np.ndarray) -> np.ndarray:
    """Turn logits into probability rows that are bit-identical wherever the logits nearly are.

    Logits are cast to float32, rounded to multiples of 1/32 nat and shifted so that each row's
    maximum is 0; probabilities come from a fixed table of exp values and are normalised with a
    sequential sum. Logits more than 32 nats below their row's maximum (including -inf) are
    clamped to 32 nats below it.

    Args:
        logits: (n, K) float array (float32 expected); NaN and +inf are refused.

    Returns:
        (n, K) float64 C-contiguous probabilities, each row summing to 1 (up to rounding).

    Raises:
        ValueError: the array is not 2-D, has K = 0, or holds NaN or +inf.
    """
    logits = np.asarray(logits)
    if logits.ndim != 2 or logits.shape[1] == 0:
        raise ValueError(f"logits must have shape (n, K) with K >= 1, got {logits.shape}")
    grid = logits.astype(np.float32).astype(np.float64)            # (n, K), worked on in place
    if grid.shape[0] == 0:
        return grid
    np.rint(np.multiply(grid, GRID_PER_NAT, out=grid), out=grid)  # integers (or -inf) as float64
    top = grid.max(axis=1, keepdims=True)                          # (n, 1)
    if not np.isfinite(top).all():
        if np.isnan(top).any() or np.isposinf(top).any():
            raise ValueError("logits contain NaN or +inf")
        hopeless = np.isneginf(top[:, 0])                          # rows of -inf only: uniform
        grid[hopeless] = 0.0
        top[hopeless] = 0.0
    below = np.minimum(np.subtract(top, grid, out=grid), _MAX_STEPS_BELOW, out=grid)
    weights = np.take(_exp_table(), below.astype(np.intp))        # (n, K), row max = 1.0
    total = np.cumsum(weights, axis=1)[:, -1:]                     # sequential: same everywhere
    return np.divide(weights, total, out=weights)


def _check_step(symbols: np.ndarray | None, probs: np.ndarray) -> None:
    """Raise ValueError unless probs is (n, K) float64 (and symbols (n,) ints in [0, K))."""
    if probs.ndim != 2 or probs.shape[1] == 0 or probs.dtype != np.float64:
        raise ValueError(f"probs must be (n, K) float64 with K >= 1, got {probs.shape} {probs.dtype}")
    if symbols is None:
        return
    if symbols.ndim != 1 or symbols.shape[0] != probs.shape[0]:
        raise ValueError(f"symbols {symbols.shape} do not match probs {probs.shape}")
    if not np.issubdtype(symbols.dtype, np.integer):
        raise ValueError(f"symbols must be integers, got {symbols.dtype}")
    if symbols.size and (symbols.min() < 0 or symbols.max() >= probs.shape[1]):
        raise ValueError(f"symbols must lie in [0, {probs.shape[1]})")


def encode_steps(steps: list[tuple[np.ndarray, np.ndarray]]) -> bytes:
    """Entropy-code several steps of symbols into one rANS stream.

    Args:
        steps: in DECODE order, each (symbols (n_i,) int in [0, K_i), probs (n_i, K_i) float64),
            probs normally from ``canonical_probabilities``. Steps may be empty (n_i = 0);
            K_i = 1 steps carry no information and are not coded.

    Returns:
        The compressed words as little-endian uint32 bytes (always at least one word). Decode
        with ``SymbolDecoder``, calling ``decode`` with the same probs in the same order.

    Raises:
        ValueError: shapes, dtypes or symbol ranges are wrong, or probs cannot be normalised.
    """
    checked = []
    for symbols, probs in steps:  # every step is checked before any is coded
        symbols, probs = np.asarray(symbols), np.asarray(probs)
        _check_step(symbols, probs)
        checked.append((symbols, probs))
    encoder = SymbolEncoder()
    for symbols, probs in reversed(checked):
        encoder.push(symbols, probs)
    return encoder.finish()


class SymbolEncoder:
    """``encode_steps`` one step at a time, steps pushed in REVERSE decode order (ANS is a stack).

    Lets a caller that can compute any step's probabilities on demand (the codec: the encoder
    knows every symbol) hold one step's table at a time instead of all of them.
    """

    def __init__(self) -> None:
        self._coder = constriction.stream.stack.AnsCoder(np.array([_GUARD], dtype=np.uint32))

    def push(self, symbols: np.ndarray, probs: np.ndarray) -> None:
        """Code one step (the decoder will read it before every step pushed earlier).

        Raises:
            ValueError: shapes, dtypes or symbol ranges are wrong, or constriction refuses the step.
        """
        symbols, probs = np.asarray(symbols), np.asarray(probs)
        _check_step(symbols, probs)
        if symbols.shape[0] == 0 or probs.shape[1] == 1:
            return
        try:
            self._coder.encode_reverse(symbols.astype(np.int32), _CATEGORICAL, np.ascontiguousarray(probs))
        except (ValueError, KeyError) as err:
            raise ValueError(f"constriction refused a step: {err}") from None

    def finish(self) -> bytes:
        """The compressed words as little-endian uint32 bytes."""
        return self._coder.get_compressed().astype("<u4").tobytes()


class SymbolDecoder:
    """Decodes a stream from ``encode_steps`` one step at a time, in decode order.

    Example:
        >>> probs = canonical_probabilities(np.zeros((3, 4), np.float32))
        >>> data = encode_steps([(np.array([0, 3, 1]), probs)])
        >>> decoder = SymbolDecoder(data)
        >>> decoder.decode(probs).tolist()
        [0, 3, 1]
        >>> decoder.finish()
    """

    def __init__(self, data: bytes) -> None:
        """Args: data: bytes from ``encode_steps``. Raises BitstreamError if malformed."""
        if len(data) % 4 != 0:
            raise BitstreamError(f"entropy-coded chunk of {len(data)} bytes is not a whole number "
                                 "of 32-bit words")
        if len(data) == 0:
            raise BitstreamError("entropy-coded chunk is empty")
        words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
        try:
            self._coder = constriction.stream.stack.AnsCoder(words)
        except ValueError as err:
            raise BitstreamError(f"entropy-coded chunk is invalid: {err}") from None
        self._finished = False

    def _past_end(self) -> bool:
        position, state = self._coder.pos()
        return position == 0 and state <= _GUARD

    def decode(self, probs: np.ndarray) -> np.ndarray:
        """Decode the next step.

        Args:
            probs: (n, K) float64, bit-identical to the encoder's probs for this step.

        Returns:
            (n,) int64 symbols in [0, K).

        Raises:
            ValueError: probs has the wrong shape or dtype.
            BitstreamError: the data ends before this step, or constriction refuses it.
        """
        probs = np.asarray(probs)
        _check_step(None, probs)
        if self._finished:
            raise BitstreamError("entropy decoder used after finish()")
        n, k = probs.shape
        if n == 0 or k == 1:
            return np.zeros(n, dtype=np.int64)
        if self._past_end():
            raise BitstreamError("entropy-coded chunk ends before the last decode step "
                                 "(decoding past the end of the data)")
        try:
            symbols = self._coder.decode(_CATEGORICAL, np.ascontiguousarray(probs))
        except (ValueError, KeyError, RuntimeError) as err:
            raise BitstreamError(f"entropy decoding failed: {err}") from None
        return symbols.astype(np.int64)

    def finish(self) -> None:
        """Check that the whole stream was consumed.

        Raises:
            BitstreamError: unread data remains or the end marker is wrong (wrong data, wrong
                probabilities or a different number of symbols than were encoded).
        """
        self._finished = True
        if self._coder.pos() != (0, _GUARD):
            raise BitstreamError("entropy-coded chunk does not end where decoding ended "
                                 "(unread data, or data and probabilities do not match)")


def ideal_bits(symbols: np.ndarray, probs: np.ndarray) -> float:
    """Information content of symbols under probs: sum of -log2 p[i, symbols[i]].

    Args:
        symbols: (n,) int in [0, K).
        probs: (n, K) float64; rows are normalised first (constriction does the same).

    Returns:
        Total bits as a Python float (inf if a coded symbol has probability 0).
    """
    symbols, probs = np.asarray(symbols), np.asarray(probs, dtype=np.float64)
    _check_step(symbols, probs)
    picked = probs[np.arange(symbols.shape[0]), symbols] / probs.sum(axis=1)
    with np.errstate(divide="ignore"):
        return float(-np.log2(picked).sum())

"""The exact prior: integer sums that no summation order can change, so files decode anywhere."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from conftest import photo_like
from vqcodec import exact
from vqcodec.codec import Codec
from vqcodec.context import Gate
from vqcodec.prior import PriorConfig, SymbolPrior


@pytest.fixture
def threads():
    """Set the torch thread count inside a test; restored afterwards."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def integer_reference(conv: exact.ExactConv, x: torch.Tensor) -> torch.Tensor:
    """The same layer computed with int64 sums (im2col + integer matmul), scaled like ExactConv."""
    grid = torch.round(x.double() * 2.0**exact.FRACTION_BITS).clamp(-exact.ACTIVATION_LIMIT, exact.ACTIVATION_LIMIT)
    kernel = conv.codes.shape[-2:]
    columns = F.unfold(grid, kernel, padding=conv.padding, stride=conv.stride).long()  # (B, C*k*k, L)
    weights = conv.codes.reshape(conv.codes.shape[0], -1).long()
    total = torch.matmul(weights, columns)  # int64: exact by construction
    out_h = (x.shape[2] + 2 * conv.padding[0] - kernel[0]) // conv.stride[0] + 1
    total = total.view(x.shape[0], -1, out_h, total.shape[-1] // out_h).double()
    return total * conv.scale + conv.bias


@pytest.mark.parametrize("shape", [(16, 24, 3, 1), (1296, 80, 1, 0)])  # (in, out, kernel, padding)
def test_convolution_equals_an_integer_reference(shape):
    c_in, c_out, k, pad = shape
    torch.manual_seed(0)
    conv = nn.Conv2d(c_in, c_out, k, padding=pad)
    layer = exact.ExactConv(conv)
    x = torch.randn(2, c_in, 9, 11) * 30  # large activations: big partial sums
    assert torch.equal(layer(x), integer_reference(layer, x))
    assert (layer(x) - conv(x).double()).abs().max() < 1e-2  # and it is still the float layer


def test_transposed_convolution_is_exact_and_close():
    torch.manual_seed(1)
    up = nn.ConvTranspose2d(8, 8, 2, stride=2)
    layer = exact.ExactConv(up)
    x = torch.randn(1, 8, 5, 6)
    grid = torch.round(x.double() * 2.0**exact.FRACTION_BITS)
    # kernel = stride: every output is one input pixel's dot product with one kernel tap
    reference = torch.einsum("bihw,iokl->bohkwl", grid.long(), layer.codes.long()).reshape(1, 8, 10, 12)
    assert torch.equal(layer(x), reference.double() * layer.scale + layer.bias)
    assert (layer(x) - up(x).double()).abs().max() < 1e-3


def test_fan_in_beyond_the_exact_bound_is_refused():
    with pytest.raises(ValueError, match="exact bound"):
        exact.ExactConv(nn.Conv2d(exact.MAX_FAN_IN + 1, 4, 1))


def test_table_gate_is_pinned_and_close_to_the_float_gate():
    table = exact.sigmoid_table()
    # The table is part of the format (raster order): a change must be deliberate (new version).
    assert hashlib.sha256(table.numpy().tobytes()).hexdigest()[:16] == "498d76cea3520eda"
    assert table[len(table) // 2] == 0.5
    x = torch.randn(3, 8, 5, 5) * 6
    assert (exact.TableGate()(x) - Gate()(x).double()).abs().max() < 2e-3


def small_prior() -> SymbolPrior:
    torch.manual_seed(2)
    return SymbolPrior(PriorConfig(codebook_size=(64, 32), upsample=(2,), channels=24, layers=3,
                                   fast_layers=4, fast_groups=(2, 4))).eval()


@pytest.mark.parametrize("order", ["fast", "raster"])
def test_exact_logits_are_the_same_for_any_thread_count(order, threads):
    prior = exact.exact_prior(small_prior())
    torch.manual_seed(3)
    top, bottom = torch.randint(0, 32, (1, 12, 16)), torch.randint(0, 64, (1, 24, 32))
    results = []
    for count in (1, 2, 3):
        threads(count)
        stepper = prior.stepper(order, 0, 24, 32, top)
        results.append(torch.cat([stepper.logits(step, bottom) for step in range(len(stepper.schedule))]))
    assert all(torch.equal(results[0], other) for other in results[1:])


def test_exact_prior_codes_like_the_float_one():
    prior = small_prior()
    exact_copy = exact.exact_prior(prior)
    torch.manual_seed(4)
    symbols = [torch.randint(0, 64, (1, 24, 32)), torch.randint(0, 32, (1, 12, 16))]
    with torch.no_grad():
        for order in ("fast", "raster"):
            for ours, theirs in zip(exact_copy.logits(symbols, order), prior.logits(symbols, order)):
                assert ours.dtype == torch.float64
                assert (ours - theirs.double()).abs().max() < 1e-2
    assert all(p.dtype == torch.float32 for p in prior.parameters())  # the float prior is untouched


def test_files_decode_with_another_thread_count(threads):
    """The failure this module exists for: with the float32 prior, kodim05 compressed with 2
    threads failed to decompress with 1 (the default model's logits differed by 1.2e-4)."""
    codec = Codec.load("default")
    image = Image.fromarray(photo_like(256, 384, seed=5))
    threads(2)
    data = codec.compress(image, optimize=0)
    expected = codec.encode(image, optimize=0).levels
    threads(1)
    decoded = codec.decode_symbols(data).levels
    assert all(torch.equal(a, b) for a, b in zip(expected, decoded))
    assert np.asarray(codec.decompress(data)).shape == (256, 384, 3)


def test_input_lookup_tables_give_the_convolution_bit_for_bit():
    """The fast order's table-driven input layer forms the same integer sums as ExactConv."""
    prior = exact.exact_prior(small_prior())
    torch.manual_seed(5)
    top, bottom = torch.randint(0, 32, (1, 12, 16)), torch.randint(0, 64, (1, 23, 30))  # ragged: padded cells
    with_tables = []
    for level, symbols, context in ((0, bottom, top), (1, top, None)):
        stepper = prior.stepper("fast", level, *symbols.shape[-2:], context)
        with_tables.append([stepper.logits(step, symbols) for step in range(len(stepper.schedule))])
    for net in prior.fast:
        net.input_table, net.inp = None, exact.ExactConv(net.inp)  # the layer the tables stand for, exactly
    for level, symbols, context in ((0, bottom, top), (1, top, None)):
        stepper = prior.stepper("fast", level, *symbols.shape[-2:], context)
        plain = [stepper.logits(step, symbols) for step in range(len(stepper.schedule))]
        assert all(torch.equal(a, b) for a, b in zip(with_tables[level], plain))


@pytest.mark.parametrize("rows", [4, 8, 12])
def test_banded_conditioning_features_are_bit_identical(rows):
    """Bands bound the memory of large maps; in exact arithmetic they change no bit."""
    net = exact.exact_prior(small_prior()).fast[0]
    torch.manual_seed(6)
    context = torch.randint(0, 32, (1, 12, 16))
    for height, width in ((24, 32), (23, 30), (21, 31)):  # ragged: padded rows in the last band
        net.feature_band_rows = 0
        whole = net.features(context, height, width)
        net.feature_band_rows = rows
        assert torch.equal(net.features(context, height, width), whole)

"""Rate-distortion optimised encoding: never worse than nearest codes by its own measure, and real."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from conftest import photo_like
from vqcodec import rdo
from vqcodec.errors import VQCodecError
from vqcodec.image import to_tensor

pytestmark = pytest.mark.usefixtures("one_thread")


def cost(codec, x, symbols, order, weight=None):
    """(MSE, bits, J) of symbols, measured the slow way: decode, and the prior's code lengths."""
    with torch.no_grad():
        mse = float(F.mse_loss(codec.vqvae.decode(symbols, size=x.shape[-2:]), x))
        bits = float(sum(b.sum() for b in codec.prior.bits(symbols, order)))
    pixels = x.shape[-2] * x.shape[-1]
    weight = rdo.RATE_WEIGHT * mse / (bits / pixels) if weight is None else weight
    return mse, bits, mse + weight * bits / pixels, weight


@pytest.mark.parametrize("order", ["fast", "raster"])
def test_optimized_symbols_cost_less_than_the_nearest_codes(codec, order):
    x, _ = to_tensor(photo_like(48, 64, seed=7))
    nearest = codec.vqvae.encode(x)
    assert all(torch.equal(a, b) for a, b in zip(rdo.optimize_symbols(codec.vqvae, codec.prior, x, order, 0), nearest))
    optimized = rdo.optimize_symbols(codec.vqvae, codec.prior, x, order, 10)
    assert any(not torch.equal(a, b) for a, b in zip(optimized, nearest))  # it did change the choice
    *_, j_nearest, weight = cost(codec, x, nearest, order)
    assert cost(codec, x, optimized, order, weight)[2] < j_nearest


def test_optimized_files_round_trip_and_decode_like_any_file(codec):
    image = Image.fromarray(photo_like(37, 53, seed=2))
    for steps in (0, 3):
        data = codec.compress(image, optimize=steps)
        assert all(torch.equal(a, b) for a, b in zip(codec.decode_symbols(data).levels,
                                                      codec.encode(image, optimize=steps).levels))
    assert codec.compress(image, optimize=0) != codec.compress(image, optimize=3)


def test_an_image_in_one_tile_gets_the_whole_image_result(codec, monkeypatch):
    x, _ = to_tensor(photo_like(48, 64, seed=7))
    whole = rdo.optimize_symbols(codec.vqvae, codec.prior, x, "fast", 5)
    monkeypatch.setattr(rdo, "MAX_PIXELS", 100)  # the tiled path, with one tile covering everything
    monkeypatch.setattr(rdo, "TILE_PIXELS", 64)
    tiled = rdo.optimize_symbols(codec.vqvae, codec.prior, x, "fast", 5)
    assert all(torch.equal(a, b) for a, b in zip(tiled, whole))


def test_large_images_are_optimised_tile_by_tile(codec, monkeypatch):
    monkeypatch.setattr(rdo, "MAX_PIXELS", 100)
    monkeypatch.setattr(rdo, "TILE_PIXELS", 32)  # 12 tiles of 32 px, each with the decoder's 40-px reach
    image = photo_like(96, 128, seed=3)
    x, _ = to_tensor(image)
    nearest = codec.vqvae.encode(x)
    calls = []
    tiled = rdo.optimize_symbols(codec.vqvae, codec.prior, x, "fast", 10, progress=lambda *c: calls.append(c))
    assert calls == [(done, 12) for done in range(1, 13)]
    assert [s.shape for s in tiled] == [s.shape for s in nearest]
    changed = (tiled[0] != nearest[0]).reshape(3, 8, 4, 8).any(dim=(1, 3))  # bottom changes per 32-px tile
    assert int(changed.sum()) >= 6, changed  # most tiles moved, not only the first
    *_, j_nearest, weight = cost(codec, x, nearest, "fast")
    assert cost(codec, x, tiled, "fast", weight)[2] < j_nearest  # better for the whole image too
    data = codec.compress(image, optimize=10, adapt_decoder=False)  # and the codec codes exactly those symbols
    assert all(torch.equal(a, b) for a, b in zip(codec.decode_symbols(data).levels, tiled))


def test_negative_effort_is_refused(codec, tmp_path, tiny_model_path):
    from vqcodec.cli.main import app

    with pytest.raises(VQCodecError, match="optimize"):
        codec.compress(photo_like(8, 8), optimize=-1)
    Image.fromarray(photo_like(16, 16)).save(tmp_path / "a.png")
    args = ["compress", str(tmp_path / "a.png"), "--model", str(tiny_model_path), "-o"]
    result = CliRunner().invoke(app, [*args, str(tmp_path / "a.vqc"), "--optimize", "-1"])
    assert result.exit_code == 2 and "--optimize" in result.output and not (tmp_path / "a.vqc").exists()
    result = CliRunner().invoke(app, [*args, str(tmp_path / "b.vqc"), "--optimize", "0"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "b.vqc").read_bytes() == codec.compress(Image.open(tmp_path / "a.png"), optimize=0)


def test_the_cli_shows_a_tile_bar_on_a_terminal_only(monkeypatch):
    import io
    import sys

    from vqcodec.cli.coding import _TileBar

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for stream, shown in ((Terminal(), True), (io.StringIO(), False)):
        monkeypatch.setattr(sys, "stderr", stream)
        with _TileBar(Path("big.png")) as bar:
            for done in range(1, 4):
                bar(done, 3)
        assert ("big.png: optimising" in stream.getvalue() and "3/3" in stream.getvalue()) == shown


def test_the_written_out_adam_matches_torch_adam_bit_for_bit():
    torch.manual_seed(0)
    start = [torch.randn(1, 4, 5, 6), torch.randn(1, 4, 3, 3)]
    ours = [p.clone().requires_grad_(True) for p in start]
    theirs = [p.clone().requires_grad_(True) for p in start]
    mine, reference = rdo.Adam(ours, lr=2e-3), torch.optim.Adam(theirs, lr=2e-3)
    for _ in range(12):
        grads = [torch.randn_like(p) for p in start]
        mine.step(tuple(grads))
        for p, g in zip(theirs, grads):
            p.grad = g.clone()
        reference.step()
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)


def test_a_decoder_correction_is_fitted_once_to_the_nearest_codes_and_judges_the_pictures(codec):
    """The correction is asked for once, with the nearest codes; the symbols then lower the cost
    measured through the corrected decoder, which is a different optimum from the plain one."""
    from vqcodec import adapt

    x, _ = to_tensor(photo_like(48, 64, seed=7))
    nearest = codec.vqvae.encode(x)
    adaptation = adapt.fit(codec.vqvae, nearest, x)[0].adaptation
    calls = []

    def correction(levels):
        calls.append(levels)
        return adaptation.affine()

    unchanged = rdo.optimize_symbols(codec.vqvae, codec.prior, x, "fast", 0, correction=correction)
    assert all(torch.equal(a, b) for a, b in zip(unchanged, nearest))
    assert not calls  # nearest codes need no correction
    corrected = rdo.optimize_symbols(codec.vqvae, codec.prior, x, "fast", 10, correction=correction)
    assert len(calls) == 1 and all(torch.equal(a, b) for a, b in zip(calls[0], nearest))
    plain = rdo.optimize_symbols(codec.vqvae, codec.prior, x, "fast", 10)
    assert any(not torch.equal(a, b) for a, b in zip(corrected, plain))

    def corrected_mse(symbols):
        with torch.no_grad():
            return float(F.mse_loss(codec.vqvae.decode(symbols, size=x.shape[-2:], affine=adaptation.affine()), x))

    assert corrected_mse(corrected) < corrected_mse(nearest)


def test_weighted_error_is_the_mean_over_the_pixels_that_count():
    x, picture = torch.rand(1, 3, 6, 8), torch.rand(1, 3, 6, 8)
    half = torch.zeros(1, 1, 6, 8)
    half[..., :4] = 1
    assert float(rdo.squared_error(picture, x, half)) == pytest.approx(
        float(F.mse_loss(picture[..., :4], x[..., :4])), rel=1e-6)
    assert float(rdo.squared_error(picture, x, torch.ones(1, 1, 6, 8))) == pytest.approx(
        float(F.mse_loss(picture, x)), rel=1e-6)
    assert float(rdo.squared_error(picture, x, torch.zeros(1, 1, 6, 8))) == 0  # nothing seen, nothing wrong


@pytest.mark.parametrize("tiled", [False, True])
def test_weighted_optimisation_lowers_the_weighted_cost_and_differs_from_the_plain_one(codec, monkeypatch, tiled):
    """With the right half of the picture unseen, the symbols lower the cost of the seen half's
    error plus the bits, a different optimum from the one that also pays for the unseen half."""
    x, _ = to_tensor(photo_like(48, 64, seed=7))
    weights = torch.zeros(1, 1, 48, 64)
    weights[..., :32] = 1
    if tiled:
        monkeypatch.setattr(rdo, "MAX_PIXELS", 100)
        monkeypatch.setattr(rdo, "TILE_PIXELS", 32)
    nearest = codec.vqvae.encode(x)
    weighted = rdo.optimize_symbols(codec.vqvae, codec.prior, x, "fast", 10, weights=weights)
    plain = rdo.optimize_symbols(codec.vqvae, codec.prior, x, "fast", 10)
    assert any(not torch.equal(a, b) for a, b in zip(weighted, plain))
    if not tiled:  # a tile is judged on its own crop; the whole image is judged here
        seen = x[..., :32]

        def weighted_cost(symbols, exchange=None):
            with torch.no_grad():
                mse = float(F.mse_loss(codec.vqvae.decode(symbols, size=x.shape[-2:])[..., :32], seen))
                bits = float(sum(b.sum() for b in codec.prior.bits(symbols, "fast")))
            exchange = rdo.RATE_WEIGHT * mse / (bits / x[0, 0].numel()) if exchange is None else exchange
            return mse + exchange * bits / x[0, 0].numel(), exchange

        start, exchange = weighted_cost(nearest)
        assert weighted_cost(weighted, exchange)[0] < start

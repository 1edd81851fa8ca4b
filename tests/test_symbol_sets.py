"""Symbol sets for prior fine-tuning: the encoder's own symbols, built once and resumably, cut on aligned cells."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from conftest import photo_like, tiny_model
from vqcodec import rdo, resample, symbol_sets
from vqcodec.image import to_tensor

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    files = []
    for i in range(3):
        files.append(root / f"{i}.png")
        Image.fromarray(photo_like(32, 48, seed=i)).save(files[-1])
    return files


def test_a_set_holds_what_the_encoder_writes_and_resumes_where_it_stopped(photos, tmp_path, monkeypatch):
    vqvae, prior = tiny_model()
    expected = []
    for i, path in enumerate(photos):
        x, _ = to_tensor(path)
        if i % 2:  # the scales are taken in turn
            x = resample.to_coded_size(x, 1.5)
        expected.append(rdo.optimize_symbols(vqvae, prior, x, "fast", 3))
    assert any(not torch.equal(a, b) for a, b in zip(expected[0], vqvae.encode(to_tensor(photos[0])[0])))

    monkeypatch.setattr(symbol_sets, "SAVE_EVERY", 1)
    path = tmp_path / "set.pt"

    def stop_after_two(done, total):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        symbol_sets.build(path, vqvae, prior, photos, "fast", 3, (1.0, 1.5), source="a", progress=stop_after_two)
    calls = []
    real = rdo.optimize_symbols
    monkeypatch.setattr(rdo, "optimize_symbols", lambda *args: calls.append(1) or real(*args))
    maps = symbol_sets.build(path, vqvae, prior, photos, "fast", 3, (1.0, 1.5), source="a")
    assert len(calls) == 1  # only the third image was left to do
    assert len(maps) == 3 and maps[1][0].shape == (12, 18)  # 32x48 at x1.5 is 48x72: x4 cells
    for got, want in zip(maps, expected):
        assert all(g.dtype == torch.int16 and torch.equal(g.long(), w[0]) for g, w in zip(got, want))

    for other in [dict(source="b"), dict(steps=2), dict(files=photos[:2]), dict(order="raster")]:
        args = dict(files=photos, order="fast", steps=3, source="a") | other
        with pytest.raises(ValueError, match="made another way"):
            symbol_sets.build(path, vqvae, prior, args["files"], args["order"], args["steps"], (1.0, 1.5),
                              source=args["source"])


def test_random_crops_cut_every_level_at_the_same_place():
    # Each top cell covers 2x2 bottom cells; a map's values say where they sit.
    rows, cols = torch.meshgrid(torch.arange(8), torch.arange(12), indexing="ij")
    image = [rows * 100 + cols, (rows[::2, ::2] // 2) * 100 + cols[::2, ::2] // 2]
    maps = [[m.to(torch.int16) for m in image], [m.to(torch.int16) + 5000 for m in image]]
    crops = symbol_sets.random_crops(maps, 4, [1, 2], 20, torch.Generator().manual_seed(0))
    assert crops[0].shape == (20, 4, 4) and crops[1].shape == (20, 2, 2) and crops[0].dtype == torch.int64
    for bottom, top in zip(*crops):
        offset = int(bottom[0, 0]) // 5000 * 5000
        row, col = divmod(int(bottom[0, 0]) - offset, 100)
        assert row % 2 == 0 and col % 2 == 0  # starts on a whole top cell
        assert torch.equal(bottom - offset, image[0][row:row + 4, col:col + 4])
        assert torch.equal(top - offset, image[1][row // 2:row // 2 + 2, col // 2:col // 2 + 2])
    assert {int(c[0, 0]) // 5000 for c in crops[0]} == {0, 1}  # both images are drawn
    again = symbol_sets.random_crops(maps, 4, [1, 2], 20, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(crops, again))
    # Larger than the maps: capped at the smaller side, in whole top cells.
    assert symbol_sets.random_crops(maps, 100, [1, 2], 1, torch.Generator())[0].shape == (1, 8, 8)
    with pytest.raises(ValueError, match="top-level cell"):
        symbol_sets.random_crops(maps, 1, [1, 2], 1, torch.Generator())

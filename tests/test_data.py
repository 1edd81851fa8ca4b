from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import photo_like
from vqcodec.data import ImageFolder, list_images, pad_to_at_least, split_files, train_val_datasets


def make_folder(root: Path, sizes: list[tuple[int, int]]) -> Path:
    """Images of the given (H, W) in mixed formats, plus a file that is not an image."""
    root.mkdir(parents=True, exist_ok=True)
    suffixes = [".png", ".jpg", ".webp", ".JPEG"]
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(photo_like(h, w, seed=i)).save(root / f"img{i:02d}{suffixes[i % len(suffixes)]}")
    (root / "notes.txt").write_text("not an image")
    return root


def test_list_images_is_sorted_filtered_and_recursive(tmp_path):
    make_folder(tmp_path / "a", [(20, 20)] * 3)
    make_folder(tmp_path / "b", [(20, 20)] * 2)
    files = list_images(tmp_path)
    assert len(files) == 5
    assert files == sorted(files)
    assert all(f.suffix.lower() != ".txt" for f in files)


def test_list_images_refuses_missing_or_empty_folders(tmp_path):
    with pytest.raises(FileNotFoundError):
        list_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        list_images(tmp_path / "empty")


def test_split_is_deterministic_and_disjoint():
    files = [Path(f"{i}.png") for i in range(40)]
    train, val = split_files(files, 0.1, seed=3)
    assert (train, val) == split_files(files, 0.1, seed=3)
    assert len(val) == 4 and len(train) == 36
    assert not set(train) & set(val)
    assert split_files(files[:2], 0.01)[1]  # at least one held out when asked for any
    assert split_files(files, 0.0)[1] == []


@pytest.mark.parametrize("train", [True, False])
def test_crops_have_the_right_shape_dtype_and_range(tmp_path, train):
    folder = make_folder(tmp_path, [(40, 50), (12, 30), (1, 9)])  # the last two are smaller than the crop
    ds = ImageFolder(folder, crop=24, train=train)
    for i in range(len(ds)):
        x = ds[i]
        assert x.shape == (3, 24, 24) and x.dtype == torch.float32
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_training_crops_depend_on_seed_epoch_and_index_only(tmp_path):
    folder = make_folder(tmp_path, [(64, 64)] * 2)
    ds = ImageFolder(folder, crop=16, train=True, seed=1)
    first = ds[0]
    assert torch.equal(first, ImageFolder(folder, crop=16, train=True, seed=1)[0])
    ds.set_epoch(1)
    assert not torch.equal(first, ds[0])  # new crops every epoch


def test_validation_crop_is_the_center(tmp_path):
    folder = make_folder(tmp_path, [(30, 40)])
    pixels = np.asarray(Image.open(list_images(folder)[0]).convert("RGB"))
    x = ImageFolder(folder, crop=20, train=False)[0]
    expected = torch.from_numpy(pixels[5:25, 10:30].copy()).permute(2, 0, 1).float() / 255
    assert torch.equal(x, expected)


def test_padding_reflects():
    pixels = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    padded = pad_to_at_least(pixels, 4)
    assert padded.shape == (4, 4, 3)
    assert np.array_equal(padded[1:3, 1:3], pixels)  # centered
    assert np.array_equal(padded[0, 1:3], pixels[1])  # reflected, not zero


def test_train_val_datasets_hold_out_or_use_a_folder(tmp_path):
    folder = make_folder(tmp_path / "train", [(20, 20)] * 10)
    train, val = train_val_datasets(folder, None, 16, val_fraction=0.2)
    assert len(train) == 8 and val is not None and len(val) == 2 and not val.train
    other = make_folder(tmp_path / "val", [(20, 20)] * 3)
    train, val = train_val_datasets(folder, other, 16)
    assert len(train) == 10 and val is not None and len(val) == 3


def test_the_training_seed_does_not_move_the_held_out_files(tmp_path):
    # Held-out benchmarks measure the default split; a run with another --seed must not train on it.
    folder = make_folder(tmp_path / "train", [(20, 20)] * 40)
    held_out = {seed: set(train_val_datasets(folder, None, 16, val_fraction=0.1, seed=seed)[1].files)
                for seed in range(5)}
    assert all(files == held_out[0] for files in held_out.values())
    moved = set(train_val_datasets(folder, None, 16, val_fraction=0.1, seed=0, split_seed=1)[1].files)
    assert moved != held_out[0] and len(moved) == len(held_out[0])

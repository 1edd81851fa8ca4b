"""Training data: image folders, random or center crops, flips, reflect padding.

Beside the flow: only `train.py` and tests import this module.

Augmentation randomness is a pure function of (seed, epoch, index), never of
the global RNG or of the worker a sample lands on, so a resumed run and a run
with a different `num_workers` see exactly the same crops.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from vqcodec.image import check_image_files

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def list_images(folder: str | Path) -> list[Path]:
    """All images under `folder` (recursive), sorted by path so the order is deterministic.

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: the folder holds no jpg/jpeg/png/webp file.
        ImageError: one of them is not a readable image.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {root}")
    return check_image_files(files)


def split_files(files: Sequence[Path], val_fraction: float, *, seed: int = 0) -> tuple[list[Path], list[Path]]:
    """Split a file list into (train, val) deterministically.

    The split shuffles with its own seeded generator (not the global RNG), so the
    same folder always yields the same held-out set. At least one file stays on
    each side when `0 < val_fraction < 1` and there are two or more files.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(files)
    n_val = round(n * val_fraction)
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    val = sorted(files[i] for i in order[:n_val])
    train = sorted(files[i] for i in order[n_val:])
    return train, val


def train_val_datasets(
    data: str | Path,
    val_data: str | Path | None,
    crop: int,
    *,
    val_fraction: float = 0.05,
    seed: int = 0,
    split_seed: int = 0,
) -> tuple[ImageFolder, ImageFolder | None]:
    """Training set (random crops + flips) and validation set (center crops).

    Without `val_data`, `val_fraction` of `data` is held out (see `split_files`),
    drawn with `split_seed`; with `val_fraction == 0` and no `val_data` there is no
    validation set. `seed` draws only the training crops: a run with another seed
    holds out the same files, so its validation (and any held-out benchmark) never
    sees an image it trained on.
    """
    files = list_images(data)
    if val_data is not None:
        val_files = list_images(val_data)
    else:
        files, val_files = split_files(files, val_fraction, seed=split_seed)
    train = ImageFolder(files, crop, train=True, seed=seed)
    val = ImageFolder(val_files, crop, train=False) if val_files else None
    return train, val


class ImageFolder(Dataset):
    """Images as float32 (3, crop, crop) tensors in [0, 1].

    train=True: a random crop and random horizontal/vertical flips per sample.
    train=False: the center crop. Images smaller than `crop` on a side are
    reflect-padded first (reflection keeps edge statistics; zero borders would
    teach the codec a black frame that real images never have).

    Args:
        source: a folder (searched recursively) or an explicit list of files.
        crop: side of the square crop in pixels.
        train: random crops + flips (True) or center crops (False).
        seed: base seed of the augmentation; call `set_epoch` every epoch.
    """

    def __init__(self, source: str | Path | Sequence[Path], crop: int = 256, *,
                 train: bool = True, seed: int = 0) -> None:
        if crop < 1:
            raise ValueError(f"crop must be positive, got {crop}")
        self.files = list_images(source) if isinstance(source, (str, Path)) else list(source)
        if not self.files:
            raise ValueError("ImageFolder needs at least one image")
        self.crop = crop
        self.train = train
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation of this epoch (different crops every epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        """Returns: (3, crop, crop) float32 in [0, 1]."""
        with Image.open(self.files[index]) as img:
            pixels = np.array(img.convert("RGB"))  # (H, W, 3) uint8, writable (torch wants that)
        pixels = pad_to_at_least(pixels, self.crop)
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            pixels = random_crop_flip(pixels, self.crop, rng)
        else:
            pixels = center_crop(pixels, self.crop)
        x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)  # (3, crop, crop) uint8
        return x.float().div_(255.0)


def pad_to_at_least(pixels: np.ndarray, size: int) -> np.ndarray:
    """Reflect-pad (H, W, C) so both sides are >= size; the image stays centered."""
    h, w = pixels.shape[:2]
    pad_h, pad_w = max(size - h, 0), max(size - w, 0)
    if pad_h == 0 and pad_w == 0:
        return pixels
    # numpy reflects repeatedly when the pad exceeds the side; a 1-pixel side
    # has nothing to reflect, so it is repeated instead.
    mode = "reflect" if min(h, w) > 1 else "edge"
    widths = ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0))
    return np.pad(pixels, widths, mode=mode)


def center_crop(pixels: np.ndarray, size: int) -> np.ndarray:
    """(H, W, C) with H, W >= size -> (size, size, C) from the middle."""
    h, w = pixels.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return pixels[top:top + size, left:left + size]


def random_crop_flip(pixels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """(H, W, C) with H, W >= size -> random (size, size, C) crop, flipped at random."""
    h, w = pixels.shape[:2]
    top = int(rng.integers(0, h - size + 1))
    left = int(rng.integers(0, w - size + 1))
    out = pixels[top:top + size, left:left + size]
    if rng.random() < 0.5:
        out = out[:, ::-1]
    if rng.random() < 0.5:
        out = out[::-1]
    return out

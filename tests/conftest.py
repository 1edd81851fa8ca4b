"""Shared fixtures: tiny random-weight models and small synthetic images (no downloads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

TINY_CODEBOOKS = (16, 8)  # bottom, top


def tiny_model(seed: int = 0):
    """A 2-level VQ-VAE-2 (x4, x2) and its prior, small enough to code in milliseconds."""
    from vqcodec.prior import PriorConfig, SymbolPrior
    from vqcodec.vqvae import VQVAE2, VQVAE2Config

    torch.manual_seed(seed)
    vqvae = VQVAE2(VQVAE2Config(channels=16, res_blocks=1, res_channels=8, downsample=(4, 2),
                                codebook_size=TINY_CODEBOOKS, code_dim=(8, 8)))
    # One training-mode pass seeds the codebooks from encoder outputs (data init), so images use many symbols.
    batch = torch.from_numpy(np.stack([photo_like(64, 64, seed=s) for s in range(4)])).permute(0, 3, 1, 2) / 255.0
    with torch.no_grad():
        vqvae.train()(batch.float())
    prior = SymbolPrior(PriorConfig(codebook_size=TINY_CODEBOOKS, upsample=(2,), channels=16, layers=2,
                                    fast_layers=2, fast_groups=(2, 2)))
    return vqvae.eval(), prior.eval()


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: on 2 shared cores, more intra-op threads only spin against each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    from vqcodec.checkpoint import save_model

    vqvae, prior = tiny_model()
    path = tmp_path_factory.mktemp("models") / "tiny.safetensors"
    save_model(path, vqvae, prior)
    return path


@pytest.fixture(scope="session")
def other_model_path(tmp_path_factory) -> Path:
    """A second model with different weights, saved under the same file name as tiny_model_path."""
    from vqcodec.checkpoint import save_model

    vqvae, prior = tiny_model(seed=1)
    path = tmp_path_factory.mktemp("other") / "tiny.safetensors"
    save_model(path, vqvae, prior)
    return path


@pytest.fixture(scope="session")
def codec(tiny_model_path):
    from vqcodec.codec import Codec

    return Codec.load(tiny_model_path)


def photo_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth random image with edges: (H, W, 3) uint8, less trivial than noise for a codec."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    channels = [np.sin(6 * x * rng.uniform(0.5, 2) + 4 * y * rng.uniform(0.5, 2) + rng.uniform(0, 6)) for _ in range(3)]
    img = (np.stack(channels, axis=2) * 0.4 + 0.5) * 255 + rng.normal(0, 8, (height, width, 3))
    img[height // 3 : height // 2, width // 4 : width // 2] = rng.uniform(0, 255, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture
def image_file(tmp_path) -> Path:
    path = tmp_path / "photo.png"
    Image.fromarray(photo_like(37, 53)).save(path)
    return path

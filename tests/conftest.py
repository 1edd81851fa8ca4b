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


def rgb_icc_profile(description: str, colorants, gamma: float = 2.2) -> bytes:
    """A minimal ICC v2 matrix/TRC display profile (the kind phones and cameras embed).

    colorants: the D50-adapted XYZ of the red, green and blue primaries, whose sum is the white.
    """
    import struct

    def fixed(v: float) -> bytes:  # s15Fixed16Number
        return struct.pack(">i", round(v * 65536))

    def xyz(values) -> bytes:
        return b"XYZ " + bytes(4) + b"".join(fixed(v) for v in values)

    text = description.encode("ascii") + b"\0"
    tags = [
        (b"desc", b"desc" + bytes(4) + struct.pack(">I", len(text)) + text + bytes(4 + 4 + 2 + 1 + 67)),
        (b"cprt", b"text" + bytes(4) + b"none\0"),
        (b"wtpt", xyz([sum(c[i] for c in colorants) for i in range(3)])),
        *[(name, xyz(c)) for name, c in zip((b"rXYZ", b"gXYZ", b"bXYZ"), colorants)],
        *[(name, b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256))) for name in (b"rTRC", b"gTRC", b"bTRC")],
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for name, data in tags:
        data += bytes(-len(data) % 4)
        table += name + struct.pack(">II", offset + len(body), len(data))
        body += data
    size = offset + len(body)
    header = (struct.pack(">I", size) + bytes(4) + struct.pack(">I", 0x02100000) + b"mntrRGB XYZ " + bytes(12)
              + b"acsp" + bytes(28) + xyz([0.9642, 1.0, 0.8249])[8:])
    header += bytes(128 - len(header))
    return header + struct.pack(">I", len(tags)) + table + body


# Display P3's primaries, adapted to D50 as ICC profiles store them.
DISPLAY_P3 = ((0.515121, 0.241196, -0.001053), (0.291977, 0.692245, 0.041885), (0.157104, 0.066574, 0.784073))

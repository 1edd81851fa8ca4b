"""The encoder's rate-distortion optimisation, step by step: is its schedule the right one?

`vqcodec.rdo` takes DEFAULT_STEPS Adam steps at a constant LEARNING_RATE and keeps the last
iterate (or the nearest codes, when they are better). This script follows the true cost
J = MSE + weight * bits / pixels of the nearest codes of every iterate (decoded picture through the
image's decoder correction, teacher-forced code lengths: what the file would cost) on held-out
training crops, for a learning rate and a schedule, and prints J relative to the nearest codes'
per step, averaged over the images. Nothing here changes the encoder; it measures alternatives.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/rdo_trajectory.py -m vqc-3 --steps 20
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/rdo_trajectory.py -m vqc-4 --lr 0.004 --schedule linear --stride 5 --offset 1
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import click
import numpy as np
import torch
from PIL import Image

import vqcodec
from heldout_bench import heldout_files
from vqcodec import rdo
from vqcodec.image import to_tensor

HERE = Path(__file__).resolve().parent


def trajectory(codec: vqcodec.Codec, path: Path, steps: int, lr: float, schedule: str) -> list[float]:
    """J of the nearest codes of each iterate (index 0: before any step), relative to the first."""
    x, info = to_tensor(Image.open(path))
    x = codec._to_coded_size(x, info)
    vqvae, prior, pixels = codec.vqvae, codec.prior, x.shape[-2] * x.shape[-1]
    vectors, nearest = vqvae.latent_vectors(x)
    affine = codec._correction(nearest, x, info.height * info.width)
    quantizers = list(vqvae.quantizers)
    lengths = rdo.CodeLengths(prior, nearest, "fast", x.device)
    start_mse, start_bits = rdo._distortion(vqvae, nearest, x, affine), lengths.total(nearest)
    weight = rdo.RATE_WEIGHT * start_mse / (start_bits / pixels)

    def cost(symbols: list[torch.Tensor]) -> float:
        bits = rdo.CodeLengths(prior, symbols, "fast", x.device).total(symbols)
        return rdo._distortion(vqvae, symbols, x, affine) + weight * bits / pixels

    costs = [start_mse + weight * start_bits / pixels]
    schedules = {"constant": lambda step: lr, "cosine": lambda step: lr * 0.5 * (1 + math.cos(math.pi * step / steps)),
                 "linear": lambda step: lr * (1 - step / steps)}
    for vectors in rdo.descent(vqvae, prior, x, vectors, lengths, "fast", steps, weight, affine, schedules[schedule]):
        with torch.no_grad():
            costs.append(cost([q.nearest(z) for q, z in zip(quantizers, vectors)]))
    return [c / costs[0] for c in costs]


@click.command()
@click.option("-m", "--model", default="vqc-3", show_default=True)
@click.option("--steps", default=rdo.DEFAULT_STEPS, show_default=True)
@click.option("--lr", default=rdo.LEARNING_RATE, show_default=True)
@click.option("--schedule", type=click.Choice(["constant", "linear", "cosine"]), default="constant", show_default=True)
@click.option("--stride", default=8, show_default=True, help="Every n-th held-out crop ...")
@click.option("--offset", default=0, show_default=True, help="... starting from this one.")
@click.option("--out", type=click.Path(path_type=Path), default=HERE / "results" / "rdo_trajectory.json", show_default=True)
def main(model: str, steps: int, lr: float, schedule: str, stride: int, offset: int, out: Path) -> None:
    torch.set_num_threads(1)
    codec = vqcodec.Codec.load(model)
    files = heldout_files()[offset::stride]
    rows = np.array([trajectory(codec, f, steps, lr, schedule) for f in files])
    mean = rows.mean(axis=0)
    print(f"{model}, {len(files)} held-out crops, lr {lr} {schedule}: J / J(nearest) per step")
    print(" ".join(f"{v:.4f}" for v in mean))
    key = f"{model} lr={lr} {schedule} steps={steps} crops[{offset}::{stride}]"
    results = json.loads(out.read_text()) if out.exists() else {}
    results[key] = {"images": len(files), "mean_relative_cost_per_step": mean.tolist()}
    out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()

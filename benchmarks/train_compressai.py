"""Short CPU training of CompressAI peer models on the vqcodec training crops.

The zoo weights cannot be downloaded here, so the CompressAI peers in the Kodak
benchmark are trained from scratch with CompressAI's own recipe
(examples/train.py: loss = lambda * 255^2 * MSE + bpp, Adam, an auxiliary
optimizer for the entropy-bottleneck quantiles, gradient clipping at 1.0), only
far shorter. Each model gets a CPU-time budget instead of a step count, because
the machine is shared and wall time says little. The step count actually reached
is written next to the weights and ends up in the results JSON description, so
nobody mistakes these curves for CompressAI's published ones.

Training data: `shared/data/train` (`data_paths.TRAIN`; 256x256 crops; never Kodak).

    .venv/bin/python benchmarks/train_compressai.py --budget-s 160 --crop 64 --lr 1e-3 \
        --models bmshj2018-factorized,bmshj2018-hyperprior --qualities 1,3,5
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import click
import numpy as np
import torch
from PIL import Image

from vqcodec.peers import build_compressai

from data_paths import TRAIN

WEIGHTS_DIR = Path(__file__).parent / "weights"
TRAIN_DIR = TRAIN
# CompressAI's lambda for each zoo quality index (MSE models, examples/train.py docs).
LAMBDAS = {1: 0.0018, 2: 0.0035, 3: 0.0067, 4: 0.0130, 5: 0.0250, 6: 0.0483, 7: 0.0932, 8: 0.1800}


def weights_path(arch: str, quality: int) -> Path:
    """Where vqcodec.peers.compressai_codec looks for the trained weights."""
    return WEIGHTS_DIR / f"{arch}-q{quality}.pth"


def random_batch(files: list[Path], rng: random.Random, batch: int, crop: int) -> torch.Tensor:
    """(batch, 3, crop, crop) float32 in [0, 1]: random crops with random flips."""
    out = np.empty((batch, crop, crop, 3), np.uint8)
    for i in range(batch):
        with Image.open(rng.choice(files)) as im:
            arr = np.asarray(im.convert("RGB"))
        y = rng.randrange(arr.shape[0] - crop + 1)
        x = rng.randrange(arr.shape[1] - crop + 1)
        patch = arr[y : y + crop, x : x + crop]
        out[i] = patch[:, ::-1] if rng.random() < 0.5 else patch
    return torch.from_numpy(out).permute(0, 3, 1, 2).float() / 255.0


def rd_loss(out: dict, x: torch.Tensor, lmbda: float) -> tuple[torch.Tensor, float, float]:
    """CompressAI's RateDistortionLoss (MSE): lambda * 255^2 * mse + bpp."""
    num_pixels = x.shape[0] * x.shape[2] * x.shape[3]
    bpp = sum(torch.log(lk).sum() for lk in out["likelihoods"].values()) / (-np.log(2) * num_pixels)
    mse = torch.mean((out["x_hat"] - x) ** 2)
    return lmbda * 255**2 * mse + bpp, float(bpp.detach()), float(mse.detach())


def train_one(arch: str, quality: int, budget_s: float, batch: int, crop: int, lr: float, seed: int) -> dict:
    """Train until `budget_s` CPU seconds are spent; save weights + record."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    files = sorted(p for p in TRAIN_DIR.iterdir() if p.suffix.lower() in {".jpg", ".png"})
    model = build_compressai(arch, quality).train()
    params = [p for n, p in model.named_parameters() if not n.endswith(".quantiles")]
    aux_params = [p for n, p in model.named_parameters() if n.endswith(".quantiles")]
    opt = torch.optim.Adam(params, lr=lr)
    aux_opt = torch.optim.Adam(aux_params, lr=1e-3)
    lmbda, start, steps, log = LAMBDAS[quality], time.process_time(), 0, []
    while time.process_time() - start < budget_s:
        x = random_batch(files, rng, batch, crop)
        opt.zero_grad()
        aux_opt.zero_grad()
        loss, bpp, mse = rd_loss(model(x), x, lmbda)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        model.aux_loss().backward()
        aux_opt.step()
        steps += 1
        if steps % 25 == 0:
            log.append({"step": steps, "loss": float(loss), "bpp": bpp, "psnr": float(-10 * np.log10(mse))})
            print(f"{arch} q{quality} step {steps} loss {float(loss):.4f} bpp {bpp:.3f}", flush=True)
    model.update(force=True)
    record = {"arch": arch, "quality": quality, "lambda": lmbda, "steps": steps, "batch": batch,
              "crop": crop, "lr": lr, "cpu_s": round(time.process_time() - start, 1), "threads": 1,
              "data": str(TRAIN_DIR), "log": log}
    WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), weights_path(arch, quality))
    weights_path(arch, quality).with_suffix(".json").write_text(json.dumps(record, indent=1))
    return record


@click.command()
@click.option("--models", default="bmshj2018-factorized,bmshj2018-hyperprior", show_default=True)
@click.option("--qualities", default="1,3,5", show_default=True)
@click.option("--budget-s", default=160.0, show_default=True, help="CPU seconds per model.")
@click.option("--batch", default=8, show_default=True)
@click.option("--crop", default=64, show_default=True, help="Small crops buy more steps per CPU second.")
@click.option("--lr", default=1e-3, show_default=True, help="Above CompressAI's 1e-4: the run is short.")
@click.option("--seed", default=0, show_default=True)
def main(models: str, qualities: str, budget_s: float, batch: int, crop: int, lr: float, seed: int) -> None:
    """Train each (model, quality) pair for a fixed CPU-time budget on one thread."""
    torch.set_num_threads(1)  # shared machine: one core at most
    for arch in models.split(","):
        for quality in (int(q) for q in qualities.split(",")):
            record = train_one(arch, quality, budget_s, batch, crop, lr, seed)
            print(json.dumps({k: v for k, v in record.items() if k != "log"}), flush=True)


if __name__ == "__main__":
    main()

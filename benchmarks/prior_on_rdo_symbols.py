"""Should a prior learn the symbols the encoder writes (rate-distortion optimised) instead of the nearest codes?

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/prior_on_rdo_symbols.py -m vqc-1   # ~35 min on one thread

Every prior is trained on nearest-code symbols (`VQVAE2.encode`), but the default encoder writes
symbols chosen for rate and distortion together (`vqcodec/rdo.py`), which drift towards codes the
prior finds cheap: the coded distribution is not the one the prior learned. This script measures
what closing that gap once is worth, on one model's fast order:

1. The shipped model encodes the first --train-crops training crops (the runs' own split: never
   the held-out 5 %, never Kodak) twice: with the default encoder and with nearest codes.
2. Two copies of the shipped prior are fine-tuned the same way (--steps of batch 16 on those fixed
   symbol maps, Adam lr 1e-4, fast networks only), one on each set: the nearest-code copy is the
   control for training on a fixed, small, unaugmented set.
3. Each prior then drives the default encoder on the 65 held-out crops: bits (teacher-forced code
   lengths, what the coder writes up to a few bytes) and PSNR of what it encodes.

Writes benchmarks/results/prior_on_rdo_symbols.json. The training stage this led to is
`vqcodec train-prior --symbols rdo` (vqcodec/symbol_sets.py), which also crops the optimised maps
at random; benchmarks/README.md has its runs.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import time
from pathlib import Path

import torch

from data_paths import TRAIN
from vqcodec import rdo
from vqcodec.codec import Codec
from vqcodec.data import list_images, split_files
from vqcodec.image import open_image, to_pil, to_tensor
from vqcodec.metrics import psnr
from vqcodec.prior import SymbolPrior

ROOT = Path(__file__).resolve().parents[1]
ORDER = "fast"
BATCH = 16
LEARNING_RATE = 1e-4


def symbol_maps(codec: Codec, prior: SymbolPrior, files: list[Path], steps: int) -> list[list[torch.Tensor]]:
    """Per image, its symbol maps (bottom first, (h_l, w_l)) as the encoder with `steps` chooses them."""
    maps = []
    for path in files:
        x, _ = to_tensor(open_image(path).convert("RGB"))
        maps.append([s[0] for s in rdo.optimize_symbols(codec.vqvae, prior, x, ORDER, steps)])
    return maps


def fine_tuned(prior: SymbolPrior, maps: list[list[torch.Tensor]], steps: int) -> SymbolPrior:
    """A copy of `prior` whose fast networks took `steps` Adam steps on random batches of `maps`."""
    tuned = copy.deepcopy(prior).train()
    tuned.networks("raster").requires_grad_(False)
    optimizer = torch.optim.Adam([p for p in tuned.parameters() if p.requires_grad], lr=LEARNING_RATE)
    rng = random.Random(0)
    for _ in range(steps):
        batch = rng.sample(range(len(maps)), min(BATCH, len(maps)))
        levels = [torch.stack([maps[i][level] for i in batch]) for level in range(len(maps[0]))]
        loss = tuned.loss(levels, ORDER)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tuned.parameters(), 1.0)
        optimizer.step()
    return tuned.eval()


def encoded_point(codec: Codec, prior: SymbolPrior, files: list[Path]) -> dict[str, float]:
    """bpp and mean PSNR of the default encoder driven by `prior` on `files`."""
    bits, psnr_sum, pixels = 0.0, 0.0, 0
    for path in files:
        image = open_image(path).convert("RGB")
        x, info = to_tensor(image)
        symbols = rdo.optimize_symbols(codec.vqvae, prior, x, ORDER, rdo.DEFAULT_STEPS)
        with torch.no_grad():
            bits += float(sum(b.sum() for b in prior.bits(symbols, ORDER)))
            decoded = codec.vqvae.decode(symbols, size=(info.height, info.width))
        psnr_sum += psnr(image, to_pil(decoded, info))
        pixels += info.width * info.height
    return {"bpp": bits / pixels, "psnr_db": psnr_sum / len(files)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", "--model", default="vqc-1", help="a bundled trained model (not a resampled one)")
    parser.add_argument("--train-crops", type=int, default=600)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "prior_on_rdo_symbols.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    train, held_out = split_files(list_images(TRAIN), 0.05, seed=0)
    train = train[: args.train_crops]
    codec = Codec.load(args.model)
    started = time.time()
    maps = {"rdo": symbol_maps(codec, codec.prior, train, rdo.DEFAULT_STEPS),
            "nearest": symbol_maps(codec, codec.prior, train, 0)}
    print(f"training symbols: {time.time() - started:.0f} s", flush=True)
    priors = {"shipped": codec.prior, **{f"tuned on {k} symbols": fine_tuned(codec.prior, v, args.steps)
                                        for k, v in maps.items()}}
    points = {}
    for label, prior in priors.items():
        points[label] = encoded_point(codec, prior, held_out)
        print(f"{label}: {points[label]['bpp']:.5f} bpp, {points[label]['psnr_db']:.3f} dB", flush=True)
    report = {"model": args.model, "order": ORDER, "train_crops": len(train), "steps": args.steps, "batch": BATCH,
              "lr": LEARNING_RATE, "held_out_crops": len(held_out), "encoder": f"rdo, {rdo.DEFAULT_STEPS} steps",
              "points": points, "minutes": (time.time() - started) / 60}
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

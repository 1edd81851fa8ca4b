"""Codebook usage of every bundled model on an image folder: fraction of codes used, perplexity.

    python benchmarks/codebook_usage.py [--data ../shared/data/kodak] [--out benchmarks/results/codebook_usage.json]

Usage is counted over the symbol maps of all images together, per level (bottom first), as
`Codec.encode` chooses them by default (fast order, default encoder effort: what files hold).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from vqcodec.codec import Codec
from vqcodec.image import open_image
from vqcodec.metrics import histogram_entropy
from vqcodec.models import list_models
from vqcodec.rd import list_images

from data_paths import KODAK

ROOT = Path(__file__).resolve().parents[1]


def usage(codec: Codec, images: list[Path]) -> list[dict[str, float]]:
    sizes = codec.vqvae.config.codebook_size
    counts = [np.zeros(k, dtype=np.int64) for k in sizes]
    for path in images:
        for level, symbols in enumerate(codec.encode(open_image(path)).levels):
            counts[level] += np.bincount(symbols.reshape(-1).numpy(), minlength=sizes[level])
    stats = []
    for count in counts:
        stats.append({"codebook_size": int(count.size), "in_use": float((count > 0).mean()),
                      "perplexity": float(2 ** histogram_entropy(count)), "symbols": int(count.sum())})
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=KODAK)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "codebook_usage.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    images = list_images(args.data)
    report = {"data": str(args.data.name), "images": len(images), "levels": "bottom first", "models": {}}
    for name in list_models():
        report["models"][name] = usage(Codec.load(name), images)
        print(name, ", ".join(f"level {i}: {s['in_use']:.1%} of {s['codebook_size']} codes, perplexity "
                              f"{s['perplexity']:.0f}" for i, s in enumerate(report["models"][name])))
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

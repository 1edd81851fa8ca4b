"""Codebook usage of every bundled model on an image folder: fraction of codes used, perplexity.

    python benchmarks/codebook_usage.py [--data ../shared/data/kodak] [--out benchmarks/results/codebook_usage.json]
    python benchmarks/codebook_usage.py -m vqc-5 -m vqc-6   # re-run these, keep the others' entries

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
from folder_lock import locked

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
    parser.add_argument("-m", "--model", action="append", help="only these models; the file keeps the others")
    args = parser.parse_args()
    torch.set_num_threads(1)
    images = list_images(args.data)
    report = {"data": str(args.data.name), "images": len(images), "levels": "bottom first", "models": {}}
    if args.model and args.out.exists():
        kept = json.loads(args.out.read_text())
        if (kept["data"], kept["images"]) != (report["data"], report["images"]):
            parser.error(f"{args.out} counts other images ({kept['data']}, {kept['images']}); re-run every model")
    elif args.out.exists():
        args.out.unlink()  # a full run starts the file anew
    for name in args.model or list_models():
        stats = usage(Codec.load(name), images)
        print(name, ", ".join(f"level {i}: {s['in_use']:.1%} of {s['codebook_size']} codes, perplexity "
                              f"{s['perplexity']:.0f}" for i, s in enumerate(stats)))
        save(args.out, report, name, stats)


def save(out: Path, report: dict, name: str, stats: list[dict[str, float]]) -> None:
    """Add one model's entry to the file, re-read under a lock so runs of other models can go side by side."""
    with locked(out.parent):
        current = json.loads(out.read_text()) if out.exists() else report
        current["models"][name] = stats
        out.write_text(json.dumps(current, indent=2) + "\n")


if __name__ == "__main__":
    main()

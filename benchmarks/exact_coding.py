"""What format version 3's exact prior costs: file size and coding time against the float32 prior.

For each bundled model and Kodak image, the symbols are chosen once (the default encoder), then
entropy-coded twice: with the float32 prior (format version 2, which decodes only where float32
sums come out the same) and with the exact prior (version 3, `vqcodec.exact`, the same on every
machine). Prints and saves results/exact_coding.json: bytes of both, and the seconds of each
coding pass (the prior's network passes dominate it; decoding walks the same steps).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/exact_coding.py --order fast --limit 24
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/exact_coding.py --order raster --limit 4
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/exact_coding.py --order fast --limit 8 -m vqc-1  # one model's row
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from vqcodec import models, rd
from vqcodec.codec import Codec

from data_paths import KODAK

ROOT = Path(__file__).parent


def coded_bytes_and_seconds(codec: Codec, levels: list[torch.Tensor], order: str, version: int) -> tuple[int, float]:
    """Payload bytes of all chunks of one version, and the seconds their coding took."""
    start = time.perf_counter()
    size = sum(len(codec._encode_level(levels, level, order, version=version)) for level in range(len(levels)))
    return size, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--order", choices=("fast", "raster"), default="fast")
    parser.add_argument("--limit", type=int, default=24, help="first N Kodak images")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "exact_coding.json")
    parser.add_argument("-m", "--model", action="append", dest="models",
                        help="re-run only this model (repeatable): its row replaces its row in --out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images = rd.list_images(KODAK)[: args.limit]
    rows = []
    for name in args.models or models.list_models():
        codec = Codec.load(name)
        totals = {"float_bytes": 0, "exact_bytes": 0, "float_s": 0.0, "exact_s": 0.0}
        for path in images:
            levels = codec.encode(rd.load_rgb(path), order=args.order).levels
            for version, kind in ((2, "float"), (3, "exact")):
                size, seconds = coded_bytes_and_seconds(codec, levels, args.order, version)
                totals[f"{kind}_bytes"] += size
                totals[f"{kind}_s"] += seconds
        row = {"model": name, "order": args.order, "images": len(images), **totals,
               "size_change": totals["exact_bytes"] / totals["float_bytes"] - 1,
               "time_ratio": totals["exact_s"] / totals["float_s"]}
        rows.append(row)
        print(f"{name} {args.order}: {totals['float_bytes']} -> {totals['exact_bytes']} bytes "
              f"({row['size_change']:+.5%}), coding {totals['float_s'] / len(images):.2f} -> "
              f"{totals['exact_s'] / len(images):.2f} s/image (x{row['time_ratio']:.2f})", flush=True)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    if args.models and args.order in results:  # keep the other models' rows, in their order
        fresh = {row["model"]: row for row in rows}
        kept = results[args.order]["rows"]
        rows = [fresh.pop(row["model"], row) for row in kept] + list(fresh.values())
    results[args.order] = {"threads": args.threads, "rows": rows}
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

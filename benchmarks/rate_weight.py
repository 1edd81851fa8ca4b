"""How far the encoder's rate weight λ moves one model's rate: can a model cover a range of rates?

`vqcodec.rdo` trades distortion against bits with weight RATE_WEIGHT * MSE0 / bpp0 per image. This
runs the default encoder (10 steps) with other multiples and reports mean bpp (whole files) and
PSNR per model. A measurement, not a tuning: the default stays what held-out training crops chose.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/rate_weight.py --models vqc-3,vqc-4 --weights 0,1.3,4,12,40
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from data_paths import KODAK

ROOT = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="vqc-3,vqc-4")
    parser.add_argument("--weights", default="0,1.3,4,12,40", help="RATE_WEIGHT values (1.3: the default)")
    parser.add_argument("--images", default="kodim03,kodim13,kodim21")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "rate_weight.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import vqcodec
    from vqcodec import rdo
    from vqcodec.metrics import psnr

    images = {name: Image.open(KODAK / f"{name}.png").convert("RGB") for name in args.images.split(",")}
    rows = []
    for model in args.models.split(","):
        codec = vqcodec.Codec.load(model)
        for weight in (float(w) for w in args.weights.split(",")):
            rdo.RATE_WEIGHT = weight
            bpp, quality = [], []
            for image in images.values():
                data = codec.compress(image, optimize=args.steps)
                bpp.append(8 * len(data) / (image.width * image.height))
                quality.append(psnr(np.asarray(image), np.asarray(codec.decompress(data))))
            rows.append({"model": model, "rate_weight": weight, "bpp": float(np.mean(bpp)),
                         "psnr": float(np.mean(quality))})
            print(f"{model} weight {weight:>5}: {rows[-1]['bpp']:.4f} bpp, {rows[-1]['psnr']:.2f} dB", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"images": list(images), "steps": args.steps, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""What storing a bundled model's VQ-VAE in 8 bits would cost, measured on held-out crops.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/weight_storage.py            # vqc-1 ... vqc-4, ~10 min
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/weight_storage.py -m vqc-4   # one model

The shipped files store the VQ-VAE in fp16 and the prior in 8 bits (int8 rows + an fp16 scale per
row, `checkpoint.quantize_rows`). This script writes each trained model again with the VQ-VAE in
8 bits as well (`save_model(int8=("vqvae", "prior"))`: every weight matrix, kernel and codebook),
loads it as any model file is loaded, and compares it with the shipped file on the held-out 5 % of
the training crops (the split every run held out; never Kodak): nearest-code PSNR, the estimated
fast-order rate of the nearest codes, the share of symbols that stay the same, and the bytes. Why:
the 16 MB weights budget is nearly spent, and this is the room a stronger member could take.
Writes benchmarks/results/weight_storage.json (re-running some models keeps the others' rows).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from PIL import Image

from heldout_bench import link_heldout
from vqcodec.checkpoint import load_model, save_model
from vqcodec.codec import Codec
from vqcodec.image import open_image
from vqcodec.metrics import psnr
from vqcodec.models import BUNDLED, resolve
from vqcodec.rd import list_images

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "weight_storage.json"


def with_8bit_vqvae(name: str, folder: Path) -> Path:
    """The bundled model `name` written again with its VQ-VAE in 8 bits; returns the file."""
    vqvae, prior, meta = load_model(resolve(name).path)
    keep = {k: v for k, v in meta.items() if k not in ("format", "vqvae_config", "prior_config")}
    target = folder / f"{name}-int8.safetensors"
    save_model(target, vqvae, prior, metadata=keep, compact=True, int8=("vqvae", "prior"))
    return target


def nearest_code_point(codec: Codec, image: Image.Image) -> tuple[list[torch.Tensor], float, float]:
    """(symbols, PSNR in dB, estimated fast-order bits) of the nearest codes of one image."""
    symbols = codec.encode(image, optimize=0)
    return symbols.levels, psnr(image, codec.decode(symbols)), codec.symbol_bits(symbols)


def compare(name: str, images: list[Path], folder: Path) -> dict:
    shipped_file = resolve(name).path
    int8_file = with_8bit_vqvae(name, folder)
    shipped, small = Codec.load(shipped_file), Codec.load(int8_file)
    totals = {"psnr_fp16": 0.0, "psnr_int8": 0.0, "bits_fp16": 0.0, "bits_int8": 0.0}
    same, count, pixels = 0, 0, 0
    for path in images:
        image = open_image(path).convert("RGB")
        a, psnr_a, bits_a = nearest_code_point(shipped, image)
        b, psnr_b, bits_b = nearest_code_point(small, image)
        totals["psnr_fp16"] += psnr_a
        totals["psnr_int8"] += psnr_b
        totals["bits_fp16"] += bits_a
        totals["bits_int8"] += bits_b
        same += sum(int((s == t).sum()) for s, t in zip(a, b))
        count += sum(s.numel() for s in a)
        pixels += image.width * image.height
    n = len(images)
    return {
        "bytes_shipped": shipped_file.stat().st_size, "bytes_int8_vqvae": int8_file.stat().st_size,
        "psnr_fp16_db": totals["psnr_fp16"] / n, "psnr_int8_db": totals["psnr_int8"] / n,
        "bpp_fp16": totals["bits_fp16"] / pixels, "bpp_int8": totals["bits_int8"] / pixels,
        "rate_change_percent": 100 * (totals["bits_int8"] / totals["bits_fp16"] - 1),
        "symbols_unchanged": same / count,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", "--model", action="append", help="only these models; the file keeps the others")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = args.model or list(BUNDLED)
    report = json.loads(args.out.read_text()) if args.model and args.out.exists() else {"models": {}}
    report.update({"data": "held-out 5 % of shared/data/train (val_fraction 0.05, seed 0)",
                   "encoder": "nearest codes (optimize=0), fast order"})
    with tempfile.TemporaryDirectory() as tmp:
        heldout, files = Path(tmp) / "heldout", Path(tmp) / "files"
        heldout.mkdir()
        files.mkdir()
        link_heldout(heldout)
        images = list_images(heldout)
        report["images"] = len(images)
        for name in names:
            row = compare(name, images, files)
            report["models"][name] = row
            print(f"{name}: {row['bytes_shipped'] / 1e6:.2f} -> {row['bytes_int8_vqvae'] / 1e6:.2f} MB, "
                  f"PSNR {row['psnr_fp16_db']:.3f} -> {row['psnr_int8_db']:.3f} dB, "
                  f"rate {row['rate_change_percent']:+.3f} %, symbols unchanged {row['symbols_unchanged']:.2%}",
                  flush=True)
    total = sum(r["bytes_int8_vqvae"] for r in report["models"].values())
    report["bytes_int8_vqvae_total"] = total
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

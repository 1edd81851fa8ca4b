"""Encoding a large image: nearest codes, tiled rate-distortion optimisation, and the whole-image one.

Kodak has no large photos, so the test image is a mosaic of the centre 512x512 squares of
`--cols` x `--rows` Kodak images (4 x 3 by default: 2048x1536, 3.1 MP; 8 x 6 repeats them for
12.6 MP). Above `vqcodec.rdo.MAX_PIXELS` (2 MP) the default
encoder optimises the symbols tile by tile (`rdo.TILE_PIXELS`); `--whole` also runs the one-piece
optimisation on the same image for comparison. Each encoder runs in its own process (one thread)
so that its peak RSS is its own; each file is decoded and its symbols checked against the ones
the encoder chose. Prints and saves results/large_image.json.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/large_image.py --model vqc-3 --whole
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from data_paths import KODAK

ROOT = Path(__file__).parent
TILE = 512  # mosaic cell: the centre 512x512 of each Kodak image (they are 768x512 or 512x768)


def mosaic(cols: int, rows: int) -> Image.Image:
    """Kodak images' centre squares, cols x rows of them row by row, as one RGB image."""
    from vqcodec import rd

    paths = rd.list_images(KODAK)
    if not paths:
        raise SystemExit(f"no images in {KODAK}")
    canvas = Image.new("RGB", (cols * TILE, rows * TILE))
    for i in range(cols * rows):
        image = Image.open(paths[i % len(paths)]).convert("RGB")  # past the 24th, from the first again
        left, top = (image.width - TILE) // 2, (image.height - TILE) // 2
        canvas.paste(image.crop((left, top, left + TILE, top + TILE)), ((i % cols) * TILE, (i // cols) * TILE))
    return canvas


def worker(model: str, image_path: str, steps: int, whole: bool) -> None:
    """One encode and decode in this process; prints a JSON line (bytes, seconds, peak RSS, PSNR)."""
    from vqcodec import rdo
    from vqcodec.codec import Codec
    from vqcodec.metrics import psnr

    torch.set_num_threads(1)
    if whole:
        rdo.MAX_PIXELS = 1 << 40  # one piece, however large
    codec = Codec.load(model)
    image = Image.open(image_path).convert("RGB")
    start = time.perf_counter()
    symbols = codec.encode(image, optimize=steps)
    data = codec.compress_symbols(symbols)
    encode_s = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    decoded = codec.decode_symbols(data)
    picture = codec.decode(decoded)
    decode_s = time.perf_counter() - start
    print(json.dumps({"bytes": len(data), "bpp": 8 * len(data) / (image.width * image.height),
                      "psnr": float(psnr(picture, image)), "encode_s": encode_s,
                      "decode_s": decode_s, "encode_peak_rss_mib": peak,
                      "round_trip": all(torch.equal(a, b) for a, b in zip(decoded.levels, symbols.levels))}))


def run(model: str, image_path: Path, steps: int, whole: bool) -> dict:
    cmd = [sys.executable, __file__, "--worker", model, str(image_path), str(steps)]
    result = subprocess.run(cmd + (["--whole"] if whole else []), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"worker failed: {result.stderr.strip()[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        model, image_path, steps = sys.argv[2:5]
        worker(model, image_path, int(steps), "--whole" in sys.argv)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vqc-3")
    parser.add_argument("--cols", type=int, default=4)
    parser.add_argument("--rows", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="optimisation steps of the default encoder")
    parser.add_argument("--whole", action="store_true", help="also run the one-piece optimisation")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "large_image.json")
    args = parser.parse_args()
    from vqcodec import rdo

    image = mosaic(args.cols, args.rows)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        image_path = Path(tmp) / "mosaic.png"
        image.save(image_path)
        encoders = [("nearest codes", 0, False), ("tiled optimisation", args.steps, False)]
        encoders += [("whole-image optimisation", args.steps, True)] if args.whole else []
        for label, steps, whole in encoders:
            row = {"encoder": label, "optimize": steps, **run(args.model, image_path, steps, whole)}
            rows.append(row)
            print(f"{label}: {row['bpp']:.4f} bpp, {row['psnr']:.2f} dB, encode {row['encode_s']:.0f} s "
                  f"(peak {row['encode_peak_rss_mib']:.0f} MiB), decode {row['decode_s']:.0f} s, "
                  f"round trip {row['round_trip']}", flush=True)
    result = {"model": args.model, "image": f"{args.cols}x{args.rows} mosaic of Kodak centre squares",
              "width": image.width, "height": image.height, "max_pixels": rdo.MAX_PIXELS,
              "tile_pixels": rdo.TILE_PIXELS, "threads": 1, "torch": torch.__version__, "rows": rows}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

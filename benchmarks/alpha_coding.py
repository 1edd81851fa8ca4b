"""Images with transparency (format version 6): what the alpha plane and the hidden colours cost.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/alpha_coding.py [-m vqc-3] [--images 8] [--optimize 10]

Held-out training crops (never Kodak) are given two alpha masks, a soft-edged disc and a random
blob with a hard edge, and coded as RGBA. For each mask it reports the alpha field's bytes (WebP
lossless, as written, and PNG for comparison) and, for four choices of the colours under the fully
transparent pixels, the colour bytes (the file without its alpha field), the PSNR over the
opaque pixels and the PSNR of the composited picture (each pixel's error weighted by its squared
opacity, what the encoder minimises): the photo's own colours left there, black (what many
cut-outs hold), a flat mean of the visible colours, and the spread colours the codec writes
(`vqcodec.image._fill_hidden`); and the spread colours once more with the encoder counting every
pixel's error alike, as 0.11.0 did (`vqcodec.image.error_weights` switched off).
Results go to `results/alpha_coding.json`.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import click
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import vqcodec.codec as codec_module
import vqcodec.image as image_module
from heldout_bench import heldout_files
from vqcodec import bitstream
from vqcodec.codec import Codec

HERE = Path(__file__).resolve().parent
SIDE = 256


def masks() -> dict[str, np.ndarray]:
    yy, xx = np.mgrid[:SIDE, :SIDE]
    radius = np.hypot(yy - SIDE / 2, xx - SIDE * 0.43)
    noise = torch.from_numpy(np.random.default_rng(0).random((1, 1, 6, 6)))
    blob = F.interpolate(noise, size=(SIDE, SIDE), mode="bicubic")[0, 0].numpy()
    return {"soft disc": np.clip((SIDE * 0.35 - radius) * 64, 0, 255).astype(np.uint8),
            "hard blob": np.where(blob > 0.5, 255, 0).astype(np.uint8)}


def flat_mean(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    mean = rgb[alpha > 0].mean(0).round().astype(np.uint8)
    return np.where((alpha > 0)[..., None], rgb, mean)


FILLS = {
    "own colours": lambda rgb, alpha: rgb,
    "black": lambda rgb, alpha: np.where((alpha > 0)[..., None], rgb, 0).astype(np.uint8),
    "flat mean": flat_mean,
    "spread (shipped)": image_module._fill_hidden,
}


# (name, fill, whether the encoder weighs errors by opacity)
VARIANTS = [(name, fill, True) for name, fill in FILLS.items()] + [
    ("spread, errors not weighted (0.11.0)", image_module._fill_hidden, False)]


def png_bytes(alpha: np.ndarray) -> int:
    buffer = io.BytesIO()
    Image.fromarray(alpha, "L").save(buffer, format="PNG", optimize=True)
    return len(buffer.getvalue())


@click.command()
@click.option("-m", "--model", default="vqc-3", show_default=True)
@click.option("--images", default=8, show_default=True)
@click.option("--optimize", default=10, show_default=True, help="encoder steps, as `vqcodec compress --optimize`")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=HERE / "results" / "alpha_coding.json")
def main(model: str, images: int, optimize: int, out: Path) -> None:
    torch.set_num_threads(1)
    codec = Codec.load(model)
    files = heldout_files()[:: max(1, len(heldout_files()) // images)][:images]
    shipped_fill, shipped_weights = image_module._fill_hidden, codec_module.error_weights
    report = {"model": model, "optimize": optimize, "images": [f.name for f in files], "masks": {}}
    for name, alpha in masks().items():
        rows: dict[str, list[tuple[int, float, float]]] = {variant: [] for variant, _, _ in VARIANTS}
        alpha_bytes = []
        for path in files:
            rgb = np.asarray(Image.open(path).convert("RGB").resize((SIDE, SIDE), Image.LANCZOS))
            for variant, fill, weighted in VARIANTS:
                image_module._fill_hidden = fill
                codec_module.error_weights = shipped_weights if weighted else (lambda info: None)
                try:
                    data = codec.compress(np.dstack([rgb, alpha]), optimize=optimize)
                finally:
                    image_module._fill_hidden, codec_module.error_weights = shipped_fill, shipped_weights
                decoded = np.asarray(codec.decompress(data))
                assert np.array_equal(decoded[..., 3], alpha)  # the alpha plane comes back exactly
                header = bitstream.read_header(data)
                error = decoded[..., :3].astype(float) - rgb
                psnr = 10 * np.log10(255 ** 2 / np.mean(error[alpha == 255] ** 2))
                weights = (alpha / 255.0)[..., None] ** 2
                composited = 10 * np.log10(255 ** 2 / (np.sum(weights * error ** 2) / (3 * np.sum(weights))))
                rows[variant].append((len(data) - len(header.alpha) - 4, psnr, composited))
            alpha_bytes.append(len(header.alpha))
        summary = {"hidden share": float((alpha == 0).mean()), "alpha field bytes (WebP lossless)": float(np.mean(alpha_bytes)),
                   "alpha as PNG bytes": png_bytes(alpha),
                   "fills": {fill: {"colour bytes": float(np.mean([r[0] for r in v])),
                                    "PSNR opaque (dB)": float(np.mean([r[1] for r in v])),
                                    "PSNR composited (dB)": float(np.mean([r[2] for r in v]))} for fill, v in rows.items()}}
        report["masks"][name] = summary
        click.echo(f"{name}: {summary['hidden share']:.0%} hidden; alpha {summary['alpha field bytes (WebP lossless)']:.0f} "
                   f"bytes (PNG: {summary['alpha as PNG bytes']})")
        for fill, values in summary["fills"].items():
            click.echo(f"  {fill:36s} colour {values['colour bytes']:7.0f} bytes, opaque {values['PSNR opaque (dB)']:.2f} dB, "
                       f"composited {values['PSNR composited (dB)']:.2f} dB")
    out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Which per-image decoder correction? Least-squares designs compared on the same symbols.

The shipped adaptation (`vqcodec/adapt.py`) scales and shifts each channel of the features the
decoder's last layer reads and offsets each colour: 2 C + 3 numbers (67 for the bundled models).
This script fits richer linear designs the same way (least squares of the decoded picture,
parameters rounded to adapt.STEP, Rice-coded by adapt.to_bytes) on each image's nearest codes
and prints what each gains in PSNR and costs in bytes:

- film: the shipped design (per-channel scale and shift, colour offsets);
- colour-scales: a scale per channel and colour (3 C), the shifts and offsets;
- film+alf: the shipped design plus a 3x3 cross-colour filter on the decoded picture (81 more),
  like the adaptive loop filter of H.266/VVC;
- phase-scales: a scale per channel and output pixel phase of the stride-2 last layer (4 C);
- colour-scales+alf: the per-colour scales and the 3x3 cross-colour filter together;
- film+region-offsets: the shipped design with an offset per colour in each of 4x4 regions (48
  instead of 3), for colour casts that vary across the picture.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/adaptation_designs.py -m vqc-4 --limit 8   # held-out crops
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/adaptation_designs.py -m vqc-4 --data /work/shared/data/kodak --limit 4
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
import torch
import torch.nn.functional as F

from heldout_bench import heldout_files
from vqcodec import adapt
from vqcodec.codec import Codec
from vqcodec.data import list_images
from vqcodec.image import open_image, to_tensor

HERE = Path(__file__).resolve().parent


def psnr(picture: torch.Tensor, x: torch.Tensor) -> float:
    """PSNR of the 8-bit rounded picture against the 8-bit original."""
    error = ((picture.clamp(0, 1) * 255).round() - (x * 255).round()).pow(2).mean()
    return float(10 * torch.log10(255.0**2 / error))


def design_columns(codec: Codec, symbols: list[torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The unadapted picture and each design's columns (every parameter's effect on the picture)."""
    layer, (height, width) = codec.vqvae.last_layer(), x.shape[-2:]
    pixels = height * width
    with torch.no_grad():
        features = codec.vqvae.last_features(symbols)
        scaled = adapt.channel_contributions(layer, features)[..., :height, :width]
        shifted = adapt.channel_contributions(layer, torch.ones_like(features))[..., :height, :width]
        picture = scaled.sum(0, keepdim=True) + layer.bias.view(1, 3, 1, 1) + 0.5
    channels = scaled.shape[0]
    scales = scaled.permute(1, 2, 3, 0).reshape(3 * pixels, channels)
    shifts = shifted.permute(1, 2, 3, 0).reshape(3 * pixels, channels)
    offsets = torch.eye(3).repeat_interleave(pixels, 0)
    colour_scales = torch.zeros(3 * pixels, 3 * channels)
    for k in range(3):
        colour_scales[k * pixels : (k + 1) * pixels, k * channels : (k + 1) * channels] = scaled[:, k].reshape(channels, -1).T
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    phase = ((rows % 2) * 2 + cols % 2).reshape(-1).repeat(3)
    phase_scales = torch.cat([scales * (phase == p).float().unsqueeze(1) for p in range(4)], dim=1)
    taps = F.unfold(F.pad(picture, (1, 1, 1, 1), mode="replicate"), 3)[0].T  # (pixels, 27)
    loop_filter = torch.zeros(3 * pixels, 81)
    for k in range(3):
        loop_filter[k * pixels : (k + 1) * pixels, k * 27 : (k + 1) * 27] = taps
    region = (rows * 4 // height * 4 + cols * 4 // width).reshape(-1)
    region_offsets = torch.zeros(3 * pixels, 48)
    for k in range(3):
        region_offsets[k * pixels : (k + 1) * pixels, k * 16 : (k + 1) * 16] = F.one_hot(region, 16).float()
    return picture, {
        "film": [scales, shifts, offsets],
        "colour-scales": [colour_scales, shifts, offsets],
        "film+alf": [scales, shifts, offsets, loop_filter],
        "phase-scales": [phase_scales, shifts, offsets],
        "colour-scales+alf": [colour_scales, shifts, offsets, loop_filter],
        "film+region-offsets": [scales, shifts, region_offsets],
    }


def fitted(columns: list[torch.Tensor], residual: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Least squares as adapt.fit solves it, rounded to STEP: (the correction, its coded bytes)."""
    design = torch.cat(columns, dim=1).double()
    gram = design.T @ design
    ridge = adapt.RIDGE * float(gram.diagonal().mean()) + 1e-12
    solution = torch.linalg.solve(gram + ridge * torch.eye(gram.shape[0], dtype=torch.float64), design.T @ residual.double())
    values = (solution / adapt.STEP).round().clamp(-adapt.LIMIT, adapt.LIMIT)
    padded = [int(v) for v in values.tolist()] + [0] * ((len(values) - 3) % 2)  # Adaptation wants 2 C + 3
    return (design @ (values * adapt.STEP)).float(), len(adapt.to_bytes(adapt.Adaptation(tuple(padded))))


@click.command()
@click.option("-m", "--model", default="vqc-4", show_default=True)
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Image folder (default: the held-out training crops).")
@click.option("--limit", type=int, default=8, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=HERE / "results" / "adaptation_designs.json",
              show_default=True)
def main(model: str, data: Path | None, limit: int, out: Path) -> None:
    torch.set_num_threads(1)
    codec = Codec.load(model)
    files = (list_images(data) if data else heldout_files())[:limit]
    rows = []
    for path in files:
        x, _ = to_tensor(open_image(path))
        symbols = codec.encode(x, optimize=0, adapt_decoder=False)
        picture, designs = design_columns(codec, symbols.levels, x)
        residual = (x - picture).reshape(-1)
        row = {"image": path.name, "bpp": codec.file_bits(symbols) / (x.shape[-2] * x.shape[-1]), "psnr": psnr(picture, x)}
        for name, columns in designs.items():
            correction, size = fitted(columns, residual)
            row[name] = {"gain_db": psnr(picture + correction.view_as(picture), x) - row["psnr"], "bytes": size}
        rows.append(row)
        print(path.name, f"{row['bpp']:.3f} bpp {row['psnr']:.2f} dB", "  ".join(
            f"{name} {row[name]['gain_db']:+.3f} dB / {row[name]['bytes']} B" for name in designs), flush=True)
    summary = {name: {"gain_db": float(np.mean([r[name]["gain_db"] for r in rows])),
                      "bytes": float(np.mean([r[name]["bytes"] for r in rows]))} for name in designs}
    print("mean", "  ".join(f"{n} {s['gain_db']:+.3f} dB / {s['bytes']:.0f} B" for n, s in summary.items()))
    results = json.loads(out.read_text()) if out.exists() else {}
    results[f"{model} on {data.name if data else 'held-out'} ({len(rows)} images, nearest codes)"] = {
        "mean": summary, "images": rows}
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

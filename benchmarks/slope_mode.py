"""The family coded at a slope (`compress_at_slope`): each image by the model best at that exchange rate.

One point per slope (dB of PSNR a bit per pixel must buy). For every image, each model's point is
estimated from its nearest codes (`rate_control.nearest_code_points`, the function the codec
uses) and the model `best_at_slope` picks compresses it with the default encoder; that file is
exactly what `vqcodec compress --slope` writes (tests/test_rate_control.py checks it), so each
(image, model) file is made once and shared by the slopes that pick it. Encoding time is the
estimates' plus the chosen model's. Results, in the same JSON form as `vqcodec bench`, go to
`results/slope/<set>.json`, with BD-rates against the peers measured on the same images.

The same allocation helps any codec: the peers' own per-image choice among their qualities at
the same slopes is measured too (Pillow's JPEG and WebP at the qualities `vqcodec bench` uses), so
the gain can be told apart from the gain a fixed-quality peer leaves on the table.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/slope_mode.py --set kodak --shard 0/2 &
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/slope_mode.py --set kodak --shard 1/2
    .venv/bin/python benchmarks/slope_mode.py --set kodak            # the rest, then the report
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import time
from pathlib import Path

import click
import numpy as np
import torch
from PIL import Image

from data_paths import KODAK
from heldout_bench import heldout_files
from vqcodec import bdrate, metrics, rd
from vqcodec.codec import cached_codec
from vqcodec.models import list_models
from vqcodec.rate_control import PSNR_CAP_DB, Point, best_at_slope, nearest_code_points

HERE = Path(__file__).resolve().parent
# A geometric grid from "almost every image at the smallest model" to "almost every one at the
# largest" (set once from the models' slopes, not fitted to any image set).
SLOPES = (48.0, 32.0, 24.0, 16.0, 12.0, 9.0, 7.0, 5.0, 3.5, 2.5)
PEER_QUALITIES = {"jpeg": [5, 10, 20, 30, 40, 50, 60, 75, 90, 95], "webp": [1, 5, 10, 20, 30, 40, 50, 60, 75, 90]}


def image_set(name: str) -> list[Path]:
    return sorted(KODAK.glob("*.png")) if name == "kodak" else heldout_files()


def measure_image(path: Path, cache: Path) -> dict:
    """Estimates and the chosen models' files for one image; cached as JSON (resumable, shardable)."""
    out = cache / f"{path.stem}.json"
    if out.exists():
        return json.loads(out.read_text())
    image = rd.load_rgb(path)
    codecs = [cached_codec(name) for name in list_models()]
    start = time.perf_counter()
    points = nearest_code_points(image, codecs)
    estimate_time = time.perf_counter() - start
    chosen = sorted({best_at_slope(points, slope) for slope in SLOPES})
    files = {}
    for index in chosen:
        codec = codecs[index]
        point = rd.OperatingPoint(codec.name, codec.compress, codec.decompress)
        files[codec.name] = dataclasses.asdict(rd.measure(point, image, path.name))
    record = {"points": [dataclasses.asdict(p) for p in points], "estimate_time": estimate_time, "files": files}
    out.write_text(json.dumps(record))
    return record


def slope_results(records: list[dict], images: int) -> dict:
    """One point per slope: means over images of the chosen model's file."""
    keys = {"bpp": "bpp", "psnr-rgb": "psnr", "ms-ssim-rgb": "ms_ssim", "decoding_time": "decoding_time"}
    results: dict[str, list] = {key: [] for key in [*keys, "encoding_time"]}
    picks = []
    points = [[Point(**p) for p in record["points"]] for record in records]
    for slope in SLOPES:
        rows, times = [], []
        for record, own in zip(records, points):
            model = own[best_at_slope(own, slope)].model
            rows.append(record["files"][model])
            times.append(record["estimate_time"] + record["files"][model]["encoding_time"])
        for key, field in keys.items():
            results[key].append(float(np.mean([r[field] for r in rows])))
        results["encoding_time"].append(float(np.mean(times)))
        picks.append({m: sum(r["point"] == m for r in rows) for m in list_models()})
    return {
        "name": "vqcodec-slope",
        "description": "vqcodec, one point per slope (dB per bpp): each image coded by the bundled model best "
                       "at that slope (nearest-code estimates), fast order, default encoder effort, CPU",
        "protocol": f"file: bpp = 8 * bytes / pixels with bytes = whole file, header included; 8-bit RGB "
                    f"metrics; mean of per-image values over {images} images",
        "settings": {"slopes": list(SLOPES), "models": list_models(), "picks": picks},
        "points": [f"slope={s:g}" for s in SLOPES],
        "results": results,
    }


def peer_rows(paths: list[Path], kind: str) -> np.ndarray:
    """(qualities, images, 2) of (bpp, PSNR) for Pillow's JPEG or WebP, as `vqcodec bench` codes them."""
    fmt = {"jpeg": ("JPEG", {}), "webp": ("WEBP", {"method": 4})}[kind]
    out = np.zeros((len(PEER_QUALITIES[kind]), len(paths), 2))
    for j, path in enumerate(paths):
        image = rd.load_rgb(path)
        for i, quality in enumerate(PEER_QUALITIES[kind]):
            buffer = io.BytesIO()
            image.save(buffer, format=fmt[0], quality=quality, **fmt[1])
            decoded = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
            out[i, j] = (metrics.bpp(buffer.tell(), *image.size), metrics.psnr(image, decoded))
    return out


def allocated(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same per-image choice at each slope (`best_at_slope`), among a peer's qualities:
    (mean bpp, mean PSNR) per slope, PSNR capped as the codec caps it."""
    images = [[Point(str(q), bpp, min(psnr, PSNR_CAP_DB)) for q, (bpp, psnr) in enumerate(column)]
              for column in rows.transpose(1, 0, 2)]
    chosen = [[own[best_at_slope(own, slope)] for own in images] for slope in SLOPES]
    return (np.array([np.mean([p.bpp for p in row]) for row in chosen]),
            np.array([np.mean([p.psnr for p in row]) for row in chosen]))


def report(result: dict, paths: list[Path], committed: list[dict]) -> list[str]:
    """BD-rates of the slope curve against the committed results of the same images, then against
    Pillow's JPEG and WebP measured here, at fixed quality and with the same per-image choice."""
    rate, quality = np.array(result["results"]["bpp"]), np.array(result["results"]["psnr-rgb"])
    lines = [f"{p}: {b:.4f} bpp, {q:.2f} dB, MS-SSIM {m:.4f}; picks {picks}" for p, b, q, m, picks in
             zip(result["points"], rate, quality, result["results"]["ms-ssim-rgb"], result["settings"]["picks"])]
    fixed = next((r for r in committed if r["name"] == "vqcodec-fast"), None)
    for other in committed:
        if other["name"] in ("vqcodec-raster", result["name"]):
            continue
        o_rate, o_quality = bdrate.curve(other)
        bd = bdrate.bd_rate(o_rate, o_quality, rate, quality)
        if math.isnan(bd):  # no shared PSNR range (the short CompressAI runs): BD-PSNR alone would mislead
            lines.append(f"vs {other['name']} (committed results): no shared PSNR range")
            continue
        lines.append(f"vs {other['name']} (committed results): BD-rate {bd:+.1f} %, "
                     f"BD-PSNR {bdrate.bd_psnr(o_rate, o_quality, rate, quality):+.2f} dB")
    if fixed is not None:
        f_rate, f_quality = bdrate.curve(fixed)
    for kind in PEER_QUALITIES:
        rows = peer_rows(paths, kind)
        p_rate, p_quality = rows[..., 0].mean(1), rows[..., 1].mean(1)
        a_rate, a_quality = allocated(rows)
        lines.append(f"vs Pillow {kind} (fixed quality): BD-rate {bdrate.bd_rate(p_rate, p_quality, rate, quality):+.1f} %; "
                     f"{kind} with the same per-image choice vs its fixed quality: "
                     f"{bdrate.bd_rate(p_rate, p_quality, a_rate, a_quality):+.1f} %; "
                     f"vqcodec-slope vs that: {bdrate.bd_rate(a_rate, a_quality, rate, quality):+.1f} %")
        if fixed is not None:
            lines.append(f"  fixed models vs Pillow {kind} (fixed quality), these images: "
                         f"{bdrate.bd_rate(p_rate, p_quality, f_rate, f_quality):+.1f} %")
    return lines


@click.command()
@click.option("--set", "which", type=click.Choice(["kodak", "heldout"]), default="kodak", show_default=True)
@click.option("--shard", default="0/1", show_default=True, help="i/n: measure every n-th image from the i-th.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=HERE / "results" / "slope")
def main(which: str, shard: str, out: Path) -> None:
    torch.set_num_threads(1)
    index, count = (int(v) for v in shard.split("/"))
    paths = image_set(which)
    cache = out / f"{which}-images"
    cache.mkdir(parents=True, exist_ok=True)
    for path in paths[index::count]:
        measure_image(path, cache)
        print(f"{which}: {path.name} done", flush=True)
    if count > 1:
        return
    records = [measure_image(path, cache) for path in paths]
    result = slope_results(records, len(paths))
    rd.write_results(result, out / f"{which}.json")
    lines = report(result, paths, rd.read_folder(HERE / "results" / which))
    (out / f"{which}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

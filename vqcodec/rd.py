"""Rate-distortion evaluation: codecs under test, measurements, CompressAI-format JSON.

A codec under test is a name plus operating points; a point is an
encode(image) -> bytes / decode(bytes) -> image pair. Anything that fits that
shape is benchmarked by the same loop: vqcodec models, Pillow's JPEG/WebP/AVIF,
CompressAI models (see `vqcodec.peers`).

    images ──► point.encode ──► bytes ──► point.decode ──► x_hat
                  │ time_s        │ size_bytes  │ time_s      │
                  ▼               ▼             ▼             ▼
               Measurement(bpp, bpp_payload, psnr, ms_ssim, encoding_time, decoding_time)
                  ──► per-point mean over images ──► {"name", "description", "results": {...}}

Two rate protocols are kept side by side:
  * "file":    every byte of the compressed file, header included (what a user stores);
  * "payload": entropy-coded bytes only, as CompressAI's eval_model counts them, so
               numbers sit beside its published Kodak curves.
Both average per-image values (mean of per-image bpp, PSNR, MS-SSIM), as CompressAI does.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from PIL import Image

from vqcodec import metrics
from vqcodec.image import check_image_files

Protocol = Literal["file", "payload"]
RESULT_KEYS = ("bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp"}
PAYLOAD_DIR = "compressai-protocol"  # sub-folder for the payload-protocol JSON files


@dataclass(frozen=True)
class OperatingPoint:
    """One rate point of a codec: how to encode, decode, and count payload bytes."""

    label: str                                   # e.g. "q=75", "vqc-2"
    encode: Callable[[Image.Image], bytes]       # RGB image -> complete compressed file
    decode: Callable[[bytes], Image.Image]       # compressed file -> decoded image
    payload_size: Callable[[bytes], int] = len   # bytes the CompressAI protocol counts


@dataclass(frozen=True)
class CodecUnderTest:
    """A named codec with its operating points and every encoder setting it uses."""

    name: str
    description: str
    points: tuple[OperatingPoint, ...]
    settings: dict[str, Any] = field(default_factory=dict)
    # Point at an arbitrary integer quality, for matching bpp in the visual sheet.
    make_point: Callable[[int], OperatingPoint] | None = None


@dataclass(frozen=True)
class Measurement:
    """One image coded at one operating point."""

    image: str
    point: str
    size_bytes: int
    payload_bytes: int
    bpp: float
    bpp_payload: float
    psnr: float
    ms_ssim: float      # nan when the image is too small for MS-SSIM
    encoding_time: float
    decoding_time: float


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name."""
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images in {folder}")
    return check_image_files(files)


def load_rgb(path: Path) -> Image.Image:
    """8-bit RGB image, fully loaded (so decode timing never includes input I/O)."""
    with Image.open(path) as im:
        return im.convert("RGB")


def measure(point: OperatingPoint, x: Image.Image, name: str) -> Measurement:
    """Encode, decode and score one image at one point."""
    start = time.perf_counter()
    data = point.encode(x)
    encoding_time = time.perf_counter() - start
    start = time.perf_counter()
    x_hat = point.decode(data)
    decoding_time = time.perf_counter() - start
    if x_hat.size != x.size:
        raise ValueError(f"{point.label}: decoded size {x_hat.size} != input size {x.size} for {name}")
    try:
        ms_ssim = metrics.ms_ssim(x, x_hat)
    except ValueError:  # image smaller than the MS-SSIM pyramid
        ms_ssim = math.nan
    payload = point.payload_size(data)
    return Measurement(
        image=name, point=point.label, size_bytes=len(data), payload_bytes=payload,
        bpp=metrics.bpp(len(data), *x.size), bpp_payload=metrics.bpp(payload, *x.size),
        psnr=metrics.psnr(x, x_hat), ms_ssim=ms_ssim,
        encoding_time=encoding_time, decoding_time=decoding_time,
    )


def evaluate(codec: CodecUnderTest, images: Sequence[Path], *, progress: bool = True) -> list[Measurement]:
    """Every image at every operating point, with a tqdm bar over (point, image) pairs."""
    from tqdm import tqdm

    loaded = [(path.name, load_rgb(path)) for path in images]
    if loaded and codec.points:  # untimed warm-up: lazy plugin/model set-up is not coding time
        codec.points[0].decode(codec.points[0].encode(loaded[0][1]))
    bar = tqdm(total=len(codec.points) * len(loaded), desc=codec.name, unit="img", disable=not progress)
    out = []
    for point in codec.points:
        for name, x in loaded:
            out.append(measure(point, x, name))
            bar.update()
    bar.close()
    return out


def _mean(values: list[float]) -> float | None:
    """Mean, or None (JSON null) when any value is missing: a partial mean would mislead."""
    return None if any(math.isnan(v) for v in values) else sum(values) / len(values)


def summarize(codec: CodecUnderTest, measurements: Sequence[Measurement], protocol: Protocol = "file") -> dict:
    """CompressAI results dict: per-point means of per-image values, points in codec order."""
    results: dict[str, list] = {key: [] for key in RESULT_KEYS}
    for point in codec.points:
        rows = [m for m in measurements if m.point == point.label]
        if not rows:
            continue
        results["bpp"].append(_mean([m.bpp if protocol == "file" else m.bpp_payload for m in rows]))
        results["psnr-rgb"].append(_mean([m.psnr for m in rows]))
        results["ms-ssim-rgb"].append(_mean([m.ms_ssim for m in rows]))
        results["encoding_time"].append(_mean([m.encoding_time for m in rows]))
        results["decoding_time"].append(_mean([m.decoding_time for m in rows]))
    rate = "whole file, header included" if protocol == "file" else "entropy-coded payload only (CompressAI protocol)"
    return {
        "name": codec.name,
        "description": codec.description,
        "protocol": f"{protocol}: bpp = 8 * bytes / pixels with bytes = {rate}; 8-bit RGB metrics; "
                    f"mean of per-image values over {len({m.image for m in measurements})} images",
        "settings": codec.settings,
        "points": [p.label for p in codec.points],
        "results": results,
    }


def check_results(data: dict) -> None:
    """Raise ValueError unless `data` follows CompressAI's results JSON schema."""
    if not isinstance(data.get("name"), str) or not isinstance(data.get("description", ""), str):
        raise ValueError("results JSON needs a string 'name' and 'description'")
    results = data.get("results")
    if not isinstance(results, dict) or "bpp" not in results:
        raise ValueError(f"{data.get('name')}: 'results' must be a dict with a 'bpp' list")
    n = len(results["bpp"])
    for key, values in results.items():
        if not isinstance(values, list) or len(values) != n:
            raise ValueError(f"{data['name']}: results[{key!r}] must be a list of {n} values")


def write_results(data: dict, path: Path) -> Path:
    check_results(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def merge_results(base: dict, update: dict) -> dict:
    """`base` with the points `update` measured replaced (or added): re-run some models of a curve.

    Both must be the same codec under the same protocol and settings (bar the model list and the
    weights digests, which are merged); every value of a re-run point, times included, comes from
    `update`. Raises ValueError when they cannot share one curve.
    """
    check_results(base)
    check_results(update)
    for key in ("name", "protocol"):
        if base.get(key) != update.get(key):
            raise ValueError(f"cannot merge results with different {key}s: {base.get(key)!r} and {update.get(key)!r}")
    if "points" not in base or "points" not in update:
        raise ValueError(f"{base['name']}: merging needs each point's label ('points')")
    merged = json.loads(json.dumps(base))  # a deep copy that stays JSON
    merged["settings"] = _merged_settings(base.get("settings", {}), update.get("settings", {}), base["name"])
    merged["description"] = update.get("description", base.get("description", ""))
    for j, label in enumerate(update["points"]):
        if label not in merged["points"]:
            merged["points"].append(label)
            for values in merged["results"].values():
                values.append(None)
        i = merged["points"].index(label)
        for key, values in update["results"].items():
            merged["results"].setdefault(key, [None] * len(merged["points"]))[i] = values[j]
    check_results(merged)
    return merged


def _merged_settings(base: dict, update: dict, name: str) -> dict:
    """Settings of a merged curve: lists and dicts (models, digests) united, everything else equal."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key, {}), dict):
            merged[key] = {**base.get(key, {}), **value}
        elif isinstance(value, list) and isinstance(base.get(key, []), list):
            merged[key] = list(base.get(key, [])) + [v for v in value if v not in base.get(key, [])]
        elif key in base and base[key] != value:
            raise ValueError(f"{name}: cannot merge results measured with {key}={base[key]!r} and {value!r}")
        else:
            merged[key] = value
    return merged


def read_results(path: Path) -> dict:
    """Load a results JSON; older files' "ms-ssim" key is read as "ms-ssim-rgb"."""
    data = json.loads(Path(path).read_text())
    check_results(data)
    results = data["results"]
    if "ms-ssim-rgb" not in results and "ms-ssim" in results:
        results["ms-ssim-rgb"] = results.pop("ms-ssim")
    return data


def read_folder(folder: Path) -> list[dict]:
    """Every results JSON directly in `folder`, sorted by name."""
    return [read_results(p) for p in sorted(Path(folder).glob("*.json"))]


def save_codec_results(codec: CodecUnderTest, measurements: Sequence[Measurement], out_dir: Path, *,
                       merge: bool = False) -> list[Path]:
    """Write `<name>.json` (file protocol) and `compressai-protocol/<name>.json` (payload).

    merge: the measured points replace theirs in existing files (`merge_results`), others stay.
    """
    paths = []
    for protocol, folder in (("file", out_dir), ("payload", out_dir / PAYLOAD_DIR)):
        path, data = folder / f"{codec.name}.json", summarize(codec, measurements, protocol)
        if merge and path.exists():
            data = merge_results(read_results(path), data)
        paths.append(write_results(data, path))
    return paths


def bench(
    data_dir: Path,
    specs: Sequence[str],
    out_dir: Path,
    *,
    anchor: str = "jpeg",
    limit: int | None = None,
    weights_dir: Path | None = None,
    reference_dir: Path | None = None,
    progress: bool = True,
    threads: int = 1,
    models: Sequence[str] | None = None,
) -> list[str]:
    """Benchmark the codecs named by `specs` on `data_dir`; write JSON, BD tables, plots.

    models: the vqcodec models the vqcodec curves run (names or weights files; default: bundled).

    Returns human-readable notes (e.g. a peer skipped because Pillow lacks AVIF).
    Tables and plots cover every results JSON in `out_dir`, so codecs can be
    re-run one at a time.
    """
    import torch

    from vqcodec import peers  # peers builds on this module's types, so import late

    torch.set_num_threads(threads)  # timings are single-thread unless asked otherwise
    images = list_images(data_dir)[:limit]
    codecs, notes = peers.codecs_from_specs(specs, weights_dir=weights_dir, models=models)
    for codec in codecs:
        save_codec_results(codec, evaluate(codec, images, progress=progress), out_dir)
    notes += report(out_dir, anchor=anchor, reference_dir=reference_dir, notes=notes)
    return notes


def report(out_dir: Path, *, anchor: str, reference_dir: Path | None = None, notes: Sequence[str] = ()) -> list[str]:
    """BD-rate tables (bd_rate.md) and RD plots from the results JSON files in `out_dir`."""
    from vqcodec import bdrate, plots

    measured = read_folder(out_dir)
    payload = read_folder(out_dir / PAYLOAD_DIR) if (out_dir / PAYLOAD_DIR).is_dir() else []
    references = read_folder(reference_dir) if reference_dir else []
    ours = [r["name"] for r in measured if r["name"].startswith("vqcodec")]  # judged point by point
    text = bdrate.report_markdown(measured, payload, references, anchor=anchor, notes=notes, detail=ours)
    (out_dir / "bd_rate.md").write_text(text)
    plots.rd_plots(measured, references, out_dir)
    return [] if any(r["name"] == anchor for r in measured) else [f"anchor {anchor!r} not among the results"]

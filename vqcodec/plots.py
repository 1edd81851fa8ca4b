"""RD plots and the visual comparison sheet (matplotlib, Agg backend, PNG + SVG).

Measured curves are solid with markers; published reference curves (CompressAI's
protocol, `benchmarks/reference/`) are thin dashed lines, so the eye never
mistakes one for the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: benchmarks run on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from vqcodec import metrics  # noqa: E402
from vqcodec.bdrate import curve  # noqa: E402
from vqcodec.rd import CodecUnderTest, OperatingPoint  # noqa: E402

PLOTS = {"psnr-rgb": ("rd-psnr", "PSNR RGB (dB)"), "ms-ssim-db": ("rd-ms-ssim", "MS-SSIM RGB (dB)")}


def _save(fig: plt.Figure, base: Path, suffixes: Sequence[str] = (".png", ".svg")) -> list[Path]:
    paths = [base.with_suffix(s) for s in suffixes]
    for path in paths:
        fig.savefig(path, dpi=150 if path.suffix == ".png" else None, bbox_inches="tight")
    plt.close(fig)
    return paths


def rd_plot(measured: Sequence[dict], references: Sequence[dict], quality: str, base: Path,
            max_bpp: float = 2.0) -> list[Path]:
    """One quality-vs-bpp figure with every measured and reference curve."""
    fig, ax = plt.subplots(figsize=(8, 6))
    for result in measured:
        bpp, q = curve(result, quality)  # type: ignore[arg-type]
        ax.plot(bpp, q, marker="o", markersize=3.5, linewidth=1.5, label=result["name"])
    ref_colors = plt.get_cmap("tab20b")  # a second palette: a reference never shares a measured curve's colour
    for i, result in enumerate(references):
        bpp, q = curve(result, quality)  # type: ignore[arg-type]
        ax.plot(bpp, q, linestyle="--", linewidth=1.0, color=ref_colors((i * 4 + i // 5) % 20),
                label=f"{result['name']} (published)")
    ax.set_xlim(0, max_bpp)
    ax.set_xlabel("bits per pixel")
    ax.set_ylabel(PLOTS[quality][1])
    ax.set_title(f"{PLOTS[quality][1]} vs bpp (solid: measured, whole-file rate; dashed: published)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: curves stay visible
    return _save(fig, base)


def rd_plots(measured: Sequence[dict], references: Sequence[dict], out_dir: Path) -> list[Path]:
    """PSNR–bpp and MS-SSIM(dB)–bpp figures into `out_dir`, as PNG and SVG."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for quality, (stem, _) in PLOTS.items():
        paths += rd_plot(measured, references, quality, out_dir / stem)
    return paths


@dataclass(frozen=True)
class Panel:
    """One codec's reconstruction of the sheet image, with its whole-image scores."""

    codec: str
    point: str
    bpp: float
    psnr: float
    image: Image.Image


def _panel(codec: CodecUnderTest, point: OperatingPoint, x: Image.Image) -> Panel:
    data = point.encode(x)
    x_hat = point.decode(data)
    return Panel(codec.name, point.label, metrics.bpp(len(data), *x.size), metrics.psnr(x, x_hat), x_hat)


def matched_panel(codec: CodecUnderTest, x: Image.Image, target_bpp: float) -> Panel:
    """The codec's point whose bpp on `x` is closest to `target_bpp`.

    Codecs with an integer quality knob (`make_point`) are bisected over 1..100,
    assuming bpp grows with quality; the others pick among their own points.
    """
    if codec.make_point is None:
        panels = [_panel(codec, p, x) for p in codec.points]
        return min(panels, key=lambda p: abs(p.bpp - target_bpp))
    lo, hi = 1, 100
    tried: dict[int, Panel] = {}
    while lo <= hi:
        q = (lo + hi) // 2
        tried[q] = _panel(codec, codec.make_point(q), x)
        lo, hi = (q + 1, hi) if tried[q].bpp < target_bpp else (lo, q - 1)
    return min(tried.values(), key=lambda p: abs(p.bpp - target_bpp))


def _crop(image: Image.Image, box: tuple[int, int, int, int], zoom: int) -> Image.Image:
    left, top, width, height = box
    part = image.crop((left, top, left + width, top + height))
    return part.resize((width * zoom, height * zoom), Image.Resampling.NEAREST)  # show pixels, not a blur


def comparison_sheet(image_path: Path, codecs: Sequence[CodecUnderTest], target_bpp: float, base: Path, *,
                     box: tuple[int, int, int, int] | None = None, zoom: int = 2) -> list[Panel]:
    """Crops of one image coded by each codec at (nearly) the same bpp; writes `base`.png.

    box is (left, top, width, height) in pixels of the original image, by default
    a centred 192 px square. Titles give whole-image bpp and PSNR, so the match is
    checkable.
    """
    with Image.open(image_path) as im:
        x = im.convert("RGB")
    if box is None:
        side = min(192, *x.size)
        box = ((x.size[0] - side) // 2, (x.size[1] - side) // 2, side, side)
    panels = [matched_panel(c, x, target_bpp) for c in codecs]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(3.2 * (len(panels) + 1), 3.8))
    axes[0].imshow(_crop(x, box, zoom))
    axes[0].set_title(f"original\n{image_path.name}", fontsize=8)
    for ax, p in zip(axes[1:], panels):
        ax.imshow(_crop(p.image, box, zoom))
        ax.set_title(f"{p.codec} {p.point}\n{p.bpp:.3f} bpp, {p.psnr:.2f} dB "
                     f"(MS-SSIM {metrics.ms_ssim(x, p.image):.4f})", fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(f"Matched rate ≈ {target_bpp:.3f} bpp (whole-image numbers; crop {box}, zoom {zoom}x)", fontsize=9)
    base.parent.mkdir(parents=True, exist_ok=True)
    _save(fig, base, (".png",))  # pixels, not vectors: an SVG would only wrap the same PNG crops
    return panels

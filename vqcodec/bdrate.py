"""Bjøntegaard deltas between RD curves, and the markdown tables of the benchmark.

BD-rate: average rate difference (%) at equal quality; BD-PSNR: average PSNR
difference (dB) at equal rate. Both interpolate with piecewise cubic Hermite
polynomials (PCHIP) in log-rate, via the `bjontegaard` package, and integrate
over the overlap of the two curves only; a table shows that overlap, because a
BD number over a sliver of shared range means little.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal, Sequence

import numpy as np

from vqcodec.metrics import ms_ssim_db

Quality = Literal["psnr-rgb", "ms-ssim-db"]


def curve(result: dict, quality: Quality = "psnr-rgb") -> tuple[np.ndarray, np.ndarray]:
    """(bpp, quality) arrays of a CompressAI results dict, sorted by bpp, missing points dropped."""
    res = result["results"]
    if quality == "ms-ssim-db":
        values = [None if v is None else ms_ssim_db(v) for v in res.get("ms-ssim-rgb", [None] * len(res["bpp"]))]
    else:
        values = res[quality]
    pairs = sorted((r, q) for r, q in zip(res["bpp"], values) if r is not None and q is not None and r > 0)
    return np.array([p[0] for p in pairs], float), np.array([p[1] for p in pairs], float)


def _monotone(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort by x and drop repeated x values: PCHIP needs a strictly increasing abscissa."""
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    keep = np.concatenate([[True], np.diff(x) > 0])[: len(x)]  # (an empty curve stays empty)
    return x[keep], y[keep]


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Shared fraction of the union of two ranges (0 when disjoint)."""
    if len(a) == 0 or len(b) == 0:
        return 0.0
    union = max(a.max(), b.max()) - min(a.min(), b.min())
    shared = min(a.max(), b.max()) - max(a.min(), b.min())
    return max(shared, 0.0) / union if union > 0 else 1.0


def bd_rate(rate_anchor, dist_anchor, rate_test, dist_test) -> float:
    """BD-rate in percent (negative = test needs fewer bits); nan without overlap."""
    import bjontegaard

    d_a, r_a = _monotone(np.asarray(dist_anchor, float), np.asarray(rate_anchor, float))
    d_t, r_t = _monotone(np.asarray(dist_test, float), np.asarray(rate_test, float))
    if min(len(d_a), len(d_t)) < 2 or overlap(d_a, d_t) == 0:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # overlap is reported in the table instead
        return float(bjontegaard.bd_rate(r_a, d_a, r_t, d_t, method="pchip",
                                         require_matching_points=False, min_overlap=0))


def bd_psnr(rate_anchor, dist_anchor, rate_test, dist_test) -> float:
    """BD-PSNR (or BD of any quality) in its own unit, at equal log-rate; nan without overlap."""
    import bjontegaard

    r_a, d_a = _monotone(np.asarray(rate_anchor, float), np.asarray(dist_anchor, float))
    r_t, d_t = _monotone(np.asarray(rate_test, float), np.asarray(dist_test, float))
    if min(len(r_a), len(r_t)) < 2 or overlap(np.log(r_a), np.log(r_t)) == 0:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(bjontegaard.bd_psnr(r_a, d_a, r_t, d_t, method="pchip",
                                         require_matching_points=False, min_overlap=0))


def _fmt(value: float, unit: str) -> str:
    return "n/a" if math.isnan(value) else f"{value:+.2f}{unit}"


def table_row(anchor: dict, test: dict) -> str:
    """One markdown row: BD-rate and BD-PSNR on PSNR, BD-rate on MS-SSIM (dB), overlap."""
    ra, pa = curve(anchor)
    rt, pt = curve(test)
    sa, ma = curve(anchor, "ms-ssim-db")
    st, mt = curve(test, "ms-ssim-db")
    return (f"| {test['name']} | {len(rt)} | {rt.min():.3f}–{rt.max():.3f} | {_fmt(bd_rate(ra, pa, rt, pt), ' %')} "
            f"| {_fmt(bd_psnr(ra, pa, rt, pt), ' dB')} | {_fmt(bd_rate(sa, ma, st, mt), ' %')} "
            f"| {overlap(pa, pt) * 100:.0f} % |")


def _named(results: Sequence[dict], name: str) -> dict | None:
    """The curve called `name` in `results`, None when there is none."""
    return next((r for r in results if r["name"] == name), None)


def _no_anchor(anchor_name: str) -> str:
    return f"_No curve named {anchor_name!r}: no table._\n"


def table(results: Sequence[dict], anchor_name: str) -> str:
    """Markdown table of every curve in `results` against the one named `anchor_name`."""
    anchor = _named(results, anchor_name)
    if anchor is None:
        return _no_anchor(anchor_name)
    lines = ["| codec | points | bpp range | BD-rate (PSNR) | BD-PSNR | BD-rate (MS-SSIM dB) | PSNR overlap |",
             "|---|---:|---|---:|---:|---:|---:|"]
    lines += [table_row(anchor, r) for r in results if len(curve(r)[0])]
    return "\n".join(lines) + "\n"


def anchor_psnr_at(anchor: dict, bpp: float) -> float | None:
    """The anchor's PSNR at this rate, linear in log-rate between its points; None outside its range."""
    rate, psnr = curve(anchor)
    if len(rate) == 0 or not rate.min() <= bpp <= rate.max():
        return None
    return float(np.interp(math.log(bpp), np.log(rate), psnr))


def anchor_bpp_at(anchor: dict, psnr: float) -> float | None:
    """The anchor's rate for this PSNR, linear in log-rate between its points; None outside its range."""
    quality, rate = _monotone(*curve(anchor)[::-1])
    if len(rate) == 0 or not quality.min() <= psnr <= quality.max():
        return None
    return float(math.exp(np.interp(psnr, quality, np.log(rate))))


def point_rows(anchor: dict, test: dict) -> list[str]:
    """One markdown row per point of `test`: the anchor at the same rate and at the same PSNR.

    BD numbers average over a range; a codec family is judged point by point too, because one
    member that loses to the anchor is hidden by the others' gains in an average.
    """
    res = test["results"]
    labels = test.get("points") or [str(i + 1) for i in range(len(res["bpp"]))]
    rows = []
    for label, bpp, psnr in zip(labels, res["bpp"], res["psnr-rgb"]):
        if bpp is None or psnr is None:
            continue
        same_rate, same_psnr = anchor_psnr_at(anchor, bpp), anchor_bpp_at(anchor, psnr)
        delta_db = _fmt(psnr - same_rate, " dB") if same_rate is not None else "outside"
        delta_rate = _fmt((bpp / same_psnr - 1) * 100, " %") if same_psnr is not None else "outside"
        rows.append(f"| {test['name']} | {label} | {bpp:.4f} | {psnr:.2f} | {delta_db} | {delta_rate} | {_verdict(bpp, psnr, same_rate, same_psnr)} |")
    return rows


def _verdict(bpp: float, psnr: float, anchor_psnr: float | None, anchor_bpp: float | None) -> str:
    """Better or worse than the anchor: by PSNR at the same rate where the anchor reaches it, else by rate."""
    if anchor_psnr is not None:
        return "better" if psnr > anchor_psnr else "worse"
    if anchor_bpp is not None:
        return "better" if bpp < anchor_bpp else "worse"
    return "outside the anchor's range"


def point_table(results: Sequence[dict], anchor_name: str, names: Sequence[str]) -> str:
    """Markdown table of each point of the curves in `names` against the curve named `anchor_name`."""
    anchor = _named(results, anchor_name)
    if anchor is None:
        return _no_anchor(anchor_name)
    lines = [f"| codec | point | bpp | PSNR (dB) | PSNR vs {anchor_name} at this bpp "
             f"| bpp vs {anchor_name} at this PSNR | verdict |",
             "|---|---|---:|---:|---:|---:|---|"]
    for result in results:
        if result["name"] in names:
            lines += point_rows(anchor, result)
    return "\n".join(lines) + "\n"


def report_markdown(measured: Sequence[dict], payload: Sequence[dict], references: Sequence[dict], *,
                    anchor: str, notes: Sequence[str] = (), detail: Sequence[str] = ()) -> str:
    """The two BD tables (file protocol; CompressAI protocol with published curves) as markdown.

    detail: names of measured curves whose every point is also compared with the anchor's curve.
    """
    parts = [
        f"# BD-rate vs {anchor}\n",
        "Bjøntegaard deltas, PCHIP (piecewise cubic) interpolation in log-rate, `bjontegaard` package; "
        "negative BD-rate = fewer bits than the anchor for the same quality. Quality metrics on 8-bit RGB, "
        "per-point means of per-image values. PSNR overlap = shared share of the two PSNR ranges; "
        "numbers over a small overlap are extrapolation-free but cover only that range.\n",
        "## Protocol 1: whole file (header included)\n",
        "bpp = 8 × file bytes / pixels — what a user stores.\n",
        table(measured, anchor),
    ]
    if detail:
        parts += [
            f"### Point by point against {anchor} (whole file)\n",
            f"Each point against {anchor}'s curve, interpolated linearly in log-rate between its points: "
            "its PSNR at the same bpp, and the bpp change at the same PSNR (negative = fewer bits). "
            f"'outside' = beyond {anchor}'s measured range.\n",
            point_table(measured, anchor, detail),
        ]
    if payload:
        parts += [
            "## Protocol 2: CompressAI (payload bytes only)\n",
            "bpp = 8 × entropy-coded bytes / pixels, as CompressAI's `eval_model` counts them; "
            "published CompressAI curves (8-bit decoded, `benchmarks/reference/`) are listed beside ours. "
            "For Pillow peers payload = file.\n",
            table(list(payload) + list(references), anchor),
        ]
    if notes:
        parts += ["## Notes\n", "\n".join(f"- {n}" for n in notes) + "\n"]
    return "\n".join(parts)

"""CPU speed and memory per Kodak image: vqcodec (each decode order) and its peers.

    .venv/bin/python benchmarks/speed.py                       # all codecs, 24 images, 1 thread
    .venv/bin/python benchmarks/speed.py --codec jpeg --limit 4

Every (codec, phase) runs in a fresh spawned process, so memory numbers are not
polluted by other codecs or by allocator caches: encode runs in one process and
writes the bitstreams, decode runs in another and reads them. Reported per image:
wall time and peak resident memory sampled every 2 ms during the call; per run:
RSS after loading the codec (baseline) and the process's peak RSS (ru_maxrss).
Writes results/speed.json and results/speed.md; codecs not re-run keep their earlier rows.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import resource
import statistics
import tempfile
import threading
import time
from pathlib import Path

import click

from data_paths import KODAK

ROOT = Path(__file__).parent
PAGE_MIB = os.sysconf("SC_PAGE_SIZE") / 2**20
# (spec, point label): one representative mid-rate point per codec.
DEFAULT_RUNS = (("jpeg", "q=50"), ("webp", "q=50"), ("avif-420-s6", "q=50"), ("avif-444-s2", "q=30"),
                ("compressai:bmshj2018-factorized", "q3"), ("compressai:bmshj2018-hyperprior", "q3"),
                ("vqcodec-fast", None), ("vqcodec-raster", None))


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE_MIB


class PeakRss:
    """Context manager sampling this process's RSS every 2 ms; `.peak` in MiB."""

    def __enter__(self) -> PeakRss:
        self.peak, self._stop = rss_mib(), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss_mib())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mib())


def _point(spec: str, label: str | None, weights: Path):
    from vqcodec import peers

    codecs, notes = peers.codecs_from_specs([spec], weights_dir=weights)
    if not codecs:
        raise RuntimeError("; ".join(notes) or f"{spec}: no codec")
    points = codecs[0].points
    if label is None:  # vqcodec: the middle bundled model
        return points[len(points) // 2]
    return next(p for p in points if p.label == label)


def worker(spec: str, label: str | None, phase: str, images: list[str], tmp: str, weights: str,
           threads: int, queue: mp.Queue) -> None:
    """One phase of one codec in a fresh process; puts a result dict (or an error) on `queue`."""
    try:
        import torch

        from vqcodec import rd

        torch.set_num_threads(threads)
        point = _point(spec, label, Path(weights))
        loaded = [(Path(p).name, rd.load_rgb(Path(p))) for p in images]
        point.decode(point.encode(loaded[0][1]))  # warm-up, untimed
        baseline, rows = rss_mib(), []
        for name, x in loaded:
            stream = Path(tmp) / f"{name}.bin"
            data = stream.read_bytes() if phase == "decode" else None
            with PeakRss() as mem:
                start = time.perf_counter()
                result = point.decode(data) if phase == "decode" else point.encode(x)
                seconds = time.perf_counter() - start
            if phase == "encode":
                stream.write_bytes(result)
            rows.append({"image": name, "time_s": seconds, "peak_rss_mib": mem.peak,
                         "bpp": 8 * stream.stat().st_size / (x.size[0] * x.size[1])})
        queue.put({"point": point.label, "baseline_rss_mib": baseline,
                   "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "images": rows})
    except Exception as err:  # reported in the results, not a crash of the whole benchmark
        queue.put({"error": f"{type(err).__name__}: {err}"})


def run_phase(spec: str, label: str | None, phase: str, images: list[Path], tmp: Path, weights: Path,
              threads: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=worker, args=(spec, label, phase, [str(p) for p in images], str(tmp),
                                            str(weights), threads, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def summarize(spec: str, encode: dict, decode: dict) -> dict:
    if "error" in encode or "error" in decode:
        return {"codec": spec, "error": encode.get("error") or decode.get("error")}
    row: dict = {"codec": spec, "point": encode["point"], "n_images": len(encode["images"]),
                 "bpp_mean": statistics.mean(r["bpp"] for r in encode["images"])}
    for phase, res in (("encode", encode), ("decode", decode)):
        times = [r["time_s"] for r in res["images"]]
        row[phase] = {"time_s_mean": statistics.mean(times), "time_s_median": statistics.median(times),
                      "peak_rss_mib_max": max(r["peak_rss_mib"] for r in res["images"]),
                      "baseline_rss_mib": res["baseline_rss_mib"], "max_rss_mib": res["max_rss_mib"],
                      "images": res["images"]}
    return row


def markdown(rows: list[dict], threads: int) -> str:
    lines = [f"# CPU speed per Kodak image ({threads} thread(s), {os.cpu_count()} cores shared with other jobs)\n",
             "Mean / median wall seconds per image; memory = peak RSS sampled during the call minus the RSS after "
             "loading the codec (fresh process per codec and phase).\n",
             "| codec | point | images | bpp | encode s (mean / median) | decode s (mean / median) | encode +MiB "
             "| decode +MiB |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['codec']} | – | – | – | {r['error']} | | | |")
            continue
        e, d = r["encode"], r["decode"]
        lines.append(f"| {r['codec']} | {r['point']} | {r['n_images']} | {r['bpp_mean']:.3f} "
                     f"| {e['time_s_mean']:.3f} / {e['time_s_median']:.3f} | {d['time_s_mean']:.3f} / {d['time_s_median']:.3f} "
                     f"| {e['peak_rss_mib_max'] - e['baseline_rss_mib']:.0f} | {d['peak_rss_mib_max'] - d['baseline_rss_mib']:.0f} |")
    return "\n".join(lines) + "\n"


def merge(path: Path, rows: list[dict]) -> list[dict]:
    """Earlier runs from `path` with the codecs just measured replaced (or appended)."""
    old = json.loads(path.read_text())["runs"] if path.is_file() else []
    fresh = {r["codec"]: r for r in rows}
    merged = [fresh.pop(r["codec"], r) for r in old]
    return merged + list(fresh.values())


@click.command()
@click.option("--codec", "codecs", multiple=True, help="Spec[=POINT], e.g. jpeg=q=75; default: a mid point of each.")
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), default=KODAK)
@click.option("--limit", type=int, default=24, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True)
@click.option("--weights", type=click.Path(path_type=Path), default=ROOT / "weights")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=ROOT / "results")
def main(codecs: tuple[str, ...], data: Path, limit: int, threads: int, weights: Path, out: Path) -> None:
    from vqcodec import rd

    runs = [tuple(c.split("=", 1)) if "=" in c else (c, None) for c in codecs] or list(DEFAULT_RUNS)
    images = rd.list_images(data)[:limit]
    rows = []
    for spec, label in runs:
        with tempfile.TemporaryDirectory() as tmp:
            encode = run_phase(spec, label, "encode", images, Path(tmp), weights, threads)
            decode = run_phase(spec, label, "decode", images, Path(tmp), weights, threads) if "error" not in encode else encode
        rows.append(summarize(spec, encode, decode))
        click.echo(f"{spec}: {rows[-1].get('error') or 'done'}")
    rows = merge(out / "speed.json", rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.json").write_text(json.dumps({"threads": threads, "runs": rows}, indent=1))
    (out / "speed.md").write_text(markdown(rows, threads))
    click.echo((out / "speed.md").read_text())


if __name__ == "__main__":
    main()

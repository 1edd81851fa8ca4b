"""Kodak rate-distortion benchmark: results/kodak/*.json, bd_rate.md, RD plots, visual sheet.

    .venv/bin/python benchmarks/rd_kodak.py                    # every codec, then tables/plots/sheet
    .venv/bin/python benchmarks/rd_kodak.py --codec vqcodec    # only vqcodec, fast order (~25 min)
    .venv/bin/python benchmarks/rd_kodak.py --codec vqcodec-raster  # exact order (~75 min)
    .venv/bin/python benchmarks/rd_kodak.py --report-only      # tables and plots from existing JSON
    .venv/bin/python benchmarks/rd_kodak.py --codec vqcodec -m vqc-3 -m vqc-4  # re-run two models' points

With --model, the vqcodec curves run only those models and their points replace the same models'
points in the existing JSON (`rd.merge_results`); the other points stay as they were. Two such runs
may go side by side (one per core): each merges under a lock when it ends.

Each codec's JSON is rewritten only when that codec runs; tables, plots and the
sheet always cover every JSON in the output folder, so codecs can be re-run one
at a time (vqcodec's models arrive later than the peers).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click
import torch

from vqcodec import peers, plots, rd
from vqcodec.errors import VQCodecError

from data_paths import KODAK
from folder_lock import locked

ROOT = Path(__file__).parent
OUT = ROOT / "results" / "kodak"
SHEET_PEERS = ("jpeg", "webp", "avif")
SHEET_BOX = (400, 112, 192, 192)  # kodim23: the red parrot's eye, beak edge and feathers


def run_codecs(specs: list[str], images: list[Path], out: Path, weights: Path,
               models: Sequence[str] = ()) -> list[str]:
    """Evaluate each spec separately, so one unavailable codec does not stop the others.

    models: re-run only these vqcodec models and merge their points into the existing JSON.
    """
    notes: list[str] = []
    for spec in specs:
        try:
            codecs, more = peers.codecs_from_specs([spec], weights_dir=weights, models=list(models) or None)
        except (ImportError, FileNotFoundError, VQCodecError) as err:  # e.g. vqcodec models not written yet
            notes.append(f"{spec}: skipped ({err})")
            continue
        notes += more
        for codec in codecs:
            measurements = rd.evaluate(codec, images)
            if models and codec.name.startswith("vqcodec"):
                notes += merge_into(out, codec, measurements)
            else:
                rd.save_codec_results(codec, measurements, out)
    return notes


def merge_into(out: Path, codec: rd.CodecUnderTest, measurements: list[rd.Measurement]) -> list[str]:
    """Replace `codec`'s re-run points in out's JSON (both protocols), under a lock for side-by-side runs."""
    with locked(out):
        paths = rd.save_codec_results(codec, measurements, out, merge=True)
    return [f"{path}: points {[point.label for point in codec.points]} re-measured" for path in paths]


def sheet(image: Path, out: Path, target_bpp: float) -> list[str]:
    """Visual comparison at matched bpp: vqcodec (when available) sets the target rate."""
    codecs, notes = peers.codecs_from_specs(SHEET_PEERS)
    try:
        vq, _ = peers.codecs_from_specs(["vqcodec"])
    except (ImportError, FileNotFoundError, VQCodecError) as err:
        vq, notes = [], notes + [f"sheet without vqcodec ({err})"]
    if vq:
        panel = plots.matched_panel(vq[0], rd.load_rgb(image), target_bpp)
        target_bpp = panel.bpp  # peers match vqcodec's real rate on this image
    panels = plots.comparison_sheet(image, vq + codecs, target_bpp, out / "visual-sheet",
                                    box=SHEET_BOX if image.name == "kodim23.png" else None)
    return notes + [f"sheet: {p.codec} {p.point} {p.bpp:.3f} bpp {p.psnr:.2f} dB" for p in panels]


@click.command()
@click.option("--codec", "codecs", multiple=True, default=("pillow", "compressai", "vqcodec", "vqcodec-raster"), show_default=True,
              help="Codec specs to (re)run, as for `vqcodec bench --codec`.")
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), default=KODAK,
              show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=OUT, show_default=True)
@click.option("--weights", type=click.Path(path_type=Path), default=ROOT / "weights", show_default=True)
@click.option("--anchor", default="jpeg", show_default=True)
@click.option("--sheet-image", default="kodim23.png", show_default=True)
@click.option("--sheet-bpp", default=0.25, show_default=True, help="Target rate (vqcodec's nearest point wins).")
@click.option("--report-only", is_flag=True, help="Only rebuild tables, plots and the sheet.")
@click.option("--no-sheet", is_flag=True)
@click.option("-m", "--model", "models", multiple=True,
              help="Re-run only these vqcodec models (repeatable); their points replace theirs in the JSON.")
def main(codecs: tuple[str, ...], data: Path, out: Path, weights: Path, anchor: str, sheet_image: str,
         sheet_bpp: float, report_only: bool, no_sheet: bool, models: tuple[str, ...]) -> None:
    torch.set_num_threads(1)  # single-thread timings, and the machine is shared
    images = rd.list_images(data)
    notes = [] if report_only else run_codecs(list(codecs), images, out, weights, models)
    if not no_sheet:
        notes += sheet(data / sheet_image, out, sheet_bpp)
    notes += rd.report(out, anchor=anchor, reference_dir=ROOT / "reference", notes=notes)
    for note in notes:
        click.echo(note)


if __name__ == "__main__":
    main()

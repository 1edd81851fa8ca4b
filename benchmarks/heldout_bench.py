"""Rate-distortion on photos no bundled model saw: the held-out 5 % of the training folder.

Every training run of the family held out the same 5 % of `shared/data/train` (`val_fraction`
0.05, split seed 0, `vqcodec.data.split_files`), 65 crops of 256 px. This script links those
files into a temporary folder and runs `vqcodec bench` on them, so the family is also measured
beyond Kodak. Two caveats the numbers carry: the crops come from the same sources as the
training crops (in distribution, unlike Kodak), and on 65,536-pixel images Pillow's JPEG header
(~600 bytes of tables, ~0.07 bpp) weighs far more than on Kodak; WebP's and vqcodec's headers are
30-60 bytes.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/heldout_bench.py        # ~45 min on one thread
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/heldout_bench.py -m vqc-1 -m vqc-2   # re-run two models

With --model, only those models' points are measured again and replace theirs in the results
(as `rd_kodak.py -m` does on Kodak); the peers and the other models stay as they were.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tempfile
from pathlib import Path

import click
import torch

from data_paths import TRAIN
from rd_kodak import run_codecs
from vqcodec import rd
from vqcodec.data import list_images, split_files
from vqcodec.train import RunSettings

HERE = Path(__file__).resolve().parent


def heldout_files() -> list[Path]:
    """The training files a run with the default split holds out."""
    defaults = {f.name: f.default for f in dataclasses.fields(RunSettings)}
    return split_files(list_images(TRAIN), defaults["val_fraction"], seed=defaults["split_seed"])[1]


def link_heldout(folder: Path) -> int:
    """Symlink the held-out files (`heldout_files`) into `folder`; returns how many."""
    held_out = heldout_files()
    for path in held_out:
        (folder / path.name).symlink_to(path)
    return len(held_out)


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=HERE / "results" / "heldout",
              show_default=True)
@click.option("--codec", default="vqcodec,pillow", show_default=True, help="As for `vqcodec bench --codec`.")
@click.option("-m", "--model", "models", multiple=True,
              help="Re-run only these vqcodec models (repeatable); their points replace theirs in the JSON.")
def main(out: Path, codec: str, models: tuple[str, ...]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        count = link_heldout(Path(tmp))
        print(f"{count} held-out training photos -> {out}", flush=True)
        if models:
            rerun_models(Path(tmp), out, codec, models)
            return
        command = [sys.executable, "-m", "vqcodec.cli", "bench", "--data", tmp, "--codec", codec,
                   "--out", str(out), "--threads", "1", "--no-progress"]
        raise SystemExit(subprocess.call(command))


def rerun_models(data: Path, out: Path, codec: str, models: tuple[str, ...]) -> None:
    """Measure `models` on the vqcodec curves named in `codec`, merge their points, rebuild the report."""
    specs = [spec.strip() for spec in codec.split(",") if spec.strip().startswith("vqcodec")]
    if not specs:
        raise click.UsageError("--model re-runs vqcodec points: name a vqcodec curve in --codec")
    torch.set_num_threads(1)
    notes = run_codecs(specs, rd.list_images(data), out, HERE / "weights", models)
    notes += rd.report(out, anchor="jpeg")
    for note in notes:
        click.echo(note)


if __name__ == "__main__":
    main()

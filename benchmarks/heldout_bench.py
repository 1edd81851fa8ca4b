"""Rate-distortion on photos no bundled model saw: the held-out 5 % of the training folder.

Every training run of the family held out the same 5 % of `shared/data/train` (`val_fraction`
0.05, split seed 0, `vqcodec.data.split_files`), 65 crops of 256 px. This script links those
files into a temporary folder and runs `vqcodec bench` on them, so the family is also measured
beyond Kodak. Two caveats the numbers carry: the crops come from the same sources as the
training crops (in distribution, unlike Kodak), and on 65,536-pixel images Pillow's JPEG header
(~600 bytes of tables, ~0.07 bpp) weighs far more than on Kodak; WebP's and vqcodec's headers are
30-60 bytes.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/heldout_bench.py        # ~45 min on one thread
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tempfile
from pathlib import Path

import click

from data_paths import TRAIN
from vqcodec.data import list_images, split_files
from vqcodec.train import RunSettings

HERE = Path(__file__).resolve().parent


def link_heldout(folder: Path) -> int:
    """Symlink the training files a run with the default split holds out into `folder`; returns how many."""
    defaults = {f.name: f.default for f in dataclasses.fields(RunSettings)}
    _, held_out = split_files(list_images(TRAIN), defaults["val_fraction"], seed=defaults["seed"])
    for path in held_out:
        (folder / path.name).symlink_to(path)
    return len(held_out)


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=HERE / "results" / "heldout",
              show_default=True)
@click.option("--codec", default="vqcodec,pillow", show_default=True, help="As for `vqcodec bench --codec`.")
def main(out: Path, codec: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        count = link_heldout(Path(tmp))
        print(f"{count} held-out training photos -> {out}", flush=True)
        command = [sys.executable, "-m", "vqcodec.cli", "bench", "--data", tmp, "--codec", codec,
                   "--out", str(out), "--threads", "1", "--no-progress"]
        raise SystemExit(subprocess.call(command))


if __name__ == "__main__":
    main()

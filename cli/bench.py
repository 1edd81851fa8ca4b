"""`vqcodec bench`: rate-distortion benchmark of vqcodec and its peers on a folder of images."""

from __future__ import annotations

from pathlib import Path

import click

from vqcodec.errors import VQCodecError


@click.command("bench")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of test images (e.g. Kodak).")
@click.option("--codec", "codecs", multiple=True, default=("vqcodec", "pillow"), show_default=True,
              help="Codec to run; repeat or comma-separate: vqcodec, vqcodec-raster, pillow, jpeg, webp, "
                   "avif, avif-420-s6, avif-444-s2, compressai[:ARCH].")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder for results JSON, bd_rate.md and plots.")
@click.option("-m", "--model", "models", multiple=True,
              help="Model for the vqcodec curves, repeatable: a bundled name or a .safetensors file from "
                   "`vqcodec train-prior` [default: the bundled family].")
@click.option("--anchor", default="jpeg", show_default=True, help="Codec name the BD-rate table compares against.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first N images.")
@click.option("--weights", "weights_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder with CompressAI weights from benchmarks/train_compressai.py.")
@click.option("--reference", "reference_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Folder of published results JSON drawn as reference lines.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="Torch CPU threads.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def bench_command(data_dir: Path, codecs: tuple[str, ...], out_dir: Path, models: tuple[str, ...], anchor: str,
                  limit: int | None, weights_dir: Path | None, reference_dir: Path | None, threads: int,
                  progress: bool) -> None:
    """Measure bpp (whole file), PSNR, MS-SSIM and coding time per image and operating point.

    Writes CompressAI-format JSON per codec (whole-file and payload-only rates),
    a BD-rate table against --anchor, and PSNR / MS-SSIM RD plots.
    """
    from vqcodec import rd  # imports torch: only when a benchmark runs, not for --help or usage errors

    specs = [spec for value in codecs for spec in value.split(",") if spec.strip()]
    try:
        notes = rd.bench(data_dir, specs, out_dir, anchor=anchor, limit=limit, weights_dir=weights_dir,
                         reference_dir=reference_dir, progress=progress, threads=threads, models=models or None)
    except (VQCodecError, ValueError, OSError, ImportError) as err:
        raise click.ClickException(str(err).splitlines()[0] if str(err) else type(err).__name__) from None
    for note in notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"results in {out_dir}")

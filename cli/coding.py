"""compress / decompress / info / models: file handling around vqcodec.codec.Codec.

Every failure a user can cause is one line on stderr and a non-zero exit; outputs are written to a
temporary sibling and renamed into place, so a failure never leaves half a file behind.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator, Sequence

import click

from vqcodec import bitstream
from vqcodec.codec import ORDERS, Codec, cached_codec
from vqcodec.errors import VQCodecError
from vqcodec.files import write_atomically
from vqcodec.image import open_image
from vqcodec.models import DEFAULT, list_models, model_card
from vqcodec.rdo import DEFAULT_STEPS

DEVICES = click.Choice(["cpu", "cuda"])


class _Failures:
    """Counts per-file failures so a batch finishes the files it can and still exits non-zero."""

    def __init__(self) -> None:
        self.count = 0

    def report(self, path: Path, err: Exception) -> None:
        self.count += 1
        click.echo(f"error: {path}: {err}", err=True)

    def exit(self) -> None:
        if self.count:
            raise SystemExit(1)


@click.command("compress")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output file (one input) or folder (several).")
@click.option("-m", "--model", default=DEFAULT, show_default=True, help="Bundled model name or .safetensors path.")
@click.option("--target-bpp", type=float, help="Pick the bundled model whose rate best meets this bpp target.")
@click.option("--mode", "order", type=click.Choice(ORDERS), default="fast", show_default=True,
              help="Decode order: fast (few passes) or raster (exact PixelCNN: files 8-12 % smaller, "
                   "4-14x slower to decode).")
@click.option("--optimize", type=click.IntRange(min=0), default=DEFAULT_STEPS, show_default=True,
              help="Encoder effort: steps of rate-distortion optimization of the symbols (0: nearest codes, "
              "fastest). Decoding is the same whatever it was.")
@click.option("--device", type=DEVICES, default="cpu", show_default=True)
@click.option("-f", "--force", is_flag=True, help="Overwrite existing output files.")
def compress_command(inputs: Sequence[Path], output: Path | None, model: str, target_bpp: float | None,
                     order: str, optimize: int, device: str, force: bool) -> None:
    """Compress images to .vqc files."""
    if target_bpp is not None and target_bpp <= 0:
        raise click.BadParameter("must be positive", param_hint="--target-bpp")
    codec = None if target_bpp is not None else _load(model, device)
    failures = _Failures()
    for src, dst in _progress(_pairs(inputs, output, ".vqc")):
        try:
            _refuse_overwrite(dst, force)
            image = open_image(src)
            if codec is None:
                name, data = _meet_target(image, target_bpp, order, optimize, device)
            else:
                name, data = codec.name, codec.compress(image, order=order, optimize=optimize)  # type: ignore[arg-type]
            write_atomically(dst, lambda tmp: tmp.write_bytes(data))
            bpp = 8 * len(data) / (image.width * image.height)
            click.echo(f"{src} -> {dst}: {len(data)} bytes, {bpp:.4f} bpp ({image.width}x{image.height}, {name})")
        except (VQCodecError, OSError) as err:
            failures.report(src, err)
    failures.exit()


@click.command("decompress")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output image (one input) or folder (several).")
@click.option("-m", "--model", default=None, help="Weights path, for files made by a model that is not bundled.")
@click.option("--device", type=DEVICES, default="cpu", show_default=True)
@click.option("-f", "--force", is_flag=True, help="Overwrite existing output files.")
def decompress_command(inputs: Sequence[Path], output: Path | None, model: str | None, device: str, force: bool) -> None:
    """Decompress .vqc files to PNG images."""
    failures = _Failures()
    for src, dst in _progress(_pairs(inputs, output, ".png")):
        try:
            _refuse_overwrite(dst, force)
            data = _read(src)
            codec = _load(model or bitstream.read_header(data).model_name, device)
            image = codec.decompress(data)
            write_atomically(dst, lambda tmp: image.save(tmp, format="PNG"))
            click.echo(f"{src} -> {dst}: {image.width}x{image.height} {image.mode}")
        except (VQCodecError, OSError) as err:
            failures.report(src, err)
    failures.exit()


@click.command("info")
@click.argument("path", type=click.Path(path_type=Path))
def info_command(path: Path) -> None:
    """Show the header of a .vqc file."""
    try:
        data = _read(path)
        header, chunks = bitstream.unpack(data)
    except (VQCodecError, OSError) as err:
        raise click.ClickException(f"{path}: {err}") from None
    pixels = header.width * header.height
    click.echo(f"file:     {path} ({len(data)} bytes, {8 * len(data) / pixels:.4f} bpp)")
    click.echo(f"format:   version {header.version}")
    click.echo(f"model:    {header.model_name} (weights {header.weights_digest.hex()})")
    click.echo(f"image:    {header.width}x{header.height} {header.mode}")
    click.echo(f"order:    {header.order}")
    maps = ", ".join(f"{h}x{w}" for h, w in reversed(header.level_shapes))
    click.echo(f"levels:   {len(header.level_shapes)} (top to bottom: {maps})")
    click.echo(f"payload:  {' + '.join(str(len(c)) for c in chunks)} bytes (header {len(data) - sum(map(len, chunks))})")
    click.echo(f"symbols:  crc32 {header.symbols_crc:08x}")


@click.command("models")
def models_command() -> None:
    """List the bundled models, lowest rate first."""
    names = list_models()
    if not names:
        raise click.ClickException("no bundled models are installed")
    for name in names:
        first_line = next((line for line in model_card(name).splitlines() if line.strip()), "")
        click.echo(f"{name}{' (default)' if name == DEFAULT else ''}  {first_line.lstrip('# ')}")


def _load(model: str, device: str) -> Codec:
    try:
        return cached_codec(model, device)
    except VQCodecError as err:
        raise click.ClickException(str(err)) from None


def _meet_target(image, target_bpp: float, order: str, optimize: int, device: str) -> tuple[str, bytes]:
    """Compress with every bundled model; keep the largest file within the target, else the smallest file."""
    names = list_models()
    if not names:
        raise VQCodecError("no bundled models are installed")
    files = [(name, cached_codec(name, device).compress(image, order=order, optimize=optimize))  # type: ignore[arg-type]
             for name in names]
    within = [f for f in files if 8 * len(f[1]) / (image.width * image.height) <= target_bpp]
    if within:
        return max(within, key=lambda f: len(f[1]))
    return min(files, key=lambda f: len(f[1]))


def _pairs(inputs: Sequence[Path], output: Path | None, suffix: str) -> list[tuple[Path, Path]]:
    if output is None:
        return [(src, src.with_suffix(suffix)) for src in inputs]
    if len(inputs) == 1 and not output.is_dir():
        return [(inputs[0], output)]
    if output.exists() and not output.is_dir():
        raise click.BadParameter(f"{output} is a file; with several inputs give a folder", param_hint="-o")
    return [(src, output / src.with_suffix(suffix).name) for src in inputs]


def _progress(pairs: list[tuple[Path, Path]]) -> Iterator[tuple[Path, Path]]:
    if len(pairs) < 2 or not sys.stderr.isatty():
        yield from pairs
        return
    from tqdm import tqdm

    yield from tqdm(pairs, unit="image", file=sys.stderr)


def _refuse_overwrite(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise VQCodecError(f"output {path} exists (use --force to overwrite)")


def _read(path: Path) -> bytes:
    if not path.is_file():
        raise VQCodecError("no such file")
    return path.read_bytes()

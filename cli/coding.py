"""compress / decompress: file handling around vqcodec.codec.Codec.

Every failure a user can cause is one line on stderr and a non-zero exit; outputs are written to a
temporary sibling and renamed into place, so a failure never leaves half a file behind.
"""

from __future__ import annotations

import io
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterator, Sequence

import click
from click.core import ParameterSource
from PIL import Image

from vqcodec import bitstream
from vqcodec.bitstream import ORDERS
from vqcodec.cli.stdio import STDIO, read_input, read_stdin, shown
from vqcodec.errors import ImageError, VQCodecError
from vqcodec.files import write_atomically
from vqcodec.models import DEFAULT, resolve_recorded

if TYPE_CHECKING:
    from vqcodec.codec import Codec
    from vqcodec.image import ImageLike

# The modules that need torch (codec, image, rate_control) are imported where a command first
# needs them, so that `--help` and usage errors answer at once rather than after 1.5 s.
DEVICES = click.Choice(["cpu", "cuda"])
# The encoder's default effort, `vqcodec.rdo.DEFAULT_STEPS`, written out here for the same reason;
# tests/test_cli.py checks that they agree.
DEFAULT_OPTIMIZE_STEPS = 10


class _Failures:
    """Counts per-file failures so a batch finishes the files it can and still exits non-zero."""

    def __init__(self) -> None:
        self.count = 0

    def report(self, path: Path, err: Exception) -> None:
        self.count += 1
        click.echo(f"error: {shown(path, '<stdin>')}: {err}", err=True)

    def exit(self) -> None:
        if self.count:
            raise SystemExit(1)


@click.command("compress")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(), help="Output file (one input) or folder (several, or ending in /).")
@click.option("-m", "--model", default=DEFAULT, show_default=True, help="Bundled model name or .safetensors path.")
@click.option("--target-bpp", type=float, help="Pick the bundled model whose rate best meets this bpp target.")
@click.option("--slope", type=float,
              help="Pick the bundled model best at this exchange rate: the dB of PSNR one bit per pixel must "
              "buy (higher: smaller files; 8 lands near vqc-3/vqc-4). One slope for a collection spends the bits "
              "where they buy the most.")
@click.option("--mode", "order", type=click.Choice(ORDERS), default="fast", show_default=True,
              help="Decode order: fast (4-16 network passes per level) or raster (exact PixelCNN: files "
                   "5-8 % smaller on Kodak, about 9x slower to decode).")
@click.option("--optimize", type=click.IntRange(min=0), default=DEFAULT_OPTIMIZE_STEPS, show_default=True,
              help="Encoder effort: steps of rate-distortion optimization of the symbols (0: nearest codes, "
              "fastest). Decoding is the same whatever it was.")
@click.option("--adapt/--no-adapt", "adapt_decoder", default=True, show_default=True,
              help="Send a per-image correction of the decoder's last layer (about 70 bytes) when it buys "
              "more quality than those bytes would elsewhere.")
@click.option("--device", type=DEVICES, default="cpu", show_default=True)
@click.option("-f", "--force", is_flag=True, help="Overwrite existing output files.")
def compress_command(inputs: Sequence[Path], output: str | None, model: str, target_bpp: float | None,
                     slope: float | None, order: str, optimize: int, adapt_decoder: bool, device: str,
                     force: bool) -> None:
    """Compress images to .vqc files ('-' as input or -o: standard input or output)."""
    choose = _chooser(target_bpp, slope, order=order, optimize=optimize, device=device, adapt_decoder=adapt_decoder)
    codec = None if choose is not None else _load(model, device)
    failures = _Failures()
    for src, dst in _progress(_pairs(inputs, output, ".vqc")):
        try:
            _refuse_overwrite(src, dst, force)
            image = _open_input(src)
            with _TileBar(src) as bar:
                if choose is not None:
                    name, data = choose(image, bar)
                else:
                    data = codec.compress(image, order=order, optimize=optimize, progress=bar,  # type: ignore[arg-type]
                                          adapt_decoder=adapt_decoder)
                    name = codec.name
            _write(dst, lambda out: out.write(data))
            bpp = 8 * len(data) / (image.width * image.height)
            click.echo(f"{shown(src, '<stdin>')} -> {shown(dst, '<stdout>')}: {len(data)} bytes, {bpp:.4f} bpp "
                       f"({image.width}x{image.height}, {name})", err=dst == STDIO)
        except (VQCodecError, OSError) as err:
            failures.report(src, err)
    failures.exit()


@click.command("decompress")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(), help="Output image (one input) or folder (several, or ending in /).")
@click.option("-m", "--model", default=None, help="Weights path, for files made by a model that is not bundled.")
@click.option("--device", type=DEVICES, default="cpu", show_default=True)
@click.option("-f", "--force", is_flag=True, help="Overwrite existing output files.")
def decompress_command(inputs: Sequence[Path], output: str | None, model: str | None, device: str, force: bool) -> None:
    """Decompress .vqc files to PNG images ('-' as input or -o: standard input or output).

    An output file named .tif/.tiff, .bmp, .ppm/.pnm or .webp (lossless) is written in that format.
    """
    given = _load(model, device) if model else None
    failures = _Failures()
    pairs = _pairs(inputs, output, ".png")
    for _, dst in pairs:
        _output_format(dst)  # a format it cannot write is refused before any decoding
    for src, dst in _progress(pairs):
        try:
            _refuse_overwrite(src, dst, force)
            data = read_input(src)
            header = bitstream.read_header(data)
            kind, options = _output_format(dst)
            if header.alpha and kind not in WITH_ALPHA:  # Pillow would drop the alpha without a word
                raise VQCodecError(f"the image has transparency, which {kind} cannot hold: write "
                                   f"{', '.join(sorted(s for s, (k, _) in OUTPUT_FORMATS.items() if k in WITH_ALPHA))}")
            codec = given or _cached_codec(resolve_recorded(header.model_name), device)
            image = codec.decompress(data)
            _write(dst, lambda out: image.save(out, format=kind, **options))
            click.echo(f"{shown(src, '<stdin>')} -> {shown(dst, '<stdout>')}: {image.width}x{image.height} {image.mode}",
                       err=dst == STDIO)
        except (VQCodecError, OSError) as err:
            failures.report(src, err)
    failures.exit()


def _load(model: str, device: str) -> Codec:
    try:
        return _cached_codec(model, device)
    except VQCodecError as err:
        raise click.ClickException(str(err)) from None


def _cached_codec(model: str | Path, device: str) -> Codec:
    from vqcodec.codec import cached_codec

    return cached_codec(model, device)


def _chooser(target_bpp: float | None, slope: float | None, **options: str | int | bool
             ) -> Callable[[ImageLike, _TileBar], tuple[str, bytes]] | None:
    """How the model is picked per image when --target-bpp or --slope is given (None: --model)."""
    given = {flag: value for flag, value in (("--target-bpp", target_bpp), ("--slope", slope)) if value is not None}
    if not given:
        return None
    if len(given) > 1:
        raise click.UsageError("--target-bpp and --slope each pick the model; give one of them")
    [(flag, value)] = given.items()
    if not (math.isfinite(value) and value > 0):
        raise click.BadParameter("must be a positive number", param_hint=flag)
    if click.get_current_context().get_parameter_source("model") == ParameterSource.COMMANDLINE:
        raise click.UsageError(f"{flag} picks the model itself; give --model or {flag}, not both")
    from vqcodec.rate_control import compress_at_slope, compress_to_target

    pick = compress_to_target if flag == "--target-bpp" else compress_at_slope
    return lambda image, bar: pick(image, value, progress=bar, **options)  # type: ignore[arg-type]


# Decoded images are written losslessly (a lossy format would add its own loss), by the output's
# suffix; no suffix, or standard output: PNG.
OUTPUT_FORMATS: dict[str, tuple[str, dict]] = {
    ".png": ("PNG", {}), ".tif": ("TIFF", {}), ".tiff": ("TIFF", {}), ".bmp": ("BMP", {}),
    ".ppm": ("PPM", {}), ".pnm": ("PPM", {}), ".webp": ("WEBP", {"lossless": True}),
}
WITH_ALPHA = {"PNG", "TIFF", "WEBP"}  # the formats above that keep an alpha channel


def _output_format(dst: Path) -> tuple[str, dict]:
    """(Pillow format, save options) for a decoded image written to dst."""
    if dst == STDIO or not dst.suffix:
        return "PNG", {}
    try:
        return OUTPUT_FORMATS[dst.suffix.lower()]
    except KeyError:
        raise click.BadParameter(f"cannot write {dst.name}: decoded images are written losslessly, as "
                                 f"{', '.join(OUTPUT_FORMATS)} (or no suffix: PNG)", param_hint="-o") from None


def _pairs(inputs: Sequence[Path], output: str | None, suffix: str) -> list[tuple[Path, Path]]:
    """(input, output file) for each input; refuses a batch in which two inputs would share an output."""
    pairs = _targets(inputs, output, suffix)
    seen: dict[Path, Path] = {}
    for src, dst in pairs:
        key = dst.resolve()
        if key in seen:
            raise click.BadParameter(f"{seen[key]} and {src} would both be written to {dst}; "
                                     "compress them into different folders", param_hint="INPUTS")
        seen[key] = src
    return pairs


def _targets(inputs: Sequence[Path], output: str | None, suffix: str) -> list[tuple[Path, Path]]:
    if STDIO in inputs and len(inputs) > 1:
        raise click.BadParameter("'-' (standard input) must be the only input", param_hint="INPUTS")
    if output == "-":
        if len(inputs) > 1:
            raise click.BadParameter("'-' (standard output) takes one input", param_hint="-o")
        return [(inputs[0], STDIO)]
    if output is None:
        return [(src, STDIO if src == STDIO else src.with_suffix(suffix)) for src in inputs]
    folder = Path(output)
    as_folder = len(inputs) > 1 or folder.is_dir() or output.endswith(("/", os.sep))
    if not as_folder:
        return [(inputs[0], folder)]
    if inputs[0] == STDIO:
        raise click.BadParameter("standard input has no name to use in a folder; give -o a file name", param_hint="-o")
    if folder.exists() and not folder.is_dir():
        raise click.BadParameter(f"{folder} is a file; with several inputs give a folder", param_hint="-o")
    return [(src, folder / src.with_suffix(suffix).name) for src in inputs]


def _progress(pairs: list[tuple[Path, Path]]) -> Iterator[tuple[Path, Path]]:
    if len(pairs) < 2 or not sys.stderr.isatty():
        yield from pairs
        return
    from tqdm import tqdm

    yield from tqdm(pairs, unit="image", file=sys.stderr)


class _TileBar:
    """A progress bar on a terminal's stderr for the tiles of a large image's optimisation, made on the first tile."""

    def __init__(self, src: Path) -> None:
        self.src, self.bar = src, None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is not None and done == 1:  # --target-bpp: the next model's optimisation starts
            self.bar.reset(total=total)
        if self.bar is None and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=f"{self.src.name}: optimising", unit="tile", file=sys.stderr,
                            initial=done - 1)
        if self.bar is not None:
            self.bar.update(1)

    def __enter__(self) -> _TileBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


def _refuse_overwrite(src: Path, path: Path, force: bool) -> None:
    """Existing files need --force, and no output may replace its own input (not even with --force:
    `decompress photo.png` would name photo.png as its output); /dev/null and other non-files are
    written to, not overwritten."""
    if path == STDIO:
        if sys.stdout.isatty():  # as gzip does: binary data would garble the terminal
            raise VQCodecError("refusing to write binary data to a terminal; redirect it or give -o a file")
        return
    if src != STDIO and src.exists() and path.exists() and os.path.samefile(src, path):
        raise VQCodecError("the output would be written over the input itself; give -o another name")
    if path.is_file() and not force:
        raise VQCodecError(f"output {path} exists (use --force to overwrite)")


def _write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write through `write(binary file)`: to standard output for '-', else atomically to the file."""
    if path != STDIO:
        write_atomically(path, lambda tmp: _with_open(tmp, write))
        return
    buffer = io.BytesIO()
    write(buffer)  # whole, before the first byte goes out: a failure leaves no partial output
    sys.stdout.buffer.write(buffer.getvalue())
    sys.stdout.buffer.flush()


def _with_open(path: Path, write: Callable[[BinaryIO], object]) -> None:
    with open(path, "wb") as out:
        write(out)


def _open_input(src: Path) -> Image.Image:
    """The image to compress; a .vqc file given by mistake is named as such."""
    from vqcodec.image import open_image

    data = read_stdin() if src == STDIO else None
    try:
        return open_image(src if data is None else io.BytesIO(data))
    except ImageError:
        if data is None and src.is_file():
            with open(src, "rb") as f:
                data = f.read(len(bitstream.MAGIC))
        if data is not None and data.startswith(bitstream.MAGIC):
            raise ImageError("a .vqc file, not an image: `vqcodec decompress` turns it back into one") from None
        raise

"""`vqcodec info` and `vqcodec models`: what a .vqc file or a bundled model is.

They read headers and model cards only, so this module stays free of torch: both answer in a
fraction of a second instead of the 1.5 s that importing torch takes (vqcodec.cli.main loads the
coding and training commands only when one of them runs).
"""

from __future__ import annotations

import re
from pathlib import Path

import click

from vqcodec import bitstream
from vqcodec.cli.stdio import read_input, shown
from vqcodec.errors import VQCodecError
from vqcodec.models import DEFAULT, RESAMPLED, list_models, model_card


@click.command("info")
@click.argument("path", type=click.Path(path_type=Path))
def info_command(path: Path) -> None:
    """Show the header of a .vqc file ('-': standard input)."""
    try:
        data = read_input(path)
        header, chunks = bitstream.unpack(data)
    except (VQCodecError, OSError) as err:
        raise click.ClickException(f"{path}: {err}") from None
    pixels = header.width * header.height
    click.echo(f"file:     {shown(path, '<stdin>')} ({len(data)} bytes, {8 * len(data) / pixels:.4f} bpp)")
    arithmetic = "exact prior" if header.version >= 3 else "float32 prior: decodes where float32 sums match the writer's"
    click.echo(f"format:   version {header.version} ({arithmetic})")
    click.echo(f"model:    {header.model_name} (weights {header.weights_digest.hex()})")
    scaled = RESAMPLED.get(header.model_name)
    coded = f", coded at x{scaled[1]:g} with {scaled[0]}'s networks" if scaled else ""
    click.echo(f"image:    {header.width}x{header.height} {header.mode}{coded}")
    click.echo(f"order:    {header.order}")
    maps = ", ".join(f"{h}x{w}" for h, w in reversed(header.level_shapes))
    click.echo(f"levels:   {len(header.level_shapes)} (top to bottom: {maps})")
    click.echo(f"payload:  {' + '.join(str(len(c)) for c in chunks)} bytes (header {len(data) - sum(map(len, chunks))})")
    click.echo(f"symbols:  crc32 {header.symbols_crc:08x}")
    if header.version >= bitstream.ADAPTATION_VERSION:
        adapted = f"{len(header.adaptation)} bytes" if header.adaptation else "none"
        if header.adaptation and header.version >= bitstream.DESIGN_VERSION:
            adapted += f", {bitstream.design_name(header.adaptation[0])}"
        click.echo(f"adapted:  {adapted} (per-image decoder correction)")
    if header.alpha:
        coding = bitstream.ALPHA_CODINGS.get(header.alpha[0], "unknown coding")
        click.echo(f"alpha:    {len(header.alpha)} bytes ({coding}, exact)")


@click.command("models")
@click.argument("name", required=False)
def models_command(name: str | None) -> None:
    """List the bundled models, lowest rate first; with NAME, show that model's card."""
    if name is not None:
        try:
            card = model_card(DEFAULT if name == "default" else name)
        except VQCodecError as err:
            raise click.ClickException(f"{err}; bundled models: {', '.join(list_models()) or 'none installed'}") from None
        click.echo(card.rstrip() or f"{name}: no model card installed")
        return
    names = list_models()
    if not names:
        raise click.ClickException("no bundled models are installed")
    for name in names:
        card = model_card(name)
        title = next((line for line in card.splitlines() if line.strip()), "")
        summary = title.split(": ", 1)[1] if ": " in title else ""  # the card's title is "# name: summary"
        described = "; ".join(part for part in (summary, _measured(card)) if part)
        click.echo(f"{name}{' (default)' if name == DEFAULT else ''}  {described}".rstrip())


def _measured(card: str) -> str:
    """The card's first Kodak measurement (the default fast order) as "Kodak 0.297 bpp, 27.80 dB", or ""."""
    values = dict(re.findall(r"^- (bpp|PSNR \(dB\)): ([0-9.]+)$", card, flags=re.MULTILINE)[:2])
    if set(values) != {"bpp", "PSNR (dB)"}:
        return ""
    return f"Kodak {float(values['bpp']):.3f} bpp, {float(values['PSNR (dB)']):.2f} dB"

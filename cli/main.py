"""The `vqcodec` command: a click group that only wires the commands together."""

from __future__ import annotations

import warnings

import click

from vqcodec import __version__
from vqcodec.cli.bench import bench_command
from vqcodec.cli.coding import compress_command, decompress_command, info_command, models_command
from vqcodec.cli.training import train_command, train_decoder_command, train_prior_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vqcodec")
def app() -> None:
    """vqcodec: learned image compression with a VQ-VAE-2, a PixelCNN prior and rANS bitstreams."""
    warnings.formatwarning = _one_line  # a library's warning (say Pillow's, on a damaged file) is a line, not its source


def _one_line(message: Warning | str, category: type[Warning], *_: object, **__: object) -> str:
    return f"warning: {message}\n"


for _command in (compress_command, decompress_command, info_command, models_command,
                 train_command, train_prior_command, train_decoder_command, bench_command):
    app.add_command(_command)
app.add_command(bench_command, "evaluate")  # the same command under the name users of other toolkits look for

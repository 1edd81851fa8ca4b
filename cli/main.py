"""The `vqcodec` command: a click group that only wires the commands together."""

from __future__ import annotations

import click

from vqcodec import __version__
from vqcodec.cli.coding import compress_command, decompress_command, info_command, models_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vqcodec")
def app() -> None:
    """vqcodec: learned image compression with a VQ-VAE-2, a PixelCNN prior and rANS bitstreams."""


app.add_command(compress_command)
app.add_command(decompress_command)
app.add_command(info_command)
app.add_command(models_command)


def _register_optional() -> None:
    # Training and benchmarking pull in heavier modules; they register when present.
    try:
        from vqcodec.cli.training import train_command, train_prior_command
    except ImportError:
        pass
    else:
        app.add_command(train_command)
        app.add_command(train_prior_command)
    try:
        from vqcodec.cli.bench import bench_command
    except ImportError:
        pass
    else:
        app.add_command(bench_command)


_register_optional()

"""The `vqcodec` command: a click group that only wires the commands together.

Each command's module is imported when that command runs (or when `vqcodec --help` lists them
all), so `vqcodec info`, `vqcodec models` and `vqcodec --version` do not pay the 1.5 s that
importing torch takes.
"""

from __future__ import annotations

import importlib
import warnings

import click

from vqcodec import __version__

# name -> "module:command"; `evaluate` is `bench` under the name users of other toolkits look for.
COMMANDS = {
    "compress": "vqcodec.cli.coding:compress_command",
    "decompress": "vqcodec.cli.coding:decompress_command",
    "info": "vqcodec.cli.describe:info_command",
    "models": "vqcodec.cli.describe:models_command",
    "train": "vqcodec.cli.training:train_command",
    "train-prior": "vqcodec.cli.training:train_prior_command",
    "train-decoder": "vqcodec.cli.training:train_decoder_command",
    "bench": "vqcodec.cli.bench:bench_command",
    "evaluate": "vqcodec.cli.bench:bench_command",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attribute = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attribute)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vqcodec")
def app() -> None:
    """vqcodec: learned image compression with a VQ-VAE-2, a PixelCNN prior and rANS bitstreams."""
    warnings.formatwarning = _one_line  # a library's warning (say Pillow's, on a damaged file) is a line, not its source


def _one_line(message: Warning | str, category: type[Warning], *_: object, **__: object) -> str:
    return f"warning: {message}\n"

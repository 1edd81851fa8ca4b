"""The `vqcodec` command: a click group that only wires the commands together.

Each command's module is imported only when that command runs, and `vqcodec --help` lists them
from the summaries below, so `--help`, `--version`, `info`, `models` (and compress/decompress's
`--help` and usage errors, cli/coding.py) do not pay the 1.5 s that importing torch takes.
"""

from __future__ import annotations

import importlib
import warnings

import click

from vqcodec import __version__

# name -> ("module:command", the first paragraph of its help, which `vqcodec --help` lists without
# importing the module; tests/test_layering.py checks they stay equal). `evaluate` is `bench` under
# the name users of other toolkits look for.
_BENCH = ("vqcodec.cli.bench:bench_command",
          "Measure bpp (whole file), PSNR, MS-SSIM and coding time per image and operating point.")
COMMANDS = {
    "compress": ("vqcodec.cli.coding:compress_command",
                 "Compress images to .vqc files ('-' as input or -o: standard input or output)."),
    "decompress": ("vqcodec.cli.coding:decompress_command",
                   "Decompress .vqc files to PNG images ('-' as input or -o: standard input or output)."),
    "info": ("vqcodec.cli.describe:info_command", "Show the header of a .vqc file ('-': standard input)."),
    "models": ("vqcodec.cli.describe:models_command",
               "List the bundled models, lowest rate first; with NAME, show that model's card."),
    "train": ("vqcodec.cli.training:train_command",
              "Train the VQ-VAE. Multi-GPU: torchrun --nproc_per_node N -m vqcodec.cli train ..."),
    "train-prior": ("vqcodec.cli.training:train_prior_command",
                    "Train the prior (both decode orders, or --order) on a frozen VQ-VAE's symbols; "
                    "writes model.safetensors."),
    "train-decoder": ("vqcodec.cli.training:train_decoder_command",
                      "Fine-tune the decoder on the model's frozen symbols: same bitstreams, better pictures; "
                      "writes model.safetensors."),
    "bench": _BENCH,
    "evaluate": _BENCH,
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attribute = COMMANDS[name][0].split(":")
        return getattr(importlib.import_module(module), attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names))  # click's own layout
        with formatter.section("Commands"):
            formatter.write_dl([(name, _short_help(COMMANDS[name][1], limit)) for name in names])


def _short_help(summary: str, limit: int) -> str:
    """The summary shortened as click shortens a command's own help in a group's listing."""
    return click.Command(None, help=summary).get_short_help_str(limit)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vqcodec")
def app() -> None:
    """vqcodec: learned image compression with a VQ-VAE-2, a PixelCNN prior and rANS bitstreams."""
    warnings.formatwarning = _one_line  # a library's warning (say Pillow's, on a damaged file) is a line, not its source


def _one_line(message: Warning | str, category: type[Warning], *_: object, **__: object) -> str:
    return f"warning: {message}\n"

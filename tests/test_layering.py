"""Imports flow one way (docs/architecture.md): the codec flow never reaches training or benchmarking code."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vqcodec"
FLOW = ["errors", "files", "image", "quantize", "vqvae", "prior", "context", "entropy", "bitstream", "checkpoint", "rdo", "resample", "adapt", "codec", "rate_control"]
BESIDE = {"data", "metrics", "train", "symbol_sets", "runtime", "rd", "peers", "bdrate", "plots", "cli", "recipes"}


def imported_names(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def vqcodec_modules(path: Path) -> set[str]:
    return {name.split(".")[1] for name in imported_names(path) if name.startswith("vqcodec.")}


@pytest.mark.parametrize("module", FLOW)
def test_flow_never_imports_sideways(module):
    assert not vqcodec_modules(PACKAGE / f"{module}.py") & BESIDE


def test_only_entropy_imports_constriction():
    users = {p.name for p in [*PACKAGE.rglob("*.py"), *(ROOT / "cli").rglob("*.py")]
             if any(n.split(".")[0] == "constriction" for n in imported_names(p))}
    assert users == {"entropy.py"}


@pytest.mark.parametrize("module", ["entropy", "bitstream"])
def test_coding_modules_do_not_import_torch(module):
    assert not {n.split(".")[0] for n in imported_names(PACKAGE / f"{module}.py")} & {"torch"}


def test_cli_imports_only_through_the_package():
    for path in (ROOT / "cli").rglob("*.py"):
        tops = {n.split(".")[0] for n in imported_names(path)}
        assert "cli" not in tops, f"{path.name} imports cli.* instead of vqcodec.cli.*"
        assert "torch" not in tops, f"{path.name}: no tensors in the CLI"


def test_no_top_level_cli_package_is_installed(tmp_path):
    probe = "import importlib.util, vqcodec.cli.main; print(importlib.util.find_spec('cli') is None)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


EXPECTED = ROOT / "tests" / "expected"


@pytest.mark.parametrize("args, code", [(["--version"], 0), (["--help"], 0), ([], 2), (["models"], 0),
                                        (["models", "vqc-3"], 0), (["info", str(EXPECTED / "header_v6.bin")], 0),
                                        (["info", str(EXPECTED / "header_v2.bin")], 0),
                                        (["compress", "--help"], 0), (["decompress", "-h"], 0), (["compress"], 2),
                                        (["decompress", "-o", "out.jpg", "in.vqc"], 2),
                                        (["bench", "--help"], 0), (["bench", "--out", "x"], 2)])
def test_help_info_models_and_usage_errors_answer_without_importing_torch(args, code):
    """They read summaries, headers, model cards and arguments; importing torch would add about 1.5 s to each."""
    probe = ("import sys\nfrom vqcodec.cli.main import app\ntry:\n    app(sys.argv[1:], prog_name='vqcodec')\n"
             "except SystemExit as end:\n    print('exit', end.code, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120)
    assert out.stdout.splitlines()[-1] == f"exit {code} False", out.stdout + out.stderr  # bare `vqcodec`: help, as a usage error


def test_every_command_loads():
    import click

    from vqcodec.cli.main import COMMANDS, app

    ctx = click.Context(app)
    for name in COMMANDS:
        command = app.get_command(ctx, name)
        assert isinstance(command, click.Command) and command.callback is not None, name
    assert app.get_command(ctx, "evaluate") is app.get_command(ctx, "bench")
    assert app.get_command(ctx, "no-such-command") is None


def test_listed_summaries_are_the_commands_own():
    """`vqcodec --help` lists COMMANDS' summaries; each must be the first paragraph of its command's help."""
    import click

    from vqcodec.cli.main import COMMANDS, app

    ctx = click.Context(app)
    for name, (_, summary) in COMMANDS.items():
        first_paragraph = " ".join(app.get_command(ctx, name).help.split("\n\n")[0].split())
        assert summary == first_paragraph, name

"""The README's promises hold: its Python example runs and CI runs the README's test command."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_exactly_two_setup_commands_and_ci_runs_the_test_command():
    setup = README.split("## Set up", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)```", setup, flags=re.S)
    assert len(commands) == 2 and all(c.count("\n") == 1 for c in commands)
    install, tests = commands
    assert "vqcodec compress" in install and "vqcodec decompress" in install
    test_command = tests.strip().split("&&")[-1].strip()
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_python_example_runs(tmp_path):
    from vqcodec.models import list_models

    if "vqc-3" not in list_models():
        pytest.fail("the bundled model vqc-3 is missing: the README example cannot work")
    (example,) = blocks("python")
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        exec(compile(example, "README.md", "exec"), {})
    finally:
        os.chdir(cwd)

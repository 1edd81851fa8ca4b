"""The built wheel holds the whole product: every module, the CLI as `vqcodec.cli`, the bundled
weights and their cards; installed outside the checkout, it codes an image the way the checkout does."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import vqcodec

ROOT = Path(__file__).resolve().parents[1]
# Where each source folder lands in the wheel (pyproject's package-dir maps cli/ to vqcodec/cli).
PACKAGE_DIRS = {"vqcodec": "vqcodec", "cli": "vqcodec/cli"}
SOURCES = ("pyproject.toml", "README.md", *PACKAGE_DIRS)
# Runs `python -m vqcodec.cli ARGS` without the checkout's editable install, whose import hook would
# otherwise supply any module the wheel left out.
WITHOUT_CHECKOUT = ("import runpy, sys; "
                    "sys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in repr(f)]; "
                    "import vqcodec; print(vqcodec.__file__, file=sys.stderr); "
                    "runpy.run_module('vqcodec.cli', run_name='__main__')")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the sources, so that a stale build/ folder cannot leak into it."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    for name in SOURCES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, source / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work / "dist"),
                           str(source)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (built,) = (work / "dist").glob("vqcodec-*.whl")
    return built


def expected_files() -> set[str]:
    files = set()
    for folder, target in PACKAGE_DIRS.items():
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                files.add(f"{target}/{path.relative_to(ROOT / folder).as_posix()}")
    return files


def test_the_wheel_holds_every_module_weight_and_card(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = expected_files() - names
    assert not missing, f"left out of the wheel: {sorted(missing)}"
    assert any(n.endswith(".safetensors") for n in names)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "vqcodec = vqcodec.cli.main:app" in zipfile.ZipFile(wheel).read(entry_points).decode()
    assert f"vqcodec-{vqcodec.__version__}-" in wheel.name


def test_the_installed_wheel_codes_like_the_checkout(wheel, tmp_path, image_file, one_thread):
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                           str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    run = tmp_path / "elsewhere"  # not the checkout, so only the installed copy can be imported
    run.mkdir()
    installed = subprocess.run([sys.executable, "-c", WITHOUT_CHECKOUT, "compress", str(image_file), "-o", "x.vqc",
                                "--model", "vqc-1", "--optimize", "0"], cwd=run, env=env, capture_output=True,
                               text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr
    assert Path(installed.stderr.splitlines()[0]).is_relative_to(site), installed.stderr
    checkout = vqcodec.Codec.load("vqc-1").compress(image_file, optimize=0)
    assert (run / "x.vqc").read_bytes() == checkout

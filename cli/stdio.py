"""'-' as a path: standard input or output, as Unix tools read it; and reading a file given by path."""

from __future__ import annotations

import sys
from pathlib import Path

from vqcodec.errors import VQCodecError

STDIO = Path("-")


def read_stdin() -> bytes:
    if sys.stdin.isatty():
        raise VQCodecError("'-' reads standard input, which is a terminal; pipe or redirect a file into it")
    return sys.stdin.buffer.read()


def read_input(path: Path) -> bytes:
    """The bytes of a file given on the command line, or of standard input for '-'."""
    if path == STDIO:
        return read_stdin()
    if path.is_dir():
        raise VQCodecError("is a folder, not a .vqc file")
    if not path.is_file():
        raise VQCodecError("no such file")
    return path.read_bytes()


def shown(path: Path, stream: str) -> str:
    """How a path is named in messages: `stream` ("<stdin>", "<stdout>") for '-'."""
    return stream if path == STDIO else str(path)

"""Atomic file writes: readers (and a crashed run's next start) never see half a file."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call write(temporary sibling path), then os.replace it onto `path`; the sibling goes on any failure.

    The sibling lives in the destination folder (created if missing) so the replace stays on one
    file system and is atomic. The file gets the permissions a plain write would give it: those of
    the file it replaces, or else the umask's (mkstemp's siblings are private to their owner).
    A symlink is followed (the file it points to is replaced, not the link), and a target that is
    not a regular file (/dev/null, a pipe) is written in place: replacing a device node with a
    file would break it for everyone.
    """
    path = Path(os.path.realpath(path)) if Path(path).is_symlink() else Path(path)
    if path.is_dir():
        raise IsADirectoryError(21, "is a folder", str(path))
    if path.exists() and not path.is_file():
        write(path)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode) if path.is_file() else _umask_mode()
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:  # name the file the user asked for, not the sibling
        raise OSError(err.errno, err.strerror, str(path)) from None
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask_mode() -> int:
    """The mode open() would give a new file: 0o666 less the process umask (read by setting it)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask

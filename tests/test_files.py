"""Atomic writes: a failed write leaves the old file and no temporary sibling behind."""

from __future__ import annotations

import os
import stat
import tempfile

import pytest

from vqcodec.files import write_atomically


def test_a_write_replaces_the_file_and_creates_missing_folders(tmp_path):
    target = tmp_path / "new" / "out.bin"
    write_atomically(target, lambda tmp: tmp.write_bytes(b"first"))
    write_atomically(target, lambda tmp: tmp.write_bytes(b"second"))
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["out.bin"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_sibling(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def half_then_fail(tmp):
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt  # even an interrupt must not leave debris

    with pytest.raises(KeyboardInterrupt):
        write_atomically(target, half_then_fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_a_written_file_gets_the_permissions_a_plain_write_would_give(tmp_path):
    umask = os.umask(0o027)
    try:
        fresh = tmp_path / "fresh.bin"
        write_atomically(fresh, lambda tmp: tmp.write_bytes(b"x"))
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o640  # not mkstemp's private 0o600

        kept = tmp_path / "kept.bin"
        kept.write_bytes(b"old")
        kept.chmod(0o604)
        write_atomically(kept, lambda tmp: tmp.write_bytes(b"new"))
        assert stat.S_IMODE(kept.stat().st_mode) == 0o604  # a replaced file keeps its own
    finally:
        os.umask(umask)


def test_a_symlink_keeps_pointing_at_the_file_it_names(tmp_path):
    real, link = tmp_path / "real.bin", tmp_path / "link.bin"
    real.write_bytes(b"old")
    link.symlink_to(real)
    write_atomically(link, lambda tmp: tmp.write_bytes(b"new"))
    assert link.is_symlink() and real.read_bytes() == b"new"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_target_that_is_not_a_file_is_written_in_place(tmp_path):
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    fd = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK)  # a reader, so the writer does not block
    try:
        write_atomically(pipe, lambda path: path.write_bytes(b"through"))
        assert os.read(fd, 100) == b"through"
    finally:
        os.close(fd)
    assert stat.S_ISFIFO(pipe.stat().st_mode), "the pipe was replaced by a file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


def test_an_unwritable_folder_is_named_in_the_error_not_the_sibling(tmp_path, monkeypatch):
    def refuse(**kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / ".out.bin.x1y2.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)  # as in /sys, or a read-only folder (root may write anywhere)
    with pytest.raises(PermissionError) as err:
        write_atomically(tmp_path / "out.bin", lambda tmp: tmp.write_bytes(b"x"))
    assert err.value.filename == str(tmp_path / "out.bin")

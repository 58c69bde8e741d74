"""atomic_write / atomic_directory: all or nothing, with ordinary permissions."""

from __future__ import annotations

import os
import stat

import pytest

from pytest_modelcompat.atomic import atomic_directory, atomic_write


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_write_replaces_whole_file_with_umask_permissions(tmp_path):
    target = tmp_path / "sub" / "report.json"
    atomic_write(target, "old")
    atomic_write(target, b"new")
    assert target.read_text() == "new"
    umask = os.umask(0)
    os.umask(umask)
    assert _mode(target) == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["report.json"]  # no temp files left


def test_atomic_directory_appears_complete_or_not_at_all(tmp_path):
    out = tmp_path / "adapter"
    with pytest.raises(RuntimeError):
        with atomic_directory(out) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("interrupted")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with atomic_directory(out) as tmp:
        (tmp / "weights").write_text("1")
    with atomic_directory(out) as tmp:  # replaces an existing dir as a whole
        (tmp / "weights").write_text("2")
    assert (out / "weights").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    umask = os.umask(0)
    os.umask(umask)
    assert _mode(out) == 0o777 & ~umask

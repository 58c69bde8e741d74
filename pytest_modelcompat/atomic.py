"""Atomic file and directory writes: readers see the old content or the new, never half of one."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from pytest_modelcompat.errors import CompatInputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same directory and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates 0600; the result should have the permissions a plain open() would give.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_directory(path: str | os.PathLike):
    """Yield a temp directory beside ``path``; on success it replaces ``path`` as a whole.

    On error (or Ctrl-C) the temp directory is removed and ``path`` is left as it was, so an
    interrupted run never leaves a half-written output directory.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700; give what a plain mkdir would
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise



def check_writable_dir(path: str | os.PathLike, what: str) -> None:
    """CompatInputError unless the output directory ``path`` can be written (``what`` names it).

    Called before long work (evaluation, training), so a bad output path fails in a second with
    one line instead of after an hour with a traceback. ``path`` must be a directory or not exist
    yet, and its nearest existing ancestor a writable directory; nothing is created here.
    """
    path = Path(path).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise CompatInputError(f"{what} {str(path)!r} is a file, not a directory; choose a directory path")
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise CompatInputError(
            f"{what} {str(path)!r} cannot be created: {str(ancestor)!r} is a file, not a directory; "
            "choose another path"
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise CompatInputError(
            f"{what} {str(path)!r} cannot be created: {str(ancestor)!r} is not writable; choose a writable location"
        )

"""Crash-safe writes: a file or a directory appears whole under its final name, or not at all.

Pattern: write into a temporary sibling (same filesystem), flush and fsync, then `os.replace`.
A crash or a failed write (full disk, permissions) leaves the previous version untouched, and the
failure surfaces as one `WriteError` naming the path, which the CLI prints as one line (exit 1).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lorafit.errors import WriteError


def write_error(path: Path, error: OSError) -> WriteError:
    """The one-line error for a failed write of `path` (ENOSPC, EACCES, EROFS, ...)."""
    if isinstance(error, WriteError):
        return error
    reason = error.strerror or str(error) or type(error).__name__
    return WriteError(f"cannot write {path}: {reason}; what was there before is unchanged")


def fsync_path(path: str | Path) -> None:
    """fsync a file or directory by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Persist a directory entry (a rename) to disk; a no-op where directories cannot be opened."""
    with contextlib.suppress(OSError):
        fsync_path(path)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a fsynced temporary file and a rename."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise write_error(path, e) from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise write_error(path, e) from e
        raise
    fsync_dir(path.parent)


def write_text_atomic(path: Path, text: str) -> None:
    """`write_bytes_atomic` for UTF-8 text."""
    write_bytes_atomic(path, text.encode("utf-8"))


def fsync_tree(path: Path) -> None:
    """fsync every file under `path`, then the directories, so a rename publishes complete data."""
    for root, _dirs, files in os.walk(path):
        for name in files:
            fsync_path(os.path.join(root, name))
        fsync_dir(Path(root))


@contextlib.contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """Yield a temporary directory to fill; on success it replaces `path` in one step.

    The old directory (if any) is moved aside and deleted only after the new one is in place, so at
    every instant either the old or the new complete directory exists under `path` (or, for a crash
    between the two renames, under `path` + ".old", which `recover_directory` puts back).
    On an exception the temporary directory is removed and `path` is untouched; an OSError (from
    filling the directory or from the renames) becomes a WriteError naming `path`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        recover_directory(path)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as e:
        raise write_error(path, e) from e
    try:
        yield tmp
        fsync_tree(tmp)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise write_error(path, e) from e
        raise
    old = path.with_name(path.name + ".old")
    try:
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        recover_directory(path)  # the first rename may have happened: put the old directory back
        raise write_error(path, e) from e
    fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)


def recover_directory(path: Path) -> None:
    """Put back `path` from `path.old` if a crash happened between the two renames of a swap."""
    path = Path(path)
    old = path.with_name(path.name + ".old")
    if old.exists() and not path.exists():
        os.replace(old, path)
    elif old.exists():
        shutil.rmtree(old, ignore_errors=True)

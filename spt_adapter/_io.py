"""Small file helpers shared by adapters, caches and trainers."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, fsync, rename.

    A failure at any point leaves whatever was at ``path`` before untouched and removes the
    temporary file. Concurrent writers of the same path each replace it whole; readers never see a
    partial file.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {directory} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        # mkstemp makes 0600 files; give the file the mode a plain open() would (umask applied)
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def write_once_bytes(path: str | os.PathLike, data: bytes) -> bool:
    """Write ``data`` to ``path`` atomically unless ``path`` exists: True when this call wrote it,
    False when another writer was first (its file is kept, never replaced: a cached artefact that
    finished runs were made with stays what they were made with). Readers never see a partial file."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {directory} does not exist")
    if path.exists():
        return False
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # atomic, and fails if path exists: the first writer wins
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: exclusive create, then the atomic rename
            try:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            except FileExistsError:
                return False
            os.replace(tmp, path)
        return True
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


#: the random middle of a temporary name from :func:`tempfile.mkstemp` (8 characters)
_TEMP_MIDDLE = r"[a-z0-9_]{8}"


def temporaries_of(path: str | os.PathLike) -> list[Path]:
    """The temporary files an atomic write of ``path`` (:func:`atomic_write_bytes`,
    :func:`write_once_bytes`) leaves when it is cut short by kill -9: ``.<name>.<8 random>.tmp`` in its
    folder, this naming only (a user's own hidden files never match)."""
    import re

    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    pattern = re.compile(rf"\.{re.escape(path.name)}\.{_TEMP_MIDDLE}\.tmp")
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return []
    return [Path(e.path) for e in entries if pattern.fullmatch(e.name) and e.is_file(follow_symlinks=False)]


def remove_stale_temporaries_of(path: str | os.PathLike, older_than: float | None = None) -> int:
    """Remove the temporaries of atomic writes of ``path`` cut short (:func:`temporaries_of`) last
    modified before ``older_than`` (a time.time(); None: all of them); returns how many. A write in
    progress touches its file within milliseconds, so a margin spares a concurrent writer's."""
    removed = 0
    for tmp in temporaries_of(path):
        try:
            if older_than is None or tmp.stat().st_mtime < older_than:
                tmp.unlink()
                removed += 1
        except FileNotFoundError:
            pass
    return removed


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when ``a`` and ``b`` both exist and are one file: the same path, a symlink to it or a hard
    link of it (same device and inode)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def why_not_a_file(path: str | os.PathLike) -> str | None:
    """None when ``path`` is a regular file (links followed), else why not, for a message: "does not
    exist", "is a folder", or "is not a regular file (a pipe, socket or device)"."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    return "is not a regular file (a pipe, socket or device); checkpoints are files"

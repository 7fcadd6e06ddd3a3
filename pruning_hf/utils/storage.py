"""Safe checkpoint writing: a folder appears complete at its path, or the old one stays.

Everything is written into a temporary sibling folder, flushed to disk, then swapped in with one
atomic ``renameat2(RENAME_EXCHANGE)`` (or, where the file system lacks it, two renames). A crash at
any moment leaves either the previous checkpoint or the new one at the target path, never a mix.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_directory", "atomic_file", "OutputPathError", "CheckpointWriteError", "check_output_dir",
           "folder_bytes"]

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


class OutputPathError(ValueError):
    """The output path cannot hold a checkpoint (it is a file, a foreign folder, or not writable)."""


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed midway (disk full, I/O error); the target path was left as it was."""


def folder_bytes(path: str | os.PathLike) -> int:
    """Total size in bytes of the regular files under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _finish_tree(root: Path) -> None:
    """Give files the usual umask permissions (mkdtemp makes 0700) and flush everything to disk."""
    umask = _umask()
    for path in sorted(root.rglob("*")) + [root]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)
        flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
        fd = os.open(path, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    if ctypes.get_errno() in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(ctypes.get_errno(), f"cannot swap {a} and {b}: {os.strerror(ctypes.get_errno())}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(parent: Path, name: str) -> None:
    """Delete temporary siblings left by killed writers (their pid is part of the name)."""
    for stale in parent.glob(f".{name}.*-*-*"):
        try:
            pid = int(stale.name.split("-")[-2])
        except (ValueError, IndexError):
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


def check_output_dir(target: Path) -> None:
    """Raise OutputPathError unless ``target`` can receive a checkpoint."""
    if target.exists() and not target.is_dir():
        raise OutputPathError(f"output path {str(target)!r} is a file; give a folder path")
    if target.is_dir() and any(target.iterdir()) and not (target / "config.json").is_file():
        raise OutputPathError(
            f"output folder {str(target)!r} is not empty and holds no checkpoint (no config.json); "
            "choose a new or empty folder, so nothing of yours is replaced")
    parent = target.parent
    while not parent.exists() and not parent.is_symlink():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputPathError(f"output path {str(target)!r} lies inside {str(parent)!r}, which is a file, "
                              "not a folder; choose another output folder")
    try:  # os.access says yes to root everywhere, and knows nothing of read-only file systems
        os.rmdir(tempfile.mkdtemp(prefix=".pruning_hf-probe-", dir=parent))
    except OSError as err:
        raise OutputPathError(f"cannot write in {str(parent)!r} ({err.strerror or err}); "
                              "choose another output folder") from None


@contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``target`` atomically, on failure it is removed.

    An existing ``target`` must be empty or a checkpoint (has ``config.json``): it is replaced whole.
    """
    target = Path(target).absolute()
    check_output_dir(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(target.parent, target.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    existed = target.exists()
    try:
        try:
            yield tmp
            _finish_tree(tmp)
        except OSError as err:  # disk full, I/O error: nothing was swapped in yet
            kept = "the previous checkpoint there is unchanged" if existed else "nothing was written there"
            failure = CheckpointWriteError(f"could not write the checkpoint to {str(target)!r} "
                                           f"({err.strerror or err}); {kept}")
            failure.errno = err.errno
            raise failure from err
        if not target.exists():
            os.rename(tmp, target)
        elif _exchange(tmp, target):
            shutil.rmtree(tmp)  # tmp now holds the previous checkpoint
        else:
            backup = target.parent / f".{target.name}.old-{os.getpid()}-{os.urandom(4).hex()}"
            os.rename(target, backup)
            os.rename(tmp, target)
            shutil.rmtree(backup)
        fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_file(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it is flushed and renamed over ``target``
    (a kill at any moment leaves the old file or the new one), on failure it is removed.

    Temporaries left by killed writers of the same file are deleted first.
    """
    target = Path(target)
    _remove_stale(target.parent, target.name)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

"""Crash-safe file writing: a file is either the old version or the complete new one."""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import torch

__all__ = ["atomic_write", "atomic_torch_save", "atomic_write_json", "RunLockError", "run_lock"]


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux ``/proc``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it, and put it straight back
    os.umask(mask)
    return mask


def _final_mode(path: Path) -> int:
    """The permission bits the written file gets: those of the file it replaces, or, for a new
    file, ``0o666 & ~umask`` (what ``open(path, 'w')`` would give)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, fsync it, then rename it
    over ``path`` (``os.replace`` is atomic on POSIX and Windows). If ``write`` raises or the
    process dies, ``path`` keeps its previous content and the temporary file is removed (or
    left as ``.<name>.*.tmp`` after a hard kill).

    The result has normal permissions: a new file gets ``0o666 & ~umask`` (``mkstemp``'s
    private 0600 is not kept), a replaced file keeps its mode.

    Raises:
        Whatever ``write`` raises; IsADirectoryError if ``path`` is a directory; OSError if the
        directory is not writable.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a file", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _final_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, mode)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` through :func:`atomic_write`."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON through :func:`atomic_write`."""

    def _write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=indent)
            f.write("\n")

    atomic_write(path, _write)


class RunLockError(RuntimeError):
    """Another live process holds the out dir's run lock."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@contextmanager
def run_lock(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold ``<out_dir>/.varifocal.lock`` (created with ``O_EXCL``, holding this process id)
    for the duration, so that a second run writing into the same folder refuses instead of
    interleaving its checkpoints with ours. A lock left by a process that no longer exists (a
    crash, ``kill -9``) is taken over.

    Raises:
        RunLockError: a live process holds the lock (the message names it and the folder).
    """
    path = Path(out_dir) / ".varifocal.lock"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666 & ~_umask())
        except FileExistsError:
            try:
                holder = int(path.read_text().strip() or "0")
            except (OSError, ValueError):
                holder = 0
            if holder and holder != os.getpid() and _pid_alive(holder):
                raise RunLockError(
                    f"{out_dir}: another run (process {holder}) is writing to this folder; wait for it or "
                    "choose another train.out_dir"
                ) from None
            path.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        break
    else:
        raise RunLockError(f"{out_dir}: could not take the run lock {path}")
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)

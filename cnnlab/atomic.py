"""Writes that leave a file either as it was or complete, whenever the process dies: a temp file beside it,
fsync, then an atomic rename.

Temp files are named `.<name>.<host>.<pid>.<random>.tmp`: a writer never touches another live writer's temp
file, and one left by a killed process is removed when its process is gone (same host) or it is a day old.
Files get the permissions the user's umask gives (not mkstemp's 0600). A failed write raises a one-line
CnnlabError that names the path and what to do.
"""

from __future__ import annotations

import errno
import io
import os
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

from cnnlab import CnnlabError

STALE_AFTER_S = 24 * 3600
HOST = socket.gethostname().replace(".", "_")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()


def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any]) -> None:
    """Create or replace `path` with what `write(f)` writes to a binary file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_orphans(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{HOST}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise write_error(path, e) from e
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise write_error(path, e) from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_orphans(path: Path) -> None:
    """Remove temp files of `path` whose writer is gone: its process has ended (same host), or a day has passed."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        host, pid = _writer(tmp, path.name)
        try:
            old = time.time() - tmp.stat().st_mtime > STALE_AFTER_S
        except FileNotFoundError:
            continue  # its writer just renamed or removed it
        if old or (host == HOST and pid is not None and not _alive(pid)):
            tmp.unlink(missing_ok=True)


def _writer(tmp: Path, name: str) -> tuple[str | None, int | None]:
    parts = tmp.name[len(name) + 2:].split(".")  # <host>.<pid>.<random>.tmp
    if len(parts) == 4 and parts[1].isdigit():
        return parts[0], int(parts[1])
    return None, None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


ADVICE = {errno.ENOSPC: "the disk is full: free space there, or choose another dir",
          errno.EDQUOT: "the disk quota is used up: free space there, or choose another dir",
          errno.EFBIG: "the file is larger than this process may write (ulimit -f)",
          errno.EACCES: "permission denied: make it writable, or choose another dir",
          errno.EPERM: "permission denied: make it writable, or choose another dir",
          errno.EROFS: "the file system is read-only: choose another dir"}


def write_error(path: Path, e: OSError) -> CnnlabError:
    advice = ADVICE.get(e.errno, e.strerror or type(e).__name__)
    return CnnlabError(f"cannot write {path}: {advice}; nothing was changed there")


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save `obj` to `path` atomically. Serialised in memory first, so that a failing disk reports its own
    error (torch's zip writer would turn it into an opaque one)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))

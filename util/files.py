"""Writing files so that nothing is ever half-written, and cleaning up after writers that were killed.

Every file the project writes for a run (configs, metrics, checkpoints, stores) is written to a
temp name beside its target and renamed over it. Temp names carry the host and the process id
(``.<name>.tmp.<host>.<pid>...``), so a later start on the same host can tell the leftovers of a
killed writer (its process is gone) from a writer that is still running, even on a file system that
several hosts share.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Union

__all__ = ["temp_path", "atomic_write_bytes", "atomic_write_text", "remove_stale_temp_files", "free_space",
           "describe_os_error"]

_HOST = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40] or "host"
_TEMP = re.compile(r"^\.(?P<name>.+)\.tmp\.(?P<host>[A-Za-z0-9_-]+)\.(?P<pid>\d+)(\..*)?$")


def temp_path(path: Union[str, os.PathLike], tag: str = "") -> str:
    """The temp name of ``path`` for this process: ``<dir>/.<name>.tmp.<host>.<pid>[.<tag>]``."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.tmp.{_HOST}.{os.getpid()}" + (f".{tag}" if tag else ""))


def atomic_write_bytes(path: Union[str, os.PathLike], data: Union[bytes, memoryview]) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync, rename over ``path``. On any error the
    temp file is removed and ``path`` is left as it was; an ``OSError`` names ``path``."""
    path = os.fspath(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise OSError(e.errno, e.strerror, path) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: Union[str, os.PathLike], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp_files(folder: Union[str, os.PathLike]) -> list[str]:
    """Remove this host's temp files and folders in ``folder`` whose writer process is gone (a
    killed checkpoint write, an interrupted store build). Returns what was removed."""
    removed = []
    try:
        entries = os.listdir(folder)
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP.match(entry)
        if not match or match["host"] != _HOST or _pid_alive(int(match["pid"])):
            continue
        full = os.path.join(folder, entry)
        try:
            shutil.rmtree(full) if os.path.isdir(full) and not os.path.islink(full) else os.remove(full)
            removed.append(full)
        except OSError:
            pass
    return removed


def free_space(path: Union[str, os.PathLike]) -> str:
    """Free space on the file system of ``path`` (or of its nearest existing parent), e.g. ``1.2 GB``."""
    probe = Path(os.path.abspath(path))
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return "unknown"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if free < 1024 or unit == "TB":
            return f"{free:.0f} {unit}" if unit == "B" else f"{free:.1f} {unit}"
        free /= 1024
    return "unknown"


_ADVICE = {
    errno.ENOSPC: "the disk is full: free some space or point the run elsewhere (paths.log_dir, paths.data_dir)",
    errno.EDQUOT: "the disk quota is used up: free some space or point the run elsewhere",
    errno.EFBIG: "the file is larger than this process may write (ulimit -f): raise the limit or write elsewhere",
    errno.EACCES: "no permission: choose a folder you can write (paths.log_dir, paths.data_dir)",
    errno.EPERM: "not permitted: choose a folder you can write (paths.log_dir, paths.data_dir)",
    errno.EROFS: "the file system is read-only: write the run elsewhere (paths.log_dir, paths.data_dir)",
    errno.ENOTDIR: "a part of the path is a file, not a folder: fix the path",
    errno.EISDIR: "the path is a folder where a file was expected: fix the path",
    errno.ENOENT: "it does not exist",
}


def describe_os_error(e: OSError) -> str:
    """One line for an ``OSError`` on a user's path: what failed, where, the free space, what to do."""
    where = e.filename if e.filename is not None else "a file"
    if e.filename2 is not None:
        where = f"{where} -> {e.filename2}"
    advice = _ADVICE.get(e.errno, "check the path")
    space = f"; {free_space(e.filename)} free there" if e.filename is not None and e.errno in (
        errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else ""
    return f"{e.strerror or type(e).__name__} ({where}){space}: {advice}."

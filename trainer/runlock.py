"""One process writes a run directory: the one holding its lock (flock on run_dir/lock, 0600)."""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path


class RunLockedError(RuntimeError):
    pass


class RunLock:
    """Held from construction until release(); the kernel drops it if the process dies."""

    def __init__(self, run_dir: Path | str):
        self.path = Path(run_dir) / "lock"
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLockedError(f"run directory {run_dir} is in use by {owner(run_dir)}; "
                                 "stop that trainer first, or attach to it") from None
        self.info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self.info).encode(), 0)
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor drops the flock


def owner(run_dir: Path | str) -> str:
    """Who holds the lock, in words, from the lock file."""
    try:
        info = json.loads((Path(run_dir) / "lock").read_text() or "{}")
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"]))
        return f"process {info['pid']} on {info['host']} (since {started})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"

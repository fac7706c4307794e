"""One writer per run folder: ``<run folder>/.fedbench.lock``, held for the run's life.

The lock is an exclusive ``fcntl.flock`` on the file, taken without waiting: the kernel releases
it when the holding process ends in any way (exit, exception, SIGKILL), so a lock left by a dead
process never blocks anyone, and no stale-lock cleanup is needed. The file also records the
holder (pid, host, start time) so that a second process can say who holds the folder. The file
itself stays in the folder (removing it would race with a new holder); its contents are only a
description.

flock works between processes of one machine and on most network filesystems that forward
locks (NFSv4, Lustre with ``flock`` mounts); where a filesystem ignores locks, two writers are
not detected.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from fedbench.errors import ConfigError

LOCK_FILE = ".fedbench.lock"


class RunFolderBusy(ConfigError):
    """Another live process holds the run folder's lock."""

    def __init__(self, out_dir: Path, holder: dict) -> None:
        self.out_dir, self.holder = out_dir, holder
        who = (
            f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} since {holder.get('since', '?')}"
            if holder
            else "another process"
        )
        super().__init__(
            "hydra.run.dir",
            f"run folder {out_dir} is being written by {who}; wait for it to end, or use another folder",
        )


def holder(out_dir: Path) -> dict:
    """What the lock file says about its holder ({} if unreadable)."""
    try:
        info = json.loads((Path(out_dir) / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


@contextlib.contextmanager
def run_folder_lock(out_dir: Path | None) -> Iterator[None]:
    """Hold ``out_dir``'s lock while the block runs (nothing for ``None``); RunFolderBusy if a
    live process holds it."""
    if out_dir is None:
        yield
        return
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(out_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderBusy(out_dir, holder(out_dir)) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock

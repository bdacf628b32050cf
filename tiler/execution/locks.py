"""One run per output and per workdir: an exclusive OS lock (``flock``) on ``PATH.lock`` beside
each, held for the run. The kernel releases it when the process ends, however it ends, so a killed
run never leaves a stale lock; a second run is refused at once, naming the holder's PID and how
long it has run. ``--overwrite`` does not break a live lock."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from tiler.errors import OutputError


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def holding(path: Path, what: str):
    """Hold the lock of ``path`` (the output, the workdir: ``what``) for the ``with`` block."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system: no OS lock to take
        yield
        return
    target = lock_path(Path(path))
    while True:
        descriptor = os.open(target, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(descriptor)
            os.close(descriptor)
            raise OutputError(
                f"{path}: another tiler run is writing this {what} ({holder}); wait for it to "
                f"end or stop it (its lock: {target})"
            ) from None
        if _still_there(descriptor, target):
            break
        os.close(descriptor)  # the last holder removed the file as we opened it: take a new one
    os.ftruncate(descriptor, 0)
    os.write(descriptor, f"{os.getpid()} {time.time():.0f}\n".encode())
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            target.unlink()
        os.close(descriptor)


def _still_there(descriptor: int, target: Path) -> bool:
    try:
        return os.fstat(descriptor).st_ino == os.stat(target).st_ino
    except FileNotFoundError:
        return False


def _holder(descriptor: int) -> str:
    """'PID N, running for T' from the lock file, as far as it can be read."""
    try:
        pid, started = os.pread(descriptor, 64, 0).decode().split()
        return f"PID {pid}, running for {_duration(time.time() - float(started))}"
    except (OSError, ValueError):
        return "PID unknown"


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"

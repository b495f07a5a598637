"""The few file operations durability rests on, written once.

A write can be short on a nearly full disk without raising, a rename is only durable
once its directory is synced, and a small state file must never be seen half-written:
the spool, the WAL and the aggregator's state files all depend on getting these right.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path


def write_all(fd: int, data: bytes) -> None:
    """Write every byte (a short write is retried until the disk refuses outright)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_dir(directory: Path) -> None:
    """Make the entries of ``directory`` (a new or renamed file) survive a power loss."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: Path, data: bytes) -> None:
    """Swap in a small state file whole: readers see the old content or the new one.

    No fsync: these files (cursors, counters, snapshots) may go back to an older
    version after a power loss, which only means some work is done twice.
    """
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def append_rotating(path: Path, data: bytes, max_bytes: int) -> None:
    """Append ``data`` and fsync it; a file already ``max_bytes`` long first becomes ``.1``.

    For the dead-letter files: bounded (one old file kept), and what was appended is on
    disk before the caller moves on.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.stat().st_size >= max_bytes:
        os.replace(path, path.with_name(path.name + ".1"))
    with open(path, "ab") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


class QueuedAppends:
    """Lines queued from any thread, appended and synced together by ``flush``.

    The dead-letter files of reports and of notifications: queueing is cheap on the hot
    path, ``flush`` (blocking: run it off the event loop) writes them with one fsync, and
    lines a full disk refused stay queued for the next flush, in order.
    """

    def __init__(self, path: Path, *, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._pending: list[bytes] = []
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        """Lines queued but not yet written."""
        return len(self._pending)

    def queue(self, line: bytes) -> None:
        """Queue one line (its newline included)."""
        with self._lock:
            self._pending.append(line)

    def flush(self) -> None:
        """Append and fsync what was queued; OSError leaves it queued."""
        with self._lock:
            lines, self._pending = self._pending, []
        if not lines:
            return
        try:
            append_rotating(self.path, b"".join(lines), self.max_bytes)
        except OSError:
            with self._lock:  # not written: they go out with the next flush
                self._pending[:0] = lines
            raise

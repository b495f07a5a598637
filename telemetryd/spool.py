"""The agent's spool: every report on disk, synced, until the broker acknowledges it.

One file per report (``<time_ns>-<boot_id>-<seq>.json``), written to a temporary name,
fsynced and renamed into place, then the directory is synced: after a SIGKILL or a power
loss a report is either whole on disk or was never acknowledged as spooled. A file is
removed only after the broker's PUBACK. Names sort by time, so the oldest goes first
both when draining and when the spool is over its bounds (bytes, age): then the oldest are
dropped and every drop is counted, in a counter that survives restarts.

Why files and not one log: removal after an out-of-order PUBACK is an unlink, with no
bookkeeping to get wrong; a report every few seconds makes the per-file cost irrelevant.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from telemetryd.durable import fsync_dir, replace_file, write_all

log = logging.getLogger(__name__)

SUFFIX = ".json"
_STATE = "spool.state"  # not *.json: only reports end in SUFFIX


class SpoolError(Exception):
    """The spool could not write (disk full, read-only, gone); the report is kept in memory."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One spooled report."""

    name: str
    size: int
    time_ns: int


def entry_name(time_ns: int, boot_id: str, seq: int) -> str:
    """The file name of a report: sorts by time, unique per (boot, seq)."""
    return f"{time_ns:020d}-{boot_id}-{seq:012d}{SUFFIX}"


class Spool:
    """A bounded directory of reports; thread-safe (appends and removals run off the loop)."""

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        max_age_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {}
        self.bytes = 0
        self.dropped = 0  # since the spool was created, across restarts
        self.errors = 0

    def open(self) -> list[Entry]:
        """Create the directory, recover what a previous run left, apply the bounds."""
        self.directory.mkdir(parents=True, exist_ok=True)
        state = self.directory / _STATE
        if state.is_file():
            try:
                self.dropped = int(json.loads(state.read_text())["dropped"])
            except (ValueError, KeyError, TypeError):
                log.warning("spool state %s unreadable; drop counter restarts at 0", state)
        for path in self.directory.iterdir():
            if path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)  # a write that never completed: never acked
            elif path.name.endswith(SUFFIX):
                try:
                    time_ns = int(path.name.split("-", 1)[0])
                    size = path.stat().st_size
                except (ValueError, OSError):
                    log.warning("ignoring unexpected file in the spool: %s", path)
                    continue
                self._entries[path.name] = Entry(path.name, size, time_ns)
                self.bytes += size
        self._entries = dict(sorted(self._entries.items()))
        with self._lock:
            self._enforce(keep=None)
        if self._entries:
            log.info("spool holds %d report(s) from before: they go first", len(self._entries))
        return self.entries()

    def entries(self) -> list[Entry]:
        """Every spooled report, oldest first."""
        with self._lock:
            return list(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, entry: Entry) -> bool:
        return entry.name in self._entries

    def append(self, name: str, payload: bytes) -> Entry:
        """Write a report durably; raise SpoolError (counted) if the disk refuses."""
        path = self.directory / name
        tmp = path.with_name(name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                write_all(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            fsync_dir(self.directory)
        except OSError as exc:
            self.errors += 1
            with contextlib.suppress(OSError):  # a failing disk may refuse the cleanup too
                tmp.unlink(missing_ok=True)
            raise SpoolError(f"cannot spool to {self.directory}: {exc.strerror or exc}") from None
        entry = Entry(name, len(payload), int(name.split("-", 1)[0]))
        with self._lock:
            newest = next(reversed(self._entries), "")
            self._entries[name] = entry
            if name < newest:  # the clock stepped back: keep oldest-first by name
                self._entries = dict(sorted(self._entries.items()))
            self.bytes += entry.size
            self._enforce(keep=name)
        return entry

    def read(self, entry: Entry) -> bytes | None:
        """The report's bytes, or None if it was dropped or acknowledged meanwhile."""
        try:
            return (self.directory / entry.name).read_bytes()
        except FileNotFoundError:
            return None

    def remove(self, entry: Entry) -> None:
        """Forget a report the broker acknowledged (a lost unlink only means a duplicate)."""
        with self._lock:
            if self._entries.pop(entry.name, None) is None:
                return
            self.bytes -= entry.size
        try:
            (self.directory / entry.name).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove %s from the spool (%s); it may be sent twice", entry, exc)

    def _enforce(self, keep: str | None) -> None:
        """Drop the oldest reports beyond the byte and age bounds (caller holds the lock)."""
        oldest_allowed = int((self._clock() - self.max_age_s) * 1e9)
        dropped = 0
        for name, entry in list(self._entries.items()):
            over = self.bytes > self.max_bytes or entry.time_ns < oldest_allowed
            if not over or name == keep:
                break
            del self._entries[name]
            self.bytes -= entry.size
            (self.directory / name).unlink(missing_ok=True)
            dropped += 1
        if dropped:
            self.dropped += dropped
            log.warning(
                "spool over its bounds (%d bytes, %gs): dropped %d oldest report(s), %d in all",
                self.max_bytes,
                self.max_age_s,
                dropped,
                self.dropped,
            )
            self._save_state()

    def _save_state(self) -> None:
        try:
            replace_file(self.directory / _STATE, json.dumps({"dropped": self.dropped}).encode())
        except OSError as exc:
            log.warning("cannot save the spool's drop counter: %s", exc)

"""Where a service keeps its state, and making sure only one process uses it.

Under systemd ``StateDirectory=telemetryd`` gives ``$STATE_DIRECTORY``; otherwise the
default is /var/lib/telemetryd. Two agents sharing one spool would publish each other's
reports, so each service takes an exclusive lock on its directory and a second one fails
at start with one line that names the holder.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from telemetryd.errors import TelemetrydError

DEFAULT = "/var/lib/telemetryd"


class StateDirError(TelemetrydError):
    """The state directory cannot be created, written or locked."""


def resolve(configured: str, env: Mapping[str, str] | None = None) -> Path:
    """The configured directory, else $STATE_DIRECTORY (first entry), else the default."""
    env = os.environ if env is None else env
    if configured:
        return Path(configured)
    from_systemd = env.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(from_systemd or DEFAULT)


class StateLock:
    """An flock on ``<dir>/<role>.lock`` held for the life of the process."""

    def __init__(self, directory: Path, role: str) -> None:
        self.path = directory / f"{role}.lock"
        self._handle: IO[str] | None = None

    def acquire(self) -> None:
        """Create the directory and lock it; StateDirError if impossible or taken."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held for life
        except OSError as exc:
            raise StateDirError(
                f"state directory {self.path.parent}: {exc.strerror or exc} "
                "(set --state-dir, or run with a writable StateDirectory)"
            ) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise StateDirError(
                f"state directory {self.path.parent} is in use by pid {holder}; "
                "give each agent or aggregator its own --state-dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        """Unlock (also happens when the process dies)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

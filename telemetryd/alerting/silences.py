"""Silences: matchers that mute alerts for a while, with who set them and why.

One JSON file, ``<dir>/silences.json``, shared by two processes: the CLI writes it
(``alerts silence`` / ``unsilence``) and the running aggregator re-reads it when it
changes. Every change is a read-modify-write under an flock on ``silences.lock`` and an
atomic replace, so neither side loses the other's writes and no reader ever sees half a
file; the reader's check is a single ``stat`` per tick.
"""

from __future__ import annotations

import builtins
import fcntl
import json
import logging
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from telemetryd.alerting.durations import Clock, SystemClock
from telemetryd.alerting.matchers import Matcher, matches_all, parse_matcher
from telemetryd.durable import replace_file
from telemetryd.errors import TelemetrydError

log = logging.getLogger(__name__)

FILE = "silences.json"
LOCK = "silences.lock"
RETENTION_S = 5 * 86400.0  # expired silences are kept this long for `alerts list`
_VERSION = 1
State = Literal["pending", "active", "expired"]


class SilenceError(TelemetrydError):
    """A silence that cannot be added or found, or a silences file that cannot be read."""


@dataclass(frozen=True)
class Silence:
    """Alerts matching every matcher are muted from ``starts_ns`` until ``ends_ns``."""

    id: str
    matchers: tuple[Matcher, ...]
    starts_ns: int
    ends_ns: int
    created_by: str
    comment: str
    created_ns: int

    def state(self, now_ns: int) -> State:
        """Pending (not started), active, or expired."""
        if now_ns >= self.ends_ns:
            return "expired"
        return "active" if now_ns >= self.starts_ns else "pending"

    def mutes(self, labels: Mapping[str, str], now_ns: int) -> bool:
        """Whether it is active now and matches ``labels``."""
        return self.starts_ns <= now_ns < self.ends_ns and matches_all(self.matchers, labels)

    def to_json(self) -> dict[str, Any]:
        """The record kept in the file (matchers in their Alertmanager spelling)."""
        return {
            "id": self.id, "matchers": [str(m) for m in self.matchers],
            "starts_ns": self.starts_ns, "ends_ns": self.ends_ns, "created_by": self.created_by,
            "comment": self.comment, "created_ns": self.created_ns,
        }  # fmt: skip

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> Silence:
        """Read one record back; KeyError, TypeError or ValueError when it is malformed."""
        return cls(
            id=str(record["id"]), matchers=tuple(parse_matcher(m) for m in record["matchers"]),
            starts_ns=int(record["starts_ns"]), ends_ns=int(record["ends_ns"]),
            created_by=str(record["created_by"]), comment=str(record["comment"]),
            created_ns=int(record["created_ns"]),
        )  # fmt: skip


class SilenceStore:
    """The silences of one state directory, as the CLI and the aggregator both see them."""

    def __init__(
        self, directory: Path, *, clock: Clock | None = None, retention_s: float = RETENTION_S
    ) -> None:
        self.directory = directory
        self.path = directory / FILE
        self.clock = clock or SystemClock()
        self.retention_ns = int(retention_s * 1e9)
        self._silences: dict[str, Silence] = {}
        self._seen: tuple[int, int, int] | None = None  # (inode, size, mtime) last read
        self.reload_if_changed()

    # -- reading ---------------------------------------------------------------------------

    def list(self) -> list[Silence]:
        """Every kept silence (expired ones until their retention ends), oldest first."""
        return sorted(self._silences.values(), key=lambda s: (s.created_ns, s.id))

    def active(self, now_ns: int | None = None) -> builtins.list[Silence]:
        """The silences muting alerts now."""
        now = self.clock.time_ns() if now_ns is None else now_ns
        return [s for s in self.list() if s.state(now) == "active"]

    def muted(self, labels: Mapping[str, str], now_ns: int | None = None) -> builtins.list[str]:
        """Ids of the active silences that mute an alert with ``labels``."""
        now = self.clock.time_ns() if now_ns is None else now_ns
        return [s.id for s in self._silences.values() if s.mutes(labels, now)]

    def get(self, id_or_prefix: str) -> Silence:
        """The silence with this id or unique id prefix; SilenceError otherwise."""
        if id_or_prefix in self._silences:
            return self._silences[id_or_prefix]
        found = [s for s in self._silences.values() if s.id.startswith(id_or_prefix)]
        if len(found) == 1 and id_or_prefix:
            return found[0]
        if not found:
            raise SilenceError(f"no silence with id {id_or_prefix!r} (see `alerts list`)")
        raise SilenceError(f"silence id prefix {id_or_prefix!r} is ambiguous; give more of it")

    def reload_if_changed(self) -> bool:
        """Re-read the file if another process replaced it; cheap (one stat) when not.

        A file that cannot be read or parsed keeps the silences last read and is logged:
        a bad edit must not lift every silence at once.
        """
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            changed = self._seen is not None
            self._silences, self._seen = {}, None
            return changed
        except OSError as exc:
            log.warning("silences: cannot stat %s: %s", self.path, exc.strerror or exc)
            return False
        seen = (st.st_ino, st.st_size, st.st_mtime_ns)
        if seen == self._seen:
            return False
        try:
            self._silences = self._read()
        except SilenceError as exc:
            log.warning("%s; keeping the %d silences read before", exc, len(self._silences))
        self._seen = seen
        return True

    def _read(self) -> dict[str, Silence]:
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise SilenceError(f"silences file {self.path}: cannot read: {exc}") from None
        try:
            silences = [Silence.from_json(r) for r in data["silences"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise SilenceError(f"silences file {self.path}: malformed record: {exc}") from None
        return {s.id: s for s in silences}

    # -- writing (CLI side, also usable by the aggregator) ---------------------------------

    def add(
        self,
        matchers: Sequence[str | Matcher],
        *,
        ends_ns: int,
        created_by: str,
        comment: str,
        starts_ns: int | None = None,
        silence_id: str | None = None,
    ) -> Silence:
        """Add a silence and write the file; SilenceError names what is wrong with it.

        Like Alertmanager, at least one matcher must not match an empty label, so a silence
        cannot mute every alert by accident. With ``silence_id`` (derived from a request's
        id) adding is idempotent: if a silence of that id is kept, even expired, it is
        returned unchanged, so a request delivered twice mutes once.
        """
        now = self.clock.time_ns()
        try:
            parsed = tuple(m if isinstance(m, Matcher) else parse_matcher(m) for m in matchers)
        except ValueError as exc:
            raise SilenceError(f"silence matcher: {exc}") from None
        starts = now if starts_ns is None else starts_ns
        if not parsed:
            raise SilenceError('a silence needs at least one matcher, such as node="n17"')
        if all(m.matches({}) for m in parsed):
            raise SilenceError(
                "a silence needs a matcher that does not match an empty label "
                f"(these would mute every alert: {', '.join(map(str, parsed))})"
            )
        if ends_ns <= max(starts, now):
            raise SilenceError("a silence must end in the future and after it starts")
        if not created_by.strip():
            raise SilenceError("a silence needs its author (created_by)")
        silence = Silence(
            id=silence_id or str(uuid.uuid4()), matchers=parsed, starts_ns=starts, ends_ns=ends_ns,
            created_by=created_by, comment=comment, created_ns=now,
        )  # fmt: skip
        with self._locked() as current:
            silence = current.setdefault(silence.id, silence)
        return silence

    def expire(self, id_or_prefix: str) -> Silence:
        """End a silence now (``alerts unsilence``); the alerts it muted notify again."""
        now = self.clock.time_ns()
        with self._locked() as current:
            self._silences = current
            silence = self.get(id_or_prefix)
            if silence.state(now) == "expired":
                raise SilenceError(f"silence {silence.id} has already expired")
            ended = replace(silence, ends_ns=now, starts_ns=min(silence.starts_ns, now))
            current[silence.id] = ended
        return ended

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Silence]]:
        """Read the file under the lock, let the caller change it, prune and write it back."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / LOCK, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self._read()
            yield current
            cutoff = self.clock.time_ns() - self.retention_ns
            kept = {k: s for k, s in current.items() if s.ends_ns > cutoff}
            records = [s.to_json() for s in sorted(kept.values(), key=lambda s: s.created_ns)]
            body = json.dumps({"version": _VERSION, "silences": records}, indent=1)
            replace_file(self.path, body.encode() + b"\n")
            self._silences = kept
            st = os.stat(self.path)
            self._seen = (st.st_ino, st.st_size, st.st_mtime_ns)

"""What each receiver was told about each alert group: Alertmanager's notification log.

The dispatcher compares a group's alerts with this record to decide whether a receiver
must hear anything. It is written to ``notify-state.json`` after deliveries, together
with the resolves still owed to receivers, so a restarted aggregator fed the same firing
alerts again neither repeats a notification nor forgets one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from telemetryd.alerting.model import Alert
from telemetryd.codec import DecodeError, Struct, encode_json, json_decoder
from telemetryd.codec import field as sfield
from telemetryd.durable import replace_file

log = logging.getLogger(__name__)

FILE = "notify-state.json"
RETENTION_S = 5 * 86400.0  # what a receiver heard about a group that is gone, kept this long


@dataclass(frozen=True)
class Told:
    """What one receiver last heard about one group, and when."""

    firing: frozenset[str]  # fingerprints
    resolved: frozenset[str]
    sent_ns: int


NOTHING = Told(frozenset(), frozenset(), 0)


class _Record(Struct, kw_only=True):
    firing: list[str] = sfield(default_factory=list)
    resolved: list[str] = sfield(default_factory=list)
    sent_ns: int = 0


class _File(Struct, kw_only=True):
    version: int = 1
    told: dict[str, _Record] = sfield(default_factory=dict)  # "<receiver>/<group key>"
    pending_resolved: list[Alert] = sfield(default_factory=list)  # resolves still owed


_decode = json_decoder(_File)


class NotifyLog:
    """The record, keyed ``<receiver>/<group key>``, and its file."""

    def __init__(self, path: Path, *, retention_s: float = RETENTION_S) -> None:
        self.path = path
        self.retention_ns = int(retention_s * 1e9)
        self.told: dict[str, Told] = {}

    def get(self, key: str) -> Told | None:
        """What the receiver of this group last heard, or None."""
        return self.told.get(key)

    def load(self) -> list[Alert]:
        """Read the file; returns the resolved alerts whose resolve was not yet sent.

        An unreadable file is logged and ignored: receivers may hear again about alerts
        they were told of, which beats not starting.
        """
        try:
            data = _decode(self.path.read_bytes())
        except FileNotFoundError:
            return []
        except (OSError, DecodeError) as exc:
            log.warning("alerts: %s unreadable (%s); receivers may be told again about "
                        "firing alerts", self.path, exc)  # fmt: skip
            return []
        for key, rec in data.told.items():
            self.told[key] = Told(frozenset(rec.firing), frozenset(rec.resolved), rec.sent_ns)
        return data.pending_resolved

    def snapshot(self, live: set[str], pending: Iterable[Alert], now_ns: int) -> bytes:
        """The file's content; records of gone groups are dropped past their retention."""
        cutoff = now_ns - self.retention_ns
        self.told = {k: t for k, t in self.told.items() if k in live or t.sent_ns >= cutoff}
        told = {
            key: _Record(firing=sorted(t.firing), resolved=sorted(t.resolved), sent_ns=t.sent_ns)
            for key, t in self.told.items()
        }
        return encode_json(_File(told=told, pending_resolved=list(pending)))

    def write(self, data: bytes) -> None:
        """Swap the file in whole (blocking; the dispatcher runs it off the event loop)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        replace_file(self.path, data)

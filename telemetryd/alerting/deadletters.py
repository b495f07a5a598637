"""Notifications no receiver would take: ``deadletter.jsonl``, for the operator to see.

One JSON object per line (time, receiver, attempts, reason, the notification), fsync'd
before it counts as kept, so an alert that could not be delivered is never lost without
a trace; ``alerts list`` shows them. Bounded like the aggregator's own dead-letter file:
past ``max_bytes`` the file is rotated to ``.1`` (one old file kept), so a receiver down
for a week cannot fill the disk.
"""

from __future__ import annotations

import contextlib
import datetime
import json
from pathlib import Path
from typing import Any

from telemetryd.alerting.model import Notification
from telemetryd.codec import encode_json
from telemetryd.durable import QueuedAppends

FILE = "deadletter.jsonl"


class DeadLetterFile(QueuedAppends):
    """``deadletter.jsonl``: notifications that could not be delivered, synced, rotated once."""

    def __init__(self, path: Path, *, max_bytes: int = 16 << 20) -> None:
        super().__init__(path, max_bytes=max_bytes)

    def add(
        self, receiver: str, attempts: int, reason: str, note: Notification, time_ns: int
    ) -> None:
        """Queue one record (written by ``flush``)."""
        when = datetime.datetime.fromtimestamp(time_ns / 1e9, datetime.UTC).isoformat()
        record = {"time": when, "receiver": receiver, "attempts": attempts, "reason": reason,
                  "notification": note}  # fmt: skip
        self.queue(encode_json(record) + b"\n")


def read_deadletters(directory: Path, limit: int = 0) -> list[dict[str, Any]]:
    """Dead letters of ``<directory>/deadletter.jsonl`` (and its rotated file), oldest first.

    ``limit`` > 0 keeps only the newest that many. A torn last line (a crash mid-write)
    is skipped.
    """
    records: list[dict[str, Any]] = []
    path = directory / FILE
    for part in (path.with_name(path.name + ".1"), path):
        try:
            text = part.read_text(encoding="utf-8")
        except FileNotFoundError:
            continue
        for line in text.split("\n"):
            with contextlib.suppress(ValueError):
                if line:
                    records.append(json.loads(line))
    return records[-limit:] if limit > 0 else records

"""The dead-letter file: every refused message, with its reason, kept for the operator.

JSON lines (time, topic, reason, detail, payload), synced before the refused message is
acknowledged, so nothing refused is ever lost without a trace. Bounded: past
``max_bytes`` the file is rotated to ``.1`` (one old file is kept), so a flood of bad
messages cannot fill the disk.
"""

from __future__ import annotations

import base64
import datetime
import json
import threading
from collections import Counter
from pathlib import Path

from telemetryd.durable import QueuedAppends

_PAYLOAD_KEEP = 64 << 10  # an oversized payload is kept in part: enough to see what it was


class DeadLetters(QueuedAppends):
    """Appends dead letters; ``flush`` syncs them (call before acknowledging)."""

    def __init__(self, path: Path, *, max_bytes: int) -> None:
        super().__init__(path, max_bytes=max_bytes)
        self.counts: Counter[str] = Counter()
        self._counting = threading.Lock()  # adds come from several threads

    def add(self, topic: str, reason: str, detail: str, payload: bytes, time_ns: int) -> None:
        """Queue one dead letter and count it under ``reason``."""
        record: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(time_ns / 1e9, datetime.UTC).isoformat(),
            "topic": topic,
            "reason": reason,
            "detail": detail,
        }
        kept = payload[:_PAYLOAD_KEEP]
        if len(payload) > len(kept):
            record["truncated_from"] = len(payload)
        try:
            record["payload"] = kept.decode("utf-8")
        except UnicodeDecodeError:
            record["payload_base64"] = base64.b64encode(kept).decode()
        self.queue(json.dumps(record, ensure_ascii=False).encode() + b"\n")
        with self._counting:
            self.counts[reason] += 1

    def read(self) -> list[dict[str, object]]:
        """Every dead letter in the current file (for tests and the operator's tools)."""
        if not self.path.exists():
            return []
        text = self.path.read_text(encoding="utf-8")
        return [json.loads(line) for line in text.split("\n") if line]

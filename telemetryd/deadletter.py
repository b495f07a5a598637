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

from telemetryd.durable import append_rotating

_PAYLOAD_KEEP = 64 << 10  # an oversized payload is kept in part: enough to see what it was


class DeadLetters:
    """Appends dead letters; ``flush`` syncs them (call before acknowledging)."""

    def __init__(self, path: Path, *, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.counts: Counter[str] = Counter()
        self._pending: list[bytes] = []
        self._lock = threading.Lock()

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
        line = json.dumps(record, ensure_ascii=False).encode() + b"\n"
        with self._lock:
            self._pending.append(line)
            self.counts[reason] += 1

    def flush(self) -> None:
        """Write and sync what was queued (blocking: run off the event loop)."""
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

    def read(self) -> list[dict[str, object]]:
        """Every dead letter in the current file (for tests and the operator's tools)."""
        if not self.path.exists():
            return []
        text = self.path.read_text(encoding="utf-8")
        return [json.loads(line) for line in text.split("\n") if line]

"""Log lines routed into a full-screen UI instead of onto its screen.

A StreamHandler set up before a full-screen app starts still holds the real stderr, so a
warning (a reconnect, the broker refusing MQTT 5) would be written across the UI. While
the UI runs, the root logger's handlers are swapped for one that hands each line of
WARNING and above to the UI (its status bar shows the newest); they are put back after.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class _ToCallback(logging.Handler):
    def __init__(self, sink: Callable[[str], None]) -> None:
        super().__init__(logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sink(record.getMessage().splitlines()[0] if record.msg else "")
        except Exception:  # noqa: BLE001 - a log line must never break the UI
            self.handleError(record)


@contextmanager
def logs_into(sink: Callable[[str], None]) -> Iterator[None]:
    """Within the block, root log lines (WARNING and above) go to ``sink``, not stderr."""
    root = logging.getLogger()
    saved = root.handlers[:]
    handler = _ToCallback(sink)
    root.handlers = [handler]
    try:
        yield
    finally:
        root.handlers = saved

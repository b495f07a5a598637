"""Where log lines go: a terminal, or journald when systemd runs us as a service.

On a terminal (or a file, a pipe) each line keeps the format the command line always
had, ``telemetryd: WARNING: message``. Under systemd, stderr is a stream into journald,
which stamps every line with the time, the unit and the PID itself. systemd says so by
setting ``JOURNAL_STREAM`` to the ``device:inode`` of that stream; it is checked against
stderr's own, because a child whose stderr was redirected inherits the variable but no
longer writes to the journal. There, lines carry a syslog priority prefix (``<4>``) in
place of a timestamp and a level name, so ``journalctl -p warning`` and its colours work.

Better still, when journald's native socket is there, each record is sent to it as one
datagram of fields: ``MESSAGE``, ``PRIORITY``, ``LOGGER``, ``CODE_FILE``, ``CODE_LINE``,
``CODE_FUNC`` and ``SYSLOG_IDENTIFIER``, so ``journalctl LOGGER=exporters.mqtt`` picks one
part out, and a traceback stays one entry. A record the socket refuses (too big, journald
restarting) goes down the prefixed stream instead; nothing is lost for want of a field.

A broker that is down, or a sink refusing writes, can log the same line many times a
second and push everything else out of the journal (journald's own rate limit then drops
lines of every kind). So in either mode the same ``(logger, message template)`` is let
through ``burst`` times per ``window`` seconds; the rest are counted and, once the window
is over, summarised in one line: "... (repeated 57 more times in 60 s)". The summary is
written when the next record of any kind arrives after the window, or at exit.

No library is involved: the journal protocol is "NAME=value" lines in a datagram
(https://systemd.io/JOURNAL_NATIVE_PROTOCOL/).
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TextIO

JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "telemetryd"
PLAIN_FORMAT = "telemetryd: %(levelname)s: %(message)s"
JOURNAL_FORMAT = "%(name)s: %(message)s"
BURST = 10
WINDOW_S = 60.0
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


def setup(
    level: str,
    *,
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
    journal_socket: str = JOURNAL_SOCKET,
    burst: int = BURST,
    window: float = WINDOW_S,
) -> logging.Handler | None:
    """Send the root logger's records at ``level`` and above to stderr or journald.

    Calling it again replaces the handler an earlier call installed. A root logger that
    already has handlers from elsewhere (a host program, pytest) is left alone, as
    ``logging.basicConfig`` does, so embedding telemetryd never doubles its lines.
    Returns the handler installed, or None when the root was left alone.

    Raises:
        ValueError: ``level`` is not a logging level name.
    """
    levelno = LEVELS.get(level.lower())
    if levelno is None:
        raise ValueError(f"unknown log level {level!r}; one of {', '.join(LEVELS)}")
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h, _Limited)]
    if len(ours) != len(root.handlers):
        return None
    for handler in ours:
        root.removeHandler(handler)
        handler.close()
    out = sys.stderr if stream is None else stream
    env = os.environ if environ is None else environ
    limiter = RepeatLimiter(burst, window)
    installed: _Limited
    if not to_journal(out, env):
        installed = _StreamOut(out, limiter)
        installed.setFormatter(logging.Formatter(PLAIN_FORMAT))
    elif os.path.exists(journal_socket):
        installed = _JournalOut(journal_socket, out, limiter)
    else:
        installed = _StreamOut(out, limiter)
        installed.setFormatter(PrefixFormatter(JOURNAL_FORMAT))
    root.addHandler(installed)
    root.setLevel(levelno)
    return installed


def to_journal(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """Whether ``stream`` is the journald stream systemd named in ``JOURNAL_STREAM``."""
    device, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (OSError, ValueError, AttributeError):  # no fd (a test runner's buffer), bad value
        return False


def priority(levelno: int) -> int:
    """The syslog priority of a logging level: 3 error, 4 warning, 6 info, 7 debug."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    return 6 if levelno >= logging.INFO else 7


class PrefixFormatter(logging.Formatter):
    """Lines prefixed ``<priority>`` for journald's stream, which reads it line by line."""

    def format(self, record: logging.LogRecord) -> str:
        """Every line of the record prefixed, so a traceback keeps the record's level."""
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


@dataclass
class _Count:
    start: float
    seen: int = 0
    suppressed: int = 0
    last: logging.LogRecord | None = None
    last_at: float = 0.0


class RepeatLimiter:
    """Lets each (logger, template) through ``burst`` times per window; counts the rest.

    A window starts at a key's first record; when it is over, the key is forgotten and a
    summary record is due if anything was held back. Keys live one window, so the table
    holds only what was logged in the last ``window`` seconds.
    """

    def __init__(
        self, burst: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.burst = burst
        self.window = window
        self.clock = clock
        self._keys: dict[tuple[str, str], _Count] = {}
        self._next_expiry = float("inf")

    def admit(self, record: logging.LogRecord) -> list[logging.LogRecord]:
        """The records to write now: summaries of ended windows, then ``record`` or none."""
        now = self.clock()
        out = self.expire(now)
        key = (record.name, str(record.msg))
        count = self._keys.get(key)
        if count is None:
            count = self._keys[key] = _Count(start=now)
            self._next_expiry = min(self._next_expiry, now + self.window)
        count.seen += 1
        if count.seen <= self.burst:
            out.append(record)
        else:
            count.suppressed += 1
            count.last, count.last_at = record, now
        return out

    def expire(self, now: float | None = None) -> list[logging.LogRecord]:
        """Summaries of the windows that ended by ``now`` (all of them when None: exit)."""
        if now is not None and now < self._next_expiry:
            return []
        summaries = []
        for key, count in list(self._keys.items()):
            if now is None or now - count.start >= self.window:
                del self._keys[key]
                if count.last is not None:
                    summaries.append(_summary(count))
        starts = [count.start for count in self._keys.values()]
        self._next_expiry = min(starts) + self.window if starts else float("inf")
        return summaries


def _summary(count: _Count) -> logging.LogRecord:
    assert count.last is not None
    last = count.last
    seconds = max(1, round(count.last_at - count.start))
    text = f"{last.getMessage()} (repeated {count.suppressed} more times in {seconds} s)"
    return logging.makeLogRecord(
        {**last.__dict__, "msg": text, "args": None, "exc_info": None, "exc_text": None}
    )


class _Limited(logging.Handler):
    """A handler whose records pass the repeat limiter; held-back summaries flush at close."""

    def __init__(self, limiter: RepeatLimiter) -> None:
        super().__init__()
        self.limiter = limiter

    def emit(self, record: logging.LogRecord) -> None:
        for item in self.limiter.admit(record):
            self.write(item)

    def write(self, record: logging.LogRecord) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.acquire()
        try:
            for item in self.limiter.expire():
                self.write(item)
        finally:
            self.release()
            super().close()


class _StreamOut(_Limited):
    def __init__(self, stream: TextIO, limiter: RepeatLimiter) -> None:
        super().__init__(limiter)
        self.stream = stream

    def write(self, record: logging.LogRecord) -> None:
        _write_line(self.stream, self.format(record), self, record)


class _JournalOut(_Limited):
    """Native journal datagrams; the prefixed stream for a record the socket refuses."""

    def __init__(self, path: str, stream: TextIO, limiter: RepeatLimiter) -> None:
        super().__init__(limiter)
        self.path = path
        self.stream = stream
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.prefixed = PrefixFormatter(JOURNAL_FORMAT)
        self.setFormatter(logging.Formatter("%(message)s"))

    def write(self, record: logging.LogRecord) -> None:
        try:
            self.sock.sendto(journal_fields(record, self.format(record)), self.path)
        except OSError:  # too big for a datagram, journald gone: keep the line
            _write_line(self.stream, self.prefixed.format(record), self, record)

    def close(self) -> None:
        super().close()
        self.sock.close()


def _write_line(
    stream: TextIO, text: str, handler: logging.Handler, record: logging.LogRecord
) -> None:
    try:
        stream.write(text + "\n")
        stream.flush()
    except Exception:  # noqa: BLE001 - logging must not raise into the caller
        handler.handleError(record)


def journal_fields(record: logging.LogRecord, message: str) -> bytes:
    """One record in journald's native format (a value with a newline is length-framed)."""
    fields = {
        "MESSAGE": message,
        "PRIORITY": str(priority(record.levelno)),
        "LOGGER": record.name,
        "CODE_FILE": record.pathname,
        "CODE_LINE": str(record.lineno),
        "CODE_FUNC": record.funcName or "",
        "SYSLOG_IDENTIFIER": IDENTIFIER,
    }
    out = bytearray()
    for name, value in fields.items():
        if not value:  # a record made by hand may lack its origin
            continue
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += name.encode() + b"=" + data + b"\n"
    return bytes(out)

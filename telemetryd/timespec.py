"""Points in time as operators type them: ``--since 2026-11-30``, ``--since 24h``.

Accepted: an ISO 8601 date or date-time (UTC unless it names a zone), a duration before
now (``90s``, ``15m``, ``24h``, ``7d``, ``2w``), or Unix seconds (``1764547200``). Anything
else is one line that shows the accepted forms.
"""

from __future__ import annotations

import datetime
import re
import time

FORMS = (
    "an ISO date or time (2026-11-30, 2026-11-30T08:00:00Z), a duration ago (24h, 7d) "
    "or Unix seconds"
)
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGO = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


class TimeSpecError(ValueError):
    """A point in time that is none of the accepted forms."""


def parse_time(text: str, now: float | None = None) -> int:
    """Nanoseconds since the Unix epoch for ``text``; TimeSpecError if it is not a time."""
    value = text.strip()
    now = time.time() if now is None else now
    ago = _AGO.fullmatch(value)
    if ago:
        return int((now - float(ago.group(1)) * _UNITS[ago.group(2)]) * 1e9)
    if re.fullmatch(r"\d{9,11}(\.\d+)?", value):
        return int(float(value) * 1e9)
    try:
        when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise TimeSpecError(f"{text!r} is not a time; expected {FORMS}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return (when - _EPOCH) // datetime.timedelta(microseconds=1) * 1000


def format_time(ns: int) -> str:
    """An ISO 8601 UTC time (seconds), the form ``--since`` takes back."""
    when = datetime.datetime.fromtimestamp(ns / 1e9, datetime.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")

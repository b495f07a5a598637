"""Durations as operators write them (``30s``, ``5m``, ``1h30m``) and the clock alerting runs on.

Rules, routes and silences all take durations in the Prometheus/Alertmanager spelling, so
one parser serves them all and its error reads the same everywhere. The clock is injected
so the timers of grouping, repeats and retries can be driven by tests without sleeping:
monotonic seconds for timers (immune to wall-clock steps), wall-clock nanoseconds for
everything persisted or shown.
"""

from __future__ import annotations

import math
import re
import time
from typing import Protocol

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))+")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
EXPECTED = 'a duration such as "30s", "5m", "1h30m" or a number of seconds'


def parse_duration(value: object) -> float:
    """Seconds for ``30s``, ``5m``, ``1h30m``, ``250ms``, ``2d``, ``1w`` or a number of seconds.

    Raises:
        ValueError: one line saying what was expected and what was given.
    """
    if isinstance(value, bool):  # a bool is an int to Python, never a duration to an operator
        raise ValueError(f"expected {EXPECTED} (got {value!r})")  # noqa: TRY004 - config value
    if isinstance(value, int | float):
        if math.isnan(value) or math.isinf(value) or value < 0:
            raise ValueError(f"expected {EXPECTED}, 0 or more (got {value!r})")
        return float(value)
    if not isinstance(value, str):
        # ValueError, not TypeError: a wrong TOML type is a bad value like any other.
        raise ValueError(f"expected {EXPECTED} (got a {type(value).__name__})")  # noqa: TRY004
    text = value.strip()
    if _NUMBER.fullmatch(text):
        return float(text)
    if not _WHOLE.fullmatch(text):
        raise ValueError(f"expected {EXPECTED} (got {value!r})")
    return sum(float(number) * _UNITS[unit] for number, unit in _PART.findall(text))


def format_duration(seconds: float) -> str:
    """The short spelling ``parse_duration`` takes back: ``1h30m``, ``45s``, ``250ms``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    rest = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


class Clock(Protocol):
    """Where alerting reads the time; tests pass one they move by hand."""

    def monotonic(self) -> float:
        """Seconds for timers (group_wait, group_interval, backoff)."""

    def time_ns(self) -> int:
        """Wall-clock nanoseconds for what is persisted or shown."""


class SystemClock:
    """The real clocks."""

    def monotonic(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()

    def time_ns(self) -> int:
        """``time.time_ns()``."""
        return time.time_ns()

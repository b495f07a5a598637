"""One alert while it is pending or firing: what the engine keeps, and saves, about it.

Split from the engine so the state machine reads on its own; this is also the shape of
``"alerts"`` in the aggregator's ``fleet-state.json``, which ``telemetryd alerts list``
reads.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal

from telemetryd.alerting.expr import Value

_TEMPLATE = re.compile(r"{{\s*([A-Za-z_][A-Za-z0-9_]*)\s*}}")


@dataclass(slots=True)
class Active:
    """One pending or firing alert (what is saved across restarts)."""

    rule: str
    fingerprint: str
    labels: dict[str, str]
    state: Literal["pending", "firing"]
    starts_ns: int
    last_true_ns: int
    fired_ns: int = 0
    value: float | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    after: tuple[str, int] = ("", -1)  # event alerts: (boot, seq) of the report that fired
    series: tuple[str, ...] = ()  # condition alerts: the label values of their series


def render(
    annotations: dict[str, str], labels: dict[str, str], value: float | None, *, runbook_base: str
) -> dict[str, str]:
    """Fill ``{{ label }}``, ``{{ value }}`` and ``{{ runbook_base }}`` in the annotations."""
    values = {**labels, "value": format_value(value), "runbook_base": runbook_base}
    return {
        k: _TEMPLATE.sub(lambda m: values.get(m.group(1), ""), v) for k, v in annotations.items()
    }


def number(value: Value) -> float | None:
    """A rule's value as a float (True is 1), or None when it is not a number."""
    if isinstance(value, bool):
        return float(value)
    return float(value) if isinstance(value, int | float) else None


def format_value(value: float | None) -> str:
    """``88`` rather than ``88.0``; two decimals at most."""
    if value is None:
        return ""
    if not math.isfinite(value):
        return str(value)
    # 4.001 rounds to "4.00": strip the point too, or the summary says "4. s"
    return f"{value:.0f}" if value == int(value) else f"{value:.2f}".rstrip("0").rstrip(".")

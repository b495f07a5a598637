"""The alerts panel and silences of ``top``, with no UI in it.

Rows of firing, pending and silenced alerts with their age, the active silences, and the
request ``top`` publishes to add one. Silencing has two gates, both required: the
operator's own ``[top] allow_silence`` (off by default, so ``top`` is read-only) and the
aggregator's ``accepts_requests`` in its retained ``_silences`` (it applies requests only
with ``[aggregator.alerts] mqtt_silences = true``). A request is validated here exactly
as the aggregator will decode it, so a bad one is refused in the dialog, not lost.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from telemetryd import topfmt as fmt
from telemetryd.alerting.durations import format_duration, parse_duration
from telemetryd.alerting.matchers import parse_matcher, quote
from telemetryd.alerting.model import SEVERITIES, Alert
from telemetryd.alerting.wire import (
    SilenceInfo,
    SilenceRequest,
    decode_silence_request,
    request_silence_id,
)
from telemetryd.codec import DecodeError, encode_json
from telemetryd.config import TopConfig
from telemetryd.topfmt import Part
from telemetryd.watch import Watch

AlertState = Literal["firing", "pending", "silenced"]
_STATE_ORDER = {"firing": 0, "pending": 1, "silenced": 2}
ALERT_COLUMNS = ("state", "severity", "alert", "cluster", "node", "GPU", "age", "summary")
SILENCE_LABELS = ("alertname", "cluster", "node", "gpu", "job")  # what the dialog prefills
STATE_STYLES = {"firing": "bold", "pending": "#e0a000", "silenced": "dim"}


@dataclass(frozen=True)
class AlertRow:
    """One alert as the panel lists it."""

    state: AlertState
    alert: Alert
    age_s: float  # firing/silenced: since it fired; pending: since its condition held
    silences: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """Unique per row: an alert may be pending in one list and firing in another."""
        return f"{self.state}:{self.alert.fingerprint}"

    @property
    def cluster(self) -> str:
        """The alert's cluster label ("" when the rule has no cluster scope)."""
        return self.alert.labels.get("cluster", "")


def alert_rows(watch: Watch, now_ns: int) -> list[AlertRow]:
    """Firing first (critical before warning, oldest first), then pending, then silenced."""
    rows: list[AlertRow] = []
    for alert in watch.firing_alerts():
        muted = tuple(watch.silenced_by(alert, now_ns))
        since = alert.fired_ns or alert.starts_ns
        age = (now_ns - since) / 1e9 if since else 0.0
        rows.append(AlertRow("silenced" if muted else "firing", alert, age, muted))
    for alert in watch.pending_alerts():
        age = (now_ns - alert.starts_ns) / 1e9 if alert.starts_ns else 0.0
        rows.append(AlertRow("pending", alert, age))
    rank: dict[str, int] = {s: i for i, s in enumerate(SEVERITIES)}
    rows.sort(key=lambda r: (_STATE_ORDER[r.state], rank.get(r.alert.severity, 9), -r.age_s))
    return rows


def alert_cells(row: AlertRow) -> tuple[Part, ...]:
    """One row of the alerts table, in ALERT_COLUMNS order."""
    labels, severity = row.alert.labels, row.alert.severity
    muted = row.state == "silenced"
    return (
        (row.state, STATE_STYLES[row.state]),
        (severity, "dim" if muted else fmt.SEVERITY_STYLES.get(severity, "")),
        (row.alert.name, "dim" if muted else "bold"),
        (labels.get("cluster", "-"), ""),
        (labels.get("node", "-"), ""),
        (labels.get("gpu", "-"), ""),
        (fmt.age(row.age_s), ""),
        (row.alert.annotations.get("summary", ""), "dim" if muted else ""),
    )


def alert_line(row: AlertRow) -> list[Part]:
    """One alert on one line (a node's detail screen): state, severity, name, GPU, age."""
    state, severity, name, _, _, gpu, age, summary = alert_cells(row)
    gpu = (f"GPU {gpu[0]}" if gpu[0] != "-" else "", "")
    return [x for cell in (state, severity, name, gpu, age, summary) for x in (cell, ("  ", ""))]


def silence_lines(watch: Watch, now_ns: int) -> list[list[Part]]:
    """Active silences: what they match, who added them, when they end."""
    lines: list[list[Part]] = []
    for cluster in sorted(watch.silences):
        for s in watch.silences[cluster].silences:
            if not s.starts_ns <= now_ns < s.ends_ns:
                continue
            lines.append([
                (f"{cluster} ", "bold"), (", ".join(s.matchers), ""),
                (f"  ends in {fmt.age((s.ends_ns - now_ns) / 1e9)}", "dim"),
                (f"  by {s.created_by}", "dim"), (f"  {s.comment}" if s.comment else "", "dim"),
            ])  # fmt: skip
    return lines


# -- silencing ------------------------------------------------------------------------------
def silence_gate(allow: bool, accepts: bool, cluster: str) -> str | None:
    """Why the operator cannot silence from here, or None when both gates are open."""
    if not allow:
        return "top is read-only: set [top] allow_silence = true to silence from here"
    if not accepts:
        where = f"cluster {cluster}" if cluster else "this alert"
        return (
            f"the aggregator of {where} does not accept silences over MQTT "
            "(it needs [aggregator.alerts] mqtt_silences = true)"
        )
    return None


def silence_target(
    watch: Watch, key: str | None, cfg: TopConfig, now_ns: int
) -> tuple[AlertRow, str]:
    """The alert under the cursor and its cluster, if both gates let the operator silence it.

    Raises:
        ValueError: why not (nothing selected, read-only, the aggregator does not accept).
    """
    row = {r.key: r for r in alert_rows(watch, now_ns)}.get(key or "")
    if row is None:
        raise ValueError("no alert selected")
    cluster = row.cluster or ("" if cfg.cluster == "+" else cfg.cluster)
    accepts = bool(cluster) and watch.accepts_silences(cluster)
    why = silence_gate(cfg.allow_silence, accepts, cluster)
    if why:
        raise ValueError(why)
    return row, cluster


def default_matchers(labels: Mapping[str, str]) -> str:
    """The dialog's prefill: the alert's name, cluster, node and GPU as exact matchers."""
    return ", ".join(f"{k}={quote(labels[k])}" for k in SILENCE_LABELS if k in labels)


def split_matchers(text: str) -> list[str]:
    """Matchers separated by commas (a comma inside quotes is part of a value).

    Raises:
        ValueError: a matcher that does not parse, or none at all, in one line.
    """
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text.strip().strip("{}"):
        if char == "," and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
    parts.append("".join(current))
    texts = [p.strip() for p in parts if p.strip()]
    if not texts:
        raise ValueError('matchers: expected at least one, e.g. alertname="GpuHot", node="n1"')
    return [str(parse_matcher(t)) for t in texts]


def default_created_by(env: Mapping[str, str], host: str) -> str:
    """``$USER@host``: who the aggregator's silence list says added it."""
    user = env.get("USER") or env.get("LOGNAME") or "operator"
    return f"{user}@{host}"


def build_request(
    matchers: str,
    duration: str,
    comment: str,
    created_by: str,
    request_id: str | None = None,
) -> SilenceRequest:
    """The request as the aggregator will decode it.

    Raises:
        ValueError: one line naming the field that is wrong and what was expected.
    """
    parsed = split_matchers(matchers)
    try:
        seconds = parse_duration(duration)
    except ValueError as exc:
        raise ValueError(f"duration: {exc}") from None
    request = SilenceRequest(
        request_id=request_id or secrets.token_hex(8),
        matchers=parsed,
        duration_s=seconds,
        created_by=created_by.strip(),
        comment=comment.strip(),
    )
    try:
        return decode_silence_request(encode_json(request))
    except DecodeError as exc:
        raise ValueError(f"silence request: {exc}") from None


def describe_request(request: SilenceRequest) -> str:
    """A request in one line for the status bar."""
    return f"{', '.join(request.matchers)} for {format_duration(request.duration_s)}"


def is_active(request: SilenceRequest, silences: list[SilenceInfo], now_ns: int) -> bool:
    """Whether the silence this request made is in the aggregator's retained list.

    The aggregator derives the silence's id from the request id (wire.request_silence_id),
    so the silence is recognised exactly, whoever else silenced the same alerts.
    """
    wanted = request_silence_id(request.request_id)
    return any(s.id == wanted and s.ends_ns > now_ns for s in silences)


def settle(
    requests: list[tuple[str, SilenceRequest]], watch: Watch, now_ns: int
) -> list[SilenceRequest]:
    """Requests (cluster, request) whose silence is now listed; removed from ``requests``."""
    done = []
    for cluster, request in list(requests):
        listed = watch.silences.get(cluster)
        if listed and is_active(request, listed.silences, now_ns):
            requests.remove((cluster, request))
            done.append(request)
    return done

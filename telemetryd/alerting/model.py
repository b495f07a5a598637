"""What an alert is once the engine has decided about it, and what a hook is handed.

The shapes follow Alertmanager's (labels identify an alert, annotations describe it, a
fingerprint is the hash of the labels), so the webhook format and the Alertmanager push
are straight translations and operators meet familiar names.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from telemetryd.codec import Struct, field

Severity = Literal["critical", "warning", "info"]
SEVERITIES: tuple[Severity, ...] = ("critical", "warning", "info")


def severity_rank(severity: str) -> int:
    """0 for critical, worst first; an unknown severity sorts after every known one."""
    return SEVERITIES.index(severity) if severity in SEVERITIES else len(SEVERITIES)


def fingerprint(labels: dict[str, str]) -> str:
    """16 hex digits that identify an alert by its labels (order does not matter).

    Stable across restarts and aggregators, so PagerDuty's ``dedup_key``, Opsgenie's
    ``alias`` and the retained MQTT topic of one alert always match its resolve.
    """
    text = "\x00".join(f"{key}\x01{labels[key]}" for key in sorted(labels))
    digest = hashlib.blake2b(text.encode(), digest_size=8)
    return digest.hexdigest()


class Alert(Struct, kw_only=True, omit_defaults=True):
    """One alert as the outside sees it: firing (``ends_ns`` 0) or resolved.

    ``labels`` always hold ``alertname`` and ``severity``, plus ``cluster``, ``node``,
    ``gpu`` and ``uuid`` where the rule's scope has them; ``annotations`` hold the
    rendered ``summary``, ``description`` and ``runbook_url``.
    """

    fingerprint: str
    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = field(default_factory=dict)
    starts_ns: int = 0  # when the rule's condition started to hold (pending included)
    fired_ns: int = 0  # when it became firing
    ends_ns: int = 0  # when it resolved; 0 while firing
    value: float | None = None  # the rule's value at the last evaluation
    generator_url: str = ""

    @property
    def name(self) -> str:
        """The rule's name."""
        return self.labels.get("alertname", "")

    @property
    def severity(self) -> str:
        """critical, warning or info."""
        return self.labels.get("severity", "warning")


class Notification(Struct, kw_only=True):
    """One message to one receiver about one group of alerts (Alertmanager's webhook body).

    ``status`` is ``firing`` when any alert in it fires, else ``resolved``.
    """

    receiver: str
    status: Literal["firing", "resolved"]
    group_key: str
    group_labels: dict[str, str]
    common_labels: dict[str, str]
    common_annotations: dict[str, str]
    alerts: list[Alert]
    external_url: str = ""
    truncated: int = 0  # alerts left out by the receiver's max_alerts

    @property
    def firing(self) -> list[Alert]:
        """The alerts that fire."""
        return [a for a in self.alerts if a.status == "firing"]

    @property
    def resolved(self) -> list[Alert]:
        """The alerts that resolved."""
        return [a for a in self.alerts if a.status == "resolved"]


def notification(
    receiver: str,
    group_key: str,
    group_labels: dict[str, str],
    alerts: list[Alert],
    *,
    external_url: str = "",
    max_alerts: int = 0,
) -> Notification:
    """Build a notification; common labels/annotations are those every alert shares."""
    kept = alerts[:max_alerts] if max_alerts > 0 else list(alerts)
    common_labels = _common([a.labels for a in alerts])
    common_annotations = _common([a.annotations for a in alerts])
    status: Literal["firing", "resolved"] = (
        "firing" if any(a.status == "firing" for a in alerts) else "resolved"
    )
    return Notification(
        receiver=receiver, status=status, group_key=group_key, group_labels=dict(group_labels),
        common_labels=common_labels, common_annotations=common_annotations, alerts=kept,
        external_url=external_url, truncated=len(alerts) - len(kept),
    )  # fmt: skip


def _common(maps: list[dict[str, str]]) -> dict[str, str]:
    if not maps:
        return {}
    first = maps[0]
    return {k: v for k, v in first.items() if all(m.get(k) == v for m in maps[1:])}

"""PagerDuty Events API v2: one event per alert, ``dedup_key`` = the alert's fingerprint.

Per alert rather than per group (Alertmanager sends one per group): the fingerprint is
stable across restarts and aggregators, so the resolve of one GPU's alert closes exactly
its incident, and a page for a second GPU is a second incident, not an update that a
responder who acknowledged the first would never hear about.

Events (../shared/reference/alerting.md §4): a trigger carries a ``payload`` (summary of at
most 1024 characters, source, severity, timestamp, component, group, class,
custom_details) and ``links``; a resolve carries only ``routing_key``, ``dedup_key`` and
``event_action``. PagerDuty answers 202; 400 is an event it will never take; 429 and 5xx
pass.
"""

from __future__ import annotations

from typing import Any

from exporters.hooks.base import Hook
from exporters.hooks.common import check_ca, load_secret, rfc3339, summary, truncate
from exporters.hooks.config import PagerDutyReceiver
from exporters.hooks.httppost import PostHook, Request, check_url
from telemetryd.alerting.model import SEVERITIES, Alert, Notification
from telemetryd.codec import encode_json

SUMMARY_MAX = 1024  # characters, PagerDuty's limit (Alertmanager truncates to the same)
DETAILS_MAX = 512_000  # bytes of custom_details PagerDuty keeps (Alertmanager drops above)


def trigger_event(routing_key: str, alert: Alert, cfg: PagerDutyReceiver) -> dict[str, Any]:
    """The trigger event of one firing alert."""
    labels = alert.labels
    severity = alert.severity if alert.severity in SEVERITIES else "warning"
    payload: dict[str, Any] = {
        "summary": truncate(summary(alert), SUMMARY_MAX),
        "source": labels.get("node") or labels.get("cluster") or "telemetryd",
        "severity": severity,  # PagerDuty's "error" has no rule severity behind it
        "class": alert.name or "alert",
    }
    when = alert.fired_ns or alert.starts_ns
    if when:
        payload["timestamp"] = rfc3339(when)
    if labels.get("gpu"):
        payload["component"] = f"gpu {labels['gpu']}"
    group = labels.get("rack") or labels.get("cluster")
    if group:
        payload["group"] = group
    payload["custom_details"] = _details(alert)
    event: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": alert.fingerprint,
        "payload": payload,
        "client": cfg.client,
    }
    if cfg.client_url:
        event["client_url"] = cfg.client_url
    links = [
        {"href": href, "text": text}
        for href, text in (
            (alert.annotations.get("runbook_url", ""), "Runbook"),
            (alert.generator_url, "Alert source"),
        )
        if href
    ]
    if links:
        event["links"] = links
    return event


def _details(alert: Alert) -> dict[str, Any]:
    details: dict[str, Any] = {"labels": dict(alert.labels), "annotations": dict(alert.annotations)}
    if alert.value is not None:
        details["value"] = alert.value
    size = len(encode_json(details))
    if size > DETAILS_MAX:  # PagerDuty would refuse the whole event
        return {"labels": dict(alert.labels), "note": f"annotations left out: {size} bytes"}
    return details


def resolve_event(routing_key: str, alert: Alert) -> dict[str, Any]:
    """The resolve event of one alert: only the three keys PagerDuty reads."""
    return {"routing_key": routing_key, "dedup_key": alert.fingerprint, "event_action": "resolve"}


class PagerDutyHook(PostHook):
    """Sends trigger and resolve events to one integration (routing key), one per alert.

    In order, as one attempt; see ``httppost.each`` for what a partial failure means.
    """

    def __init__(self, cfg: PagerDutyReceiver, url: str, routing_key: str) -> None:
        super().__init__(cfg, url)
        self._cfg = cfg
        self._key = routing_key

    def requests(self, notification: Notification) -> list[Request]:
        """A trigger event per firing alert, a resolve event per resolved one."""
        events = [
            trigger_event(self._key, a, self._cfg)
            if a.status == "firing"
            else resolve_event(self._key, a)
            for a in notification.alerts
        ]
        return [(self.url, e, f"{e['event_action']} {e['dedup_key']}") for e in events]


def create(cfg: PagerDutyReceiver) -> Hook:
    """The hook for a ``type = "pagerduty"`` receiver; the routing key is read now."""
    url = check_url(cfg, "url", cfg.url)
    check_ca(cfg)
    key = load_secret(
        cfg, "routing_key_file", cfg.routing_key_file, "routing-key",
        "a file with the PagerDuty integration key (32 characters)", required=True,
    )  # fmt: skip
    return PagerDutyHook(cfg, url, key.reveal())

"""Opsgenie Alerts API: create per firing alert, close per resolved one, by alias.

The alias is the alert's fingerprint: Opsgenie deduplicates open alerts by alias (a
repeat only raises its count), and a resolve closes exactly that alert with
``POST /v2/alerts/{alias}/close?identifierType=alias``, with no need to remember the id
Opsgenie gave it. Limits (../shared/reference/alerting.md §7): message 130 characters,
description 15000, at most 20 tags of 50 characters, details a map of strings. Opsgenie
answers 202 and processes the request later.

Opsgenie ends support on 5 April 2027 (Atlassian moves customers to Jira Service
Management); the hook stays for the sites that still page through it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from exporters.hooks.base import Hook
from exporters.hooks.common import check_ca, config_error, load_secret, summary, truncate
from exporters.hooks.config import OpsgenieReceiver
from exporters.hooks.httppost import PostHook, Request, check_url
from telemetryd.alerting.model import SEVERITIES, Alert, Notification
from telemetryd.secrets import Secret

MESSAGE_MAX = 130
DESCRIPTION_MAX = 15000
TAGS_MAX = 20
TAG_MAX = 50
PRIORITIES = ("P1", "P2", "P3", "P4", "P5")
RESPONDER_TYPES = ("team", "user", "escalation", "schedule")
SOURCE = "telemetryd"


def create_body(alert: Alert, cfg: OpsgenieReceiver) -> dict[str, Any]:
    """The CreateAlertPayload of one firing alert."""
    return {
        "message": truncate(summary(alert), MESSAGE_MAX),
        "alias": alert.fingerprint,
        "description": truncate(_description(alert), DESCRIPTION_MAX),
        "responders": [dict(r) for r in cfg.responders],
        "tags": tags(alert, cfg.tags),
        "details": {k: str(v) for k, v in alert.labels.items()},
        "priority": cfg.priorities.get(alert.severity, "P3"),
        "source": SOURCE,
    }


def _description(alert: Alert) -> str:
    parts = [alert.annotations.get("description") or summary(alert)]
    if alert.value is not None:
        parts.append(f"Value: {alert.value:g}")
    if alert.annotations.get("runbook_url"):
        parts.append(f"Runbook: {alert.annotations['runbook_url']}")
    if alert.generator_url:
        parts.append(f"Source: {alert.generator_url}")
    return "\n\n".join(parts)


def tags(alert: Alert, configured: list[str]) -> list[str]:
    """The configured tags, then severity, alertname and node; at most 20 of 50 characters."""
    out: list[str] = []
    wanted = [*configured, alert.severity, alert.name, alert.labels.get("node", "")]
    for tag in (truncate(t, TAG_MAX) for t in wanted if t):
        if tag not in out:
            out.append(tag)
    return out[:TAGS_MAX]


def close_body(alert: Alert) -> dict[str, Any]:
    """The body of a close request (``user`` is left to Opsgenie's default)."""
    return {"source": SOURCE, "note": truncate(f"Resolved: {summary(alert)}", 25000)}


class OpsgenieHook(PostHook):
    """Creates and closes Opsgenie alerts with one API key, one request per alert.

    In order, as one attempt; see ``httppost.each`` for what a partial failure means.
    """

    def __init__(self, cfg: OpsgenieReceiver, base: str, key: Secret) -> None:
        super().__init__(cfg, base.rstrip("/"), {"Authorization": f"GenieKey {key.reveal()}"})
        self._cfg = cfg

    def requests(self, notification: Notification) -> list[Request]:
        """A create per firing alert, a close (by alias) per resolved one."""
        out: list[Request] = []
        for alert in notification.alerts:
            if alert.status == "firing":
                out.append((f"{self.url}/v2/alerts", create_body(alert, self._cfg),
                            f"create {alert.fingerprint}"))  # fmt: skip
            else:
                alias = quote(alert.fingerprint, safe="")
                url = f"{self.url}/v2/alerts/{alias}/close?identifierType=alias"
                out.append((url, close_body(alert), f"close {alert.fingerprint}"))
        return out


def _check(cfg: OpsgenieReceiver) -> None:
    for severity, priority in cfg.priorities.items():
        if severity not in SEVERITIES:
            raise config_error(
                cfg, f"priorities: {severity!r} is not a severity; expected {', '.join(SEVERITIES)}"
            )
        if priority not in PRIORITIES:
            raise config_error(
                cfg, f"priorities.{severity}: {priority!r}; expected one of P1, P2, P3, P4, P5"
            )
    for i, responder in enumerate(cfg.responders):
        kind = responder.get("type", "")
        if kind not in RESPONDER_TYPES or not ({"id", "name", "username"} & responder.keys()):
            raise config_error(
                cfg, f"responders[{i}]: expected a type (team, user, escalation or schedule) "
                "and an id, name or username",
            )  # fmt: skip
    for tag in cfg.tags:
        if not tag or len(tag) > TAG_MAX:
            raise config_error(cfg, f"tags: {tag!r}; expected 1 to {TAG_MAX} characters")
    if len(cfg.tags) > TAGS_MAX:
        raise config_error(cfg, f"tags: {len(cfg.tags)} tags; Opsgenie keeps at most {TAGS_MAX}")


def create(cfg: OpsgenieReceiver) -> Hook:
    """The hook for a ``type = "opsgenie"`` receiver; the API key is read now."""
    base = check_url(cfg, "url", cfg.url)
    check_ca(cfg)
    _check(cfg)
    key = load_secret(
        cfg, "api_key_file", cfg.api_key_file, "api-key",
        "a file with the Opsgenie API key", required=True,
    )  # fmt: skip
    return OpsgenieHook(cfg, base, key)

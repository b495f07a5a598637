"""Microsoft Teams through a Workflows webhook: one Adaptive Card per notification.

Office 365 connectors (the classic "Incoming Webhook") are being retired; the supported
path is a Workflows flow triggered by "When a Teams webhook request is received", which
takes a ``message`` with Adaptive Card attachments (../shared/reference/alerting.md §6;
the body Alertmanager's ``msteamsv2`` sends). The card holds a title TextBlock
(``[FIRING] GpuXidCritical``, red, or ``[RESOLVED] ...``, green) and a TextBlock per alert
with its summary, description, place and runbook link; ``msteams.width = full`` uses the
whole channel width.

The size limit of Workflows is not documented (legacy webhooks: 28 KB), so a card stops
adding alerts at ``CARD_MAX`` bytes and says how many it left out. The URL is the secret;
200 and 202 are success.
"""

from __future__ import annotations

from typing import Any

from exporters.hooks.base import Hook
from exporters.hooks.common import check_ca, summary, title, truncate
from exporters.hooks.config import TeamsReceiver
from exporters.hooks.httppost import PostHook, endpoint
from telemetryd.alerting.model import Alert, Notification
from telemetryd.codec import encode_json

CARD_MAX = 24_000  # bytes of JSON, under the 28 KB of legacy Teams webhooks
MAX_ALERTS = 50  # alert blocks per card
BLOCK_MAX = 3000  # characters of one alert's text
SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"


def heading(notification: Notification) -> str:
    """``[FIRING] name`` while any alert fires, else ``[RESOLVED] name``."""
    return f"[{notification.status.upper()}] {title(notification)}"


def alert_block(alert: Alert) -> dict[str, Any]:
    """One alert as a TextBlock (Adaptive Card markdown: bold, paragraphs, links)."""
    labels = alert.labels
    facts = [f"**{alert.status.upper()}**", labels.get("severity", "")]
    if labels.get("node"):
        facts.append(f"node {labels['node']}")
    if labels.get("gpu"):
        facts.append(f"GPU {labels['gpu']}")
    if labels.get("job"):
        facts.append(f"job {labels['job']}")
    parts = [" · ".join(f for f in facts if f), f"**{truncate(summary(alert), 1000)}**"]
    description = alert.annotations.get("description", "")
    if description and " ".join(description.split()) != summary(alert):
        parts.append(truncate(description, 1500))
    runbook = alert.annotations.get("runbook_url", "")
    if runbook:
        parts.append(f"[Runbook]({runbook})")
    text = truncate("\n\n".join(parts), BLOCK_MAX)
    return {"type": "TextBlock", "text": text, "wrap": True, "separator": True}


def card(notification: Notification) -> dict[str, Any]:
    """The body POSTed to the flow: a message with one Adaptive Card (version 1.2)."""
    firing = notification.status == "firing"
    body: list[dict[str, Any]] = [
        {
            "type": "TextBlock",
            "text": truncate(heading(notification), 200),
            "weight": "Bolder",
            "size": "Medium",
            "wrap": True,
            "color": "Attention" if firing else "Good",
        }
    ]
    size = len(encode_json(body)) + 400  # the envelope around the body
    shown = 0
    for alert in notification.alerts[:MAX_ALERTS]:
        block = alert_block(alert)
        grown = len(encode_json(block)) + 1
        if size + grown > CARD_MAX:
            break
        body.append(block)
        size += grown
        shown += 1
    left = len(notification.alerts) - shown + notification.truncated
    if left:
        note = f"{left} more alert{'s' if left != 1 else ''} not shown"
        body.append({"type": "TextBlock", "text": note, "wrap": True, "isSubtle": True})
    return {
        "type": "message",
        "attachments": [
            {
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": None,
                "content": {
                    "$schema": SCHEMA,
                    "type": "AdaptiveCard",
                    "version": "1.2",
                    "body": body,
                    "msteams": {"width": "full"},
                },
            }
        ],
    }


class TeamsHook(PostHook):
    """Posts one card per notification to a Teams Workflows webhook; 200 and 202 are success."""

    ok = (200, 202)

    def body(self, notification: Notification) -> object:
        """The message holding the notification's card."""
        return card(notification)


def create(cfg: TeamsReceiver) -> Hook:
    """The hook for a ``type = "teams"`` receiver; the webhook URL is read now."""
    url = endpoint(cfg, cfg.url, cfg.url_file, "a file with the Teams workflow URL")
    check_ca(cfg)
    return TeamsHook(cfg, url)

"""Slack incoming webhooks: a ``text`` fallback plus Block Kit ``blocks``, one message per group.

The fallback ``text`` is what phones show in the notification and what clients without
blocks print; the blocks hold a header (``[FIRING:2] GpuXidCritical``) and a section per
alert with its summary, description, place and runbook link. Slack's limits
(../shared/reference/alerting.md §5: 50 blocks, 3000 characters per section, 40000 for
``text``, 150 for a header) are kept here by cutting and saying how many alerts were left
out, since Slack answers a message over them with a 400 the on-call never sees.

The URL is the secret (``url``, ``url_file`` or the credential ``<name>.url``); only 200
is success (Slack answers errors as 4xx with a short code such as ``invalid_blocks``).
"""

from __future__ import annotations

from typing import Any

from exporters.hooks.base import Hook
from exporters.hooks.common import check_ca, summary, title, truncate
from exporters.hooks.config import SlackReceiver
from exporters.hooks.httppost import PostHook, endpoint
from telemetryd.alerting.model import Alert, Notification

MAX_BLOCKS = 50
SECTION_MAX = 3000
TEXT_MAX = 40000
HEADER_MAX = 150  # plain_text of a header block


def escape(text: str) -> str:
    """Slack's three control characters in mrkdwn (``&``, ``<``, ``>``)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _link(url: str, text: str) -> str:
    safe = url.replace("|", "%7C").replace("<", "%3C").replace(">", "%3E")
    return f"<{safe}|{text}>"


def heading(notification: Notification) -> str:
    """``[FIRING:n] name`` while any alert fires, else ``[RESOLVED] name``."""
    if notification.status == "firing":
        return f"[FIRING:{len(notification.firing)}] {title(notification)}"
    return f"[RESOLVED] {title(notification)}"


def section_text(alert: Alert) -> str:
    """One alert in mrkdwn, at most SECTION_MAX characters (the description gives way)."""
    labels = alert.labels
    facts = [f"*{alert.status.upper()}*", labels.get("severity", "")]
    if labels.get("node"):
        facts.append(f"node {labels['node']}")
    if labels.get("gpu"):
        facts.append(f"GPU {labels['gpu']}")
    if labels.get("job"):
        facts.append(f"job {labels['job']}")
    head = escape(" · ".join(f for f in facts if f))
    lines = [head, f"*{escape(truncate(summary(alert), 1000))}*"]
    runbook = alert.annotations.get("runbook_url", "")
    tail = [_link(runbook, "Runbook")] if runbook else []
    description = alert.annotations.get("description", "")
    if description and " ".join(description.split()) != summary(alert):
        room = SECTION_MAX - sum(len(x) + 1 for x in lines + tail)
        lines.append(truncate(escape(description), max(room, 1)))
    return truncate("\n".join(lines + tail), SECTION_MAX)


def blocks(notification: Notification) -> list[dict[str, Any]]:
    """Header, a section per alert, and a context line for those that did not fit."""
    alerts = notification.alerts
    fits = len(alerts) <= MAX_BLOCKS - 1 and not notification.truncated
    shown = alerts if fits else alerts[: MAX_BLOCKS - 2]  # keep one block for the count
    out: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": truncate(heading(notification), HEADER_MAX)},
        }
    ]
    out += [{"type": "section", "text": {"type": "mrkdwn", "text": section_text(a)}} for a in shown]
    left = len(alerts) - len(shown) + notification.truncated
    if left:
        note = f"{left} more alert{'s' if left != 1 else ''} not shown"
        out.append({"type": "context", "elements": [{"type": "mrkdwn", "text": note}]})
    return out


def fallback(notification: Notification) -> str:
    """The plain ``text``: the heading and a line per alert, at most TEXT_MAX characters."""
    lines = [escape(heading(notification))]
    size = len(lines[0])
    alerts = notification.alerts
    reserve = 40  # for the "N more alerts not shown" line
    shown = 0
    for alert in alerts:
        line = escape(truncate(f"• [{alert.status.upper()}] {summary(alert)}", SECTION_MAX))
        if size + 1 + len(line) > TEXT_MAX - reserve:
            break
        lines.append(line)
        size += 1 + len(line)
        shown += 1
    left = len(alerts) - shown + notification.truncated
    if left:
        lines.append(f"{left} more alert{'s' if left != 1 else ''} not shown")
    return "\n".join(lines)


def message(notification: Notification, cfg: SlackReceiver) -> dict[str, Any]:
    """The body POSTed to the webhook."""
    body: dict[str, Any] = {"text": fallback(notification), "blocks": blocks(notification)}
    if cfg.channel:  # honoured by legacy webhooks only; app webhooks post to their channel
        body["channel"] = cfg.channel
    if cfg.username:
        body["username"] = cfg.username
    return body


class SlackHook(PostHook):
    """Posts one message per notification to an incoming webhook; only 200 is success."""

    ok = (200,)

    def __init__(self, cfg: SlackReceiver, url: str) -> None:
        super().__init__(cfg, url)
        self._cfg = cfg

    def body(self, notification: Notification) -> object:
        """The message, with the receiver's channel and username."""
        return message(notification, self._cfg)


def create(cfg: SlackReceiver) -> Hook:
    """The hook for a ``type = "slack"`` receiver; the webhook URL is read now."""
    url = endpoint(cfg, cfg.url, cfg.url_file, "a file with the Slack webhook URL")
    check_ca(cfg)
    return SlackHook(cfg, url)

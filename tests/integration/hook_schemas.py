"""The documented request schemas of each on-call service, as assertions.

Each ``check_*`` asserts the required fields, their types, enums and length limits, and
refuses fields the service does not document (a misspelt key would be silently ignored by
the real service, so it is a defect here). Sources: ../shared/reference/alerting.md §3-7
(Alertmanager webhook v4, PagerDuty Events API v2, Slack Block Kit limits, Teams
Workflows / Adaptive Card 1.2, Opsgenie CreateAlertPayload and close).
"""

from __future__ import annotations

import datetime
import re
from typing import Any

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z\Z")


def fields(obj: Any, required: dict[str, Any], optional: dict[str, Any] | None = None) -> None:
    """``obj`` is an object with every required key, no undocumented key, right types."""
    optional = optional or {}
    assert isinstance(obj, dict), obj
    missing = required.keys() - obj.keys()
    assert not missing, f"missing {sorted(missing)} in {obj}"
    unknown = obj.keys() - required.keys() - optional.keys()
    assert not unknown, f"undocumented {sorted(unknown)} in {obj}"
    for key, kind in {**required, **optional}.items():
        if key in obj:
            value = obj[key]
            assert isinstance(value, kind), f"{key}: {value!r} is not {kind}"
            assert not (isinstance(value, bool) and kind in (int, str)), key


def string_map(obj: Any) -> None:
    assert isinstance(obj, dict)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in obj.items()), obj


def timestamp(text: str) -> datetime.datetime:
    assert RFC3339.match(text), text
    return datetime.datetime.fromisoformat(text)


# -- Alertmanager webhook, version 4 ---------------------------------------------------------


def check_webhook(body: Any) -> None:
    fields(
        body,
        {"version": str, "groupKey": str, "truncatedAlerts": int, "status": str,
         "receiver": str, "groupLabels": dict, "commonLabels": dict,
         "commonAnnotations": dict, "externalURL": str, "alerts": list},
        {"notification_reason": str},
    )  # fmt: skip
    assert body["version"] == "4"
    assert body["status"] in ("firing", "resolved")
    for key in ("groupLabels", "commonLabels", "commonAnnotations"):
        string_map(body[key])
    for alert in body["alerts"]:
        fields(
            alert,
            {"status": str, "labels": dict, "annotations": dict, "startsAt": str,
             "endsAt": str, "generatorURL": str, "fingerprint": str},
        )  # fmt: skip
        assert alert["status"] in ("firing", "resolved")
        string_map(alert["labels"])
        string_map(alert["annotations"])
        assert "alertname" in alert["labels"]
        timestamp(alert["startsAt"])
        timestamp(alert["endsAt"])
        if alert["status"] == "firing":
            assert alert["endsAt"] == "0001-01-01T00:00:00Z"
        else:
            assert timestamp(alert["endsAt"]) >= timestamp(alert["startsAt"])
    assert body["status"] == (
        "firing" if any(a["status"] == "firing" for a in body["alerts"]) else "resolved"
    )


# -- PagerDuty Events API v2 ----------------------------------------------------------------


def check_pagerduty(event: Any) -> None:
    """A trigger (full payload) or a resolve (three keys only)."""
    if event.get("event_action") in ("acknowledge", "resolve"):
        fields(event, {"routing_key": str, "dedup_key": str, "event_action": str})
        assert event["routing_key"] and event["dedup_key"]
        assert len(event["dedup_key"]) <= 255
        return
    fields(
        event,
        {"routing_key": str, "event_action": str, "payload": dict},
        {"dedup_key": str, "links": list, "images": list, "client": str, "client_url": str},
    )
    assert event["event_action"] == "trigger"
    assert event["routing_key"]
    assert len(event.get("dedup_key", "")) <= 255
    payload = event["payload"]
    fields(
        payload,
        {"summary": str, "source": str, "severity": str},
        {"timestamp": str, "component": str, "group": str, "class": str, "custom_details": dict},
    )
    assert 0 < len(payload["summary"]) <= 1024
    assert payload["source"]
    assert payload["severity"] in ("critical", "error", "warning", "info")
    if "timestamp" in payload:
        timestamp(payload["timestamp"])
    for link in event.get("links", []):
        fields(link, {"href": str}, {"text": str})
        assert link["href"].startswith(("http://", "https://"))
    for image in event.get("images", []):
        fields(image, {"src": str}, {"href": str, "alt": str})
        assert image["src"].startswith("https://")


# -- Slack incoming webhook (Block Kit) -----------------------------------------------------


def check_slack(body: Any) -> None:
    fields(body, {"text": str}, {"blocks": list, "channel": str, "username": str})
    assert 0 < len(body["text"]) <= 40000
    assert len(body.get("blocks", [])) <= 50
    for block in body.get("blocks", []):
        kind = block.get("type")
        if kind == "header":
            fields(block, {"type": str, "text": dict}, {"block_id": str})
            fields(block["text"], {"type": str, "text": str}, {"emoji": bool})
            assert block["text"]["type"] == "plain_text"
            assert 0 < len(block["text"]["text"]) <= 150
        elif kind == "section":
            fields(block, {"type": str, "text": dict}, {"block_id": str, "fields": list})
            fields(block["text"], {"type": str, "text": str}, {"verbatim": bool})
            assert block["text"]["type"] in ("mrkdwn", "plain_text")
            assert 0 < len(block["text"]["text"]) <= 3000
        elif kind == "context":
            fields(block, {"type": str, "elements": list}, {"block_id": str})
            assert 0 < len(block["elements"]) <= 10
            for element in block["elements"]:
                fields(element, {"type": str, "text": str})
                assert element["type"] in ("mrkdwn", "plain_text")
        else:
            assert kind == "divider", block


# -- Microsoft Teams Workflows: message with one Adaptive Card ------------------------------

TEXTBLOCK = {"type": str, "text": str}
TEXTBLOCK_OPTIONAL = {
    "wrap": bool, "weight": str, "size": str, "color": str, "separator": bool,
    "isSubtle": bool, "spacing": str, "maxLines": int, "horizontalAlignment": str,
}  # fmt: skip


def check_teams(body: Any) -> list[dict[str, Any]]:
    """Check the message; return the card's body elements."""
    fields(body, {"type": str, "attachments": list})
    assert body["type"] == "message"
    (attachment,) = body["attachments"]
    fields(attachment, {"contentType": str, "content": dict}, {"contentUrl": type(None)})
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    fields(
        card,
        {"$schema": str, "type": str, "version": str, "body": list},
        {"msteams": dict, "actions": list},
    )
    assert card["$schema"] == "http://adaptivecards.io/schemas/adaptive-card.json"
    assert card["type"] == "AdaptiveCard"
    assert card["version"] == "1.2"
    assert card["msteams"] == {"width": "full"}
    for element in card["body"]:
        fields(element, TEXTBLOCK, TEXTBLOCK_OPTIONAL)
        assert element["type"] == "TextBlock"
        assert element.get("weight", "Default") in ("Default", "Lighter", "Bolder")
        assert element.get("size", "Default") in (
            "Default", "Small", "Medium", "Large", "ExtraLarge",
        )  # fmt: skip
        assert element.get("color", "Default") in (
            "Default", "Dark", "Light", "Accent", "Good", "Warning", "Attention",
        )  # fmt: skip
    for action in card.get("actions", []):
        fields(action, {"type": str, "url": str}, {"title": str})
        assert action["type"] == "Action.OpenUrl"
    return list(card["body"])


# -- Opsgenie Alerts API ------------------------------------------------------------------


def check_opsgenie_create(body: Any) -> None:
    fields(
        body,
        {"message": str},
        {"alias": str, "description": str, "responders": list, "visibleTo": list,
         "actions": list, "tags": list, "details": dict, "entity": str, "source": str,
         "priority": str, "user": str, "note": str},
    )  # fmt: skip
    assert 0 < len(body["message"]) <= 130
    assert len(body.get("alias", "")) <= 512
    assert len(body.get("description", "")) <= 15000
    assert len(body.get("source", "")) <= 100
    for responder in body.get("responders", []):
        assert responder["type"] in ("team", "user", "escalation", "schedule")
        assert {"id", "name", "username"} & responder.keys()
    tags = body.get("tags", [])
    assert len(tags) <= 20
    assert all(isinstance(t, str) and 0 < len(t) <= 50 for t in tags)
    string_map(body.get("details", {}))
    assert body.get("priority", "P3") in ("P1", "P2", "P3", "P4", "P5")


def check_opsgenie_close(body: Any) -> None:
    fields(body, {}, {"user": str, "source": str, "note": str})
    assert len(body.get("note", "")) <= 25000

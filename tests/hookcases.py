"""Alerts and notifications for the hook tests: two XID alerts of one node, one resolved."""

from __future__ import annotations

import time

from telemetryd.alerting.model import Alert, Notification, fingerprint, notification

SECOND = 1_000_000_000


def xid_alert(gpu: int, *, resolved: bool = False, node: str = "node17") -> Alert:
    """A GpuXidCritical alert (XID 79) of one GPU that fired a minute ago."""
    now = time.time_ns()
    labels = {
        "alertname": "GpuXidCritical",
        "severity": "critical",
        "cluster": "c1",
        "node": node,
        "gpu": str(gpu),
        "uuid": f"GPU-0000000{gpu}-aaaa-bbbb-cccc-dddddddddddd",
        "xid": "79",
        "scope": "event",
    }
    return Alert(
        fingerprint=fingerprint(labels),
        status="resolved" if resolved else "firing",
        labels=labels,
        annotations={
            "summary": f"GPU {gpu} on {node} fell off the bus (XID 79)",
            "description": "The driver lost the GPU; drain the node and reset it.",
            "runbook_url": "https://runbooks.example/alerts.md#gpuxidcritical",
        },
        starts_ns=now - 60 * SECOND,
        fired_ns=now - 60 * SECOND,
        ends_ns=now - SECOND if resolved else 0,
        value=79.0,
        generator_url=f"http://aggregator.example:9100/alerts?node={node}",
    )


def xid_notification(*alerts: Alert, receiver: str = "oncall") -> Notification:
    """The notification of the GpuXidCritical group of node17 holding ``alerts``."""
    group = {"alertname": "GpuXidCritical", "node": "node17"}
    return notification(receiver, '{}:{alertname="GpuXidCritical",node="node17"}', group,
                        list(alerts), external_url="http://aggregator.example:9100")  # fmt: skip

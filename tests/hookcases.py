"""What every hook test needs: sample alerts, their notification, and one way to send it.

The alerts are XID 79 ("fell off the bus") alerts of GPUs of node17, at fixed times, so
payloads can be checked to the letter; every hook's tests (unit and integration) build
them here so that they describe the same incident.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from exporters.hooks import make_hook
from exporters.hooks.base import Hook
from exporters.hooks.config import Receiver
from telemetryd.alerting.model import Alert, Notification, fingerprint, notification

SECOND = 1_000_000_000
T0 = 1_767_261_600 * SECOND  # 2026-01-01T10:00:00Z: when make_alert's alerts fired
EXTERNAL_URL = "http://aggregator:9101"
T = TypeVar("T")


def make_alert(
    name: str = "GpuXidCritical",
    *,
    status: str = "firing",
    severity: str = "critical",
    node: str | None = "node17",
    gpu: str | None = "3",
    rack: str | None = "a",
    summary: str | None = None,
    description: str = "The GPU stopped answering on PCIe. Drain the node and reset it.",
    runbook: str = "https://runbooks.example/alerts.md#gpuxidcritical",
    value: float | None = 79.0,
) -> Alert:
    """An alert of one GPU that fired at T0 (and, resolved, ended ten minutes later).

    ``summary`` defaults to one naming the node and GPU; an empty annotation is left out.
    """
    labels = {"alertname": name, "severity": severity, "cluster": "c1", "scope": "gpu"}
    labels |= {k: v for k, v in (("node", node), ("gpu", gpu), ("rack", rack)) if v is not None}
    if gpu is not None:
        labels["uuid"] = f"GPU-{gpu:0>8}-aaaa-bbbb-cccc-dddddddddddd"
    if summary is None:
        summary = f"Xid 79 on {node} GPU {gpu}: fell off the bus"
    annotations = {"summary": summary, "description": description, "runbook_url": runbook}
    return Alert(
        fingerprint=fingerprint(labels), status=status,  # type: ignore[arg-type]
        labels=labels, annotations={k: v for k, v in annotations.items() if v},
        starts_ns=T0 - 60 * SECOND, fired_ns=T0,
        ends_ns=T0 + 600 * SECOND if status == "resolved" else 0,
        value=value, generator_url="http://aggregator:9101/alerts",
    )  # fmt: skip


def group(
    *alerts: Alert,
    receiver: str = "oncall",
    by: tuple[str, ...] = ("alertname", "node"),
    max_alerts: int = 0,
) -> Notification:
    """The notification of the group the first alert names by ``by``, holding ``alerts``."""
    labels = {k: alerts[0].labels[k] for k in by if k in alerts[0].labels}
    key = "{}:{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
    return notification(receiver, key, labels, list(alerts), external_url=EXTERNAL_URL,
                        max_alerts=max_alerts)  # fmt: skip


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one test's coroutine in a fresh event loop, bounded so a hang fails the test."""
    return asyncio.run(asyncio.wait_for(coro, timeout=60))


async def deliver(hook: Hook, *notifications: Notification) -> None:
    """Send each notification once, then close the hook (twice: that must be safe)."""
    try:
        for n in notifications:
            await hook.send(n)
    finally:
        await hook.close()
        await hook.close()


def send(cfg: Receiver, *notifications: Notification) -> None:
    """Make the receiver's hook and deliver the notifications through it."""
    run(deliver(make_hook(cfg), *notifications))

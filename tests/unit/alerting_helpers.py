"""Shared pieces of the alert dispatch tests: a clock moved by hand, a recording hook."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from exporters.hooks.base import HookError
from exporters.hooks.config import WebhookReceiver
from telemetryd.alerting.delivery import Delivery
from telemetryd.alerting.dispatch import Dispatcher
from telemetryd.alerting.model import Alert, Notification, fingerprint
from telemetryd.alerting.routing import Routing, parse_routing
from telemetryd.alerting.silences import SilenceStore

S = 1_000_000_000
T0 = 1_800_000_000 * S


class FakeClock:
    """Monotonic seconds and wall nanoseconds that move only when told."""

    def __init__(self) -> None:
        self.t = 1000.0

    def monotonic(self) -> float:
        return self.t

    def time_ns(self) -> int:
        return T0 + int((self.t - 1000.0) * S)

    def advance(self, seconds: float) -> None:
        self.t += seconds


class RecordingHook:
    """A Hook that records what it is sent; ``failures`` attempts fail first (-1: all)."""

    def __init__(
        self,
        name: str,
        *,
        send_resolved: bool = True,
        failures: int = 0,
        retryable: bool = True,
        retry_after: float | None = None,
    ) -> None:
        self.name = name
        self.send_resolved = send_resolved
        self.failures = failures
        self.retryable = retryable
        self.retry_after = retry_after
        self.attempts = 0
        self.sent: list[Notification] = []
        self.delivered = asyncio.Event()  # set at each notification received
        self.closed = False

    async def send(self, notification: Notification) -> None:
        self.attempts += 1
        if self.failures != 0:
            self.failures -= 1 if self.failures > 0 else 0
            raise HookError(
                "HTTP 503 from receiver", retryable=self.retryable, retry_after=self.retry_after
            )
        self.sent.append(notification)
        self.delivered.set()

    async def close(self) -> None:
        self.closed = True

    def fingerprints(self) -> list[tuple[str, list[str], list[str]]]:
        """(status, firing alertnames@node, resolved ...) of each notification received."""
        return [
            (
                n.status,
                [f"{a.labels['alertname']}@{a.labels.get('node', '')}" for a in n.firing],
                [f"{a.labels['alertname']}@{a.labels.get('node', '')}" for a in n.resolved],
            )
            for n in self.sent
        ]


def alert(
    clock: FakeClock, name: str, node: str = "n1", *, status: str = "firing", **labels: str
) -> Alert:
    lbls = {"alertname": name, "severity": "warning", "cluster": "c1", "node": node, **labels}
    lbls = {k: v for k, v in lbls.items() if v != ""}
    now = clock.time_ns()
    return Alert(
        fingerprint=fingerprint(lbls),
        status=status,  # type: ignore[arg-type]
        labels=lbls,
        annotations={"summary": f"{name} on {node}"},
        starts_ns=now,
        fired_ns=now,
        ends_ns=now if status == "resolved" else 0,
    )


def resolved(clock: FakeClock, firing: Alert) -> Alert:
    return Alert(
        fingerprint=firing.fingerprint,
        status="resolved",
        labels=firing.labels,
        annotations=firing.annotations,
        starts_ns=firing.starts_ns,
        fired_ns=firing.fired_ns,
        ends_ns=clock.time_ns(),
    )


def routing(text: str) -> Routing:
    import tomllib

    return parse_routing(tomllib.loads(text), "routing.toml")


class Rig:
    """A dispatcher and its delivery on a fake clock, stepped by the test."""

    def __init__(
        self,
        tmp: Path,
        routes: Routing,
        hooks: dict[str, RecordingHook],
        *,
        clock: FakeClock | None = None,
        silences: SilenceStore | None = None,
        retries: int = 2,
    ) -> None:
        self.clock = clock or FakeClock()
        self.hooks = hooks
        self.sleeps: list[float] = []
        receivers: dict[str, Any] = {
            name: WebhookReceiver(name=name, url="http://127.0.0.1:9/", retries=retries,
                                  retry_max=1.0)
            for name in hooks
        }  # fmt: skip
        self.delivery = Delivery(
            hooks, tmp, receivers=receivers, clock=self.clock, sleep=self._sleep,
            backoff_base=0.1,
        )  # fmt: skip
        self.dispatcher = Dispatcher(
            routes, self.delivery, tmp, silences=silences, clock=self.clock
        )
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def _sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(0)

    async def __aenter__(self) -> Rig:
        self.task = asyncio.create_task(self.delivery.run(self.stop))
        await self.settle()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.task is not None
        await self.task

    async def settle(self, advance: float = 0.0) -> None:
        """Move the clock, flush what is due, let deliveries finish, persist."""
        self.clock.advance(advance)
        await self.dispatcher.step()
        await self.delivery.idle()
        await self.dispatcher.step()

    def update(self, *alerts: Alert) -> None:
        self.dispatcher.update(alerts)

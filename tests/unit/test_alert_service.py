"""The alert service's retained topics: what fires is published, what stopped is cleared."""

from __future__ import annotations

import asyncio
from typing import Any

from telemetryd.alerting.service import AlertService
from telemetryd.config_alerts import AlertsConfig
from tests.unit.test_alert_engine import HOT, engine, report


class Session:
    """Records publications (the MQTT session's one method the service uses)."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, bool]] = []

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.published.append((topic, payload, retain))


def test_firing_is_retained_resolved_is_cleared_and_a_restart_clears_what_it_missed() -> None:
    eng, fleet = engine(HOT.replace('for = "20s"', ""))
    service = AlertService(AlertsConfig(), eng)
    session = Session()
    fleet.claim(r := report(0, temp_c=90.0))
    fleet.on_report(r, r.time_ns)
    service.on_report(r, r.time_ns)
    asyncio.run(service.publish(session))  # type: ignore[arg-type]
    ((topic, payload, retain),) = session.published
    assert topic.startswith("telemetry/v1/c1/_alerts/") and retain and b"GpuHot" in payload
    saved: dict[str, Any] = service.snapshot()

    # The alert resolves while this aggregator is down; its successor started from the
    # saved state (alert firing, topic published) sees the resolve in the WAL replay.
    eng2, fleet2 = engine(HOT.replace('for = "20s"', ""))
    again = AlertService(AlertsConfig(), eng2)
    again.restore(saved)
    fleet2.claim(r2 := report(1, temp_c=70.0))
    fleet2.on_report(r2, r2.time_ns)
    again.on_report(r2, r2.time_ns)
    again.republish()
    session2 = Session()
    asyncio.run(again.publish(session2))  # type: ignore[arg-type]
    assert session2.published == [(topic, b"", True)]
    assert again.published == set()

    # And a crash that lost the resolve entirely: the saved topic no longer fires.
    third, _ = engine(HOT.replace('for = "20s"', ""))
    svc3 = AlertService(AlertsConfig(), third)
    svc3.restore({**saved, "alerts": []})
    svc3.republish()
    session3 = Session()
    asyncio.run(svc3.publish(session3))  # type: ignore[arg-type]
    assert (topic, b"", True) in session3.published

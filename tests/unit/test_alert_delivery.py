"""Delivery lanes: retries with capped backoff, dead letters, superseding, counters."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from exporters.hooks.config import WebhookReceiver
from telemetryd.alerting.deadletters import read_deadletters
from telemetryd.alerting.delivery import Delivery
from telemetryd.alerting.model import Notification, notification
from tests.unit.alerting_helpers import FakeClock, RecordingHook, alert


def note(receiver: str, group: str = "g1", name: str = "GpuHot") -> Notification:
    return notification(receiver, group, {"alertname": name}, [alert(FakeClock(), name)])


def cfg(name: str, **kw: object) -> WebhookReceiver:
    return WebhookReceiver(name=name, url="http://127.0.0.1:9/", **kw)  # type: ignore[arg-type]


class GatedHook(RecordingHook):
    """Each send waits until the test opens the gate."""

    def __init__(self, name: str, **kw: object) -> None:
        super().__init__(name, **kw)  # type: ignore[arg-type]
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def send(self, notification: Notification) -> None:
        self.waiting.set()
        await self.gate.wait()
        await super().send(notification)


class Sleeps:
    """Records retry delays; ``hold`` makes them last until released."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.hold = False
        self.sleeping = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.sleeping.set()
        if self.hold:
            await asyncio.Event().wait()
        await asyncio.sleep(0)


async def running(delivery: Delivery) -> tuple[asyncio.Event, asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(delivery.run(stop))
    await asyncio.sleep(0)
    return stop, task


def test_failing_receiver_is_retried_then_dead_lettered_while_others_deliver(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        bad = GatedHook("bad", failures=-1)
        good = RecordingHook("good")
        sleeps = Sleeps()
        clock = FakeClock()
        delivery = Delivery(
            {"bad": bad, "good": good}, tmp_path, clock=clock, sleep=sleeps, backoff_base=0.5,
            receivers={"bad": cfg("bad", retries=3, retry_max=1.0), "good": cfg("good")},
        )  # fmt: skip
        outcomes: list[tuple[str, str]] = []
        delivery.on_done = lambda n, outcome: outcomes.append((n.receiver, outcome))
        stop, task = await running(delivery)
        delivery.submit(note("bad"))
        await bad.waiting.wait()  # the bad receiver hangs in its first attempt ...
        delivery.submit(note("good"))
        async with asyncio.timeout(5):
            await good.delivered.wait()  # ... and the good one is served meanwhile
        assert outcomes == [("good", "sent")]
        assert delivery.stats()["bad"].in_flight == 1
        bad.gate.set()
        await delivery.idle()
        assert bad.attempts == 4  # the first and 3 retries
        assert len(sleeps.delays) == 3
        assert all(0.25 <= d <= 1.5 for d in sleeps.delays)  # doubling from 0.5, capped at 1 s
        assert outcomes == [("good", "sent"), ("bad", "failed")]
        stats = delivery.stats()
        assert (stats["bad"].sent, stats["bad"].retries, stats["bad"].failed) == (0, 3, 1)
        assert stats["bad"].last_error == "HTTP 503 from receiver"
        assert stats["bad"].last_error_ns == clock.time_ns()
        assert (stats["good"].sent, stats["good"].retries, stats["good"].failed) == (1, 0, 0)
        assert stats["good"].queued == stats["bad"].queued == 0
        [letter] = read_deadletters(tmp_path)
        assert letter["receiver"] == "bad"
        assert letter["attempts"] == 4
        assert letter["reason"] == "gave up after 4 attempts: HTTP 503 from receiver"
        assert letter["time"] == "2027-01-15T08:00:00+00:00"
        assert letter["notification"]["receiver"] == "bad"
        assert letter["notification"]["alerts"][0]["labels"]["alertname"] == "GpuHot"
        stop.set()
        await task

    asyncio.run(scenario())


def test_refused_for_good_goes_to_the_dead_letters_at_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        hook = RecordingHook("pd", failures=-1, retryable=False)
        delivery = Delivery({"pd": hook}, tmp_path, receivers={"pd": cfg("pd", retries=5)})
        stop, task = await running(delivery)
        delivery.submit(note("pd"))
        await delivery.idle()
        assert hook.attempts == 1
        stats = delivery.stats()["pd"]
        assert (stats.sent, stats.retries, stats.failed) == (0, 0, 1)
        [letter] = read_deadletters(tmp_path)
        assert letter["reason"] == "refused: HTTP 503 from receiver"
        assert letter["attempts"] == 1
        stop.set()
        await task

    asyncio.run(scenario())


def test_retry_after_is_honoured(tmp_path: Path) -> None:
    async def scenario() -> None:
        hook = RecordingHook("slack", failures=2, retry_after=42.0)
        sleeps = Sleeps()
        delivery = Delivery({"slack": hook}, tmp_path, sleep=sleeps, backoff_base=0.1,
                            receivers={"slack": cfg("slack", retry_max=5.0)})  # fmt: skip
        stop, task = await running(delivery)
        delivery.submit(note("slack"))
        await delivery.idle()
        assert sleeps.delays == [42.0, 42.0]
        assert len(hook.sent) == 1
        assert delivery.stats()["slack"].retries == 2
        assert read_deadletters(tmp_path) == []
        stop.set()
        await task

    asyncio.run(scenario())


def test_a_hook_that_does_not_answer_times_out_and_a_buggy_one_is_retried(tmp_path: Path) -> None:
    class Hangs(RecordingHook):
        async def send(self, notification: Notification) -> None:
            self.attempts += 1
            await asyncio.Event().wait()

    class Buggy(RecordingHook):
        async def send(self, notification: Notification) -> None:
            self.attempts += 1
            if self.attempts == 1:
                raise KeyError("oops")
            await super().send(notification)

    async def scenario() -> None:
        hangs, buggy = Hangs("hangs"), Buggy("buggy")
        delivery = Delivery(
            {"hangs": hangs, "buggy": buggy}, tmp_path, sleep=Sleeps(),
            receivers={"hangs": cfg("hangs", timeout=0.01, retries=1), "buggy": cfg("buggy")},
        )  # fmt: skip
        stop, task = await running(delivery)
        delivery.submit(note("hangs"))
        delivery.submit(note("buggy"))
        await delivery.idle()
        assert hangs.attempts == 2
        assert delivery.stats()["hangs"].last_error == "no answer within 0.01s"
        assert delivery.stats()["buggy"].sent == 1
        assert delivery.stats()["buggy"].retries == 1
        assert [d["reason"] for d in read_deadletters(tmp_path)] == [
            "gave up after 2 attempts: no answer within 0.01s"
        ]
        stop.set()
        await task

    asyncio.run(scenario())


def test_a_newer_notification_replaces_a_queued_one(tmp_path: Path) -> None:
    async def scenario() -> None:
        hook = GatedHook("ops")
        delivery = Delivery({"ops": hook}, tmp_path)
        stop, task = await running(delivery)
        delivery.submit(note("ops", "g1", "First"))
        await hook.waiting.wait()  # being sent
        delivery.submit(note("ops", "g1", "Stale"))
        delivery.submit(note("ops", "g2", "Other"))
        delivery.submit(note("ops", "g1", "Newest"))
        assert delivery.stats()["ops"].queued == 2
        hook.gate.set()
        await delivery.idle()
        names = [n.group_labels["alertname"] for n in hook.sent]
        assert names == ["First", "Newest", "Other"]
        assert delivery.stats()["ops"].superseded == 1
        stop.set()
        await task

    asyncio.run(scenario())


def test_a_retried_notification_gives_way_to_a_newer_one(tmp_path: Path) -> None:
    async def scenario() -> None:
        hook = RecordingHook("ops", failures=1)
        sleeps = Sleeps()
        sleeps.hold = True  # the first retry would wait as long as the receiver is down
        delivery = Delivery({"ops": hook}, tmp_path, sleep=sleeps)
        outcomes: list[str] = []
        delivery.on_done = lambda n, outcome: outcomes.append(
            f"{n.group_labels['alertname']}:{outcome}"
        )
        stop, task = await running(delivery)
        delivery.submit(note("ops", "g1", "Old"))
        await sleeps.sleeping.wait()
        delivery.submit(note("ops", "g1", "New"))
        await delivery.idle()
        assert outcomes == ["Old:superseded", "New:sent"]
        assert [n.group_labels["alertname"] for n in hook.sent] == ["New"]
        stats = delivery.stats()["ops"]
        assert (stats.sent, stats.failed, stats.superseded, stats.retries) == (1, 0, 1, 0)
        assert read_deadletters(tmp_path) == []
        stop.set()
        await task

    asyncio.run(scenario())


def test_a_full_queue_dead_letters_its_oldest(tmp_path: Path) -> None:
    async def scenario() -> None:
        hook = GatedHook("ops")
        delivery = Delivery({"ops": hook}, tmp_path, queue_max=2)
        stop, task = await running(delivery)
        delivery.submit(note("ops", "g0"))
        await hook.waiting.wait()
        for group in ("g1", "g2", "g3"):
            delivery.submit(note("ops", group))
        hook.gate.set()
        await delivery.idle()
        assert [n.group_key for n in hook.sent] == ["g0", "g2", "g3"]
        [letter] = read_deadletters(tmp_path)
        assert letter["notification"]["group_key"] == "g1"
        assert letter["reason"].startswith("queue full")
        assert delivery.stats()["ops"].failed == 1
        stop.set()
        await task

    asyncio.run(scenario())


def test_dead_letter_file_rotates_once_and_reads_in_order(tmp_path: Path) -> None:
    async def scenario() -> None:
        hook = RecordingHook("ops", failures=-1, retryable=False)
        delivery = Delivery({"ops": hook}, tmp_path, deadletter_max_bytes=1500)
        stop, task = await running(delivery)
        for i in range(12):
            delivery.submit(note("ops", f"g{i}"))
            await delivery.idle()
        stop.set()
        await task
        current = tmp_path / "deadletter.jsonl"
        rotated = tmp_path / "deadletter.jsonl.1"
        assert rotated.exists()
        assert current.stat().st_size < 1500 + 2000
        records = read_deadletters(tmp_path)
        groups = [int(r["notification"]["group_key"][1:]) for r in records]
        assert groups == sorted(groups)
        assert groups[-1] == 11
        assert len(groups) < 12  # older rotations are gone: bounded
        assert read_deadletters(tmp_path, limit=2) == records[-2:]
        # A torn last line (a crash mid-write) is skipped.
        current.write_bytes(current.read_bytes() + b'{"time": "2027')
        assert read_deadletters(tmp_path) == records
        assert all(json.loads(line) for line in rotated.read_text().splitlines())

    asyncio.run(scenario())


def test_stop_gives_in_flight_sends_a_grace_period(tmp_path: Path) -> None:
    async def scenario() -> None:
        hook = GatedHook("ops")
        delivery = Delivery({"ops": hook}, tmp_path, grace_s=5)
        stop, task = await running(delivery)
        delivery.submit(note("ops"))
        await hook.waiting.wait()
        stop.set()
        await asyncio.sleep(0)
        hook.gate.set()
        await task
        assert len(hook.sent) == 1

    asyncio.run(scenario())


def test_unknown_receiver_is_a_key_error(tmp_path: Path) -> None:
    delivery = Delivery({}, tmp_path)
    with pytest.raises(KeyError):
        delivery.submit(note("nobody"))

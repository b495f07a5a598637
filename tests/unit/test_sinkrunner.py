"""The feed and the sink runner over a real WAL, with an in-memory sink that can fail on cue."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from exporters.base import SinkError, SinkRejected
from telemetryd import sinkrunner
from telemetryd.backoff import Backoff
from telemetryd.deadletter import DeadLetters
from telemetryd.model import Report, decode_report, encode_report
from telemetryd.sinkrunner import Feed, SinkRunner, cursor_file
from telemetryd.wal import Wal
from tests.reports import sampled

S = 1_000_000_000
T = 1_800_000_000 * S
BOOT = "0123456789abcdef0123456789abcdef"


def report(seq: int) -> Report:
    r = decode_report(sampled())
    r.seq = seq
    r.boot_id = BOOT
    r.time_ns = T + seq * 10 * S
    return r


def reports(seqs: range | list[int]) -> list[Report]:
    return [report(n) for n in seqs]


Step = BaseException | Callable[[Sequence[Report]], BaseException] | None


class FakeSink:
    """Our Sink interface in memory: each write follows the next step of ``plan``."""

    def __init__(self, name: str = "fake://store/a") -> None:
        self.name = name
        self.plan: list[Step] = []
        self.fail_always: SinkError | None = None
        self.open_failures: list[SinkError] = []
        self.batches: list[list[int]] = []  # what the store holds, batch by batch (seqs)
        self.attempts: list[tuple[float, list[int]]] = []
        self.on_write: Callable[[Sequence[Report]], None] | None = None
        self.opens = 0
        self.closed = False

    async def open(self) -> None:
        self.opens += 1
        if self.open_failures:
            raise self.open_failures.pop(0)

    async def write(self, batch: Sequence[Report]) -> None:
        assert all(isinstance(r, Report) for r in batch)
        self.attempts.append((time.monotonic(), [r.seq for r in batch]))
        if self.on_write:
            self.on_write(batch)
        if self.fail_always:
            raise self.fail_always
        step = self.plan.pop(0) if self.plan else None
        if isinstance(step, BaseException):
            raise step
        if step is not None:
            raise step(batch)
        self.batches.append([r.seq for r in batch])

    async def close(self) -> None:
        self.closed = True

    @property
    def written(self) -> list[int]:
        return [seq for batch in self.batches for seq in batch]


class Rig:
    """A WAL, dead letters and a cursor directory in tmp_path; feeds are made per event loop."""

    def __init__(self, tmp_path: Path, *, segment_bytes: int = 64 << 20) -> None:
        self.tmp_path = tmp_path
        self.segment_bytes = segment_bytes
        self.wal = self.open_wal()
        self.deadletters = DeadLetters(tmp_path / "deadletter.jsonl", max_bytes=1 << 20)

    def open_wal(self) -> Wal:
        wal = Wal(self.tmp_path / "wal", max_bytes=1 << 30, segment_bytes=self.segment_bytes)
        wal.open()
        return wal

    def reopen(self) -> None:
        self.wal.close()
        self.wal = self.open_wal()

    def commit(self, feed: Feed | None, batch: list[Report]) -> int:
        first = self.wal.append([encode_report(r) for r in batch])
        if feed is not None:
            feed.committed(first, batch)
        return first

    def runner(self, sink: FakeSink, feed: Feed, batch_size: int = 4) -> SinkRunner:
        path = cursor_file(self.wal.directory, sink.name)
        return SinkRunner(sink, feed, path, self.deadletters, batch_size=batch_size)

    def saved_cursor(self, sink: FakeSink) -> int | None:
        path = cursor_file(self.wal.directory, sink.name)
        return int(path.read_text()) if path.exists() else None


async def drive(
    runner: SinkRunner, until: Callable[[], bool], *, within: float = 3.0, drain_s: float = 0.3
) -> bool:
    """Run the runner until ``until()`` holds (or ``within`` s pass), then stop it; did it?"""
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop, drain_s=drain_s))
    deadline = time.monotonic() + within
    # Polling a plain predicate over the fake's state: there is no event to wait on.
    while not until() and not task.done() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.005)
    reached = until()
    stop.set()
    await asyncio.wait_for(task, drain_s + 3)
    return reached


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries at 10-20 ms instead of 0.5-60 s: the same code path, a shorter wait."""
    monkeypatch.setattr(sinkrunner, "Backoff", lambda base, cap: Backoff(0.01, 0.02))
    sampled()  # sampled outside the tests' event loops (it runs one of its own)


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    rig = Rig(tmp_path)
    yield rig
    rig.wal.close()


# -- cursor files ---------------------------------------------------------------------------
def test_cursor_file_depends_on_the_sink_name_only(tmp_path: Path) -> None:
    a = cursor_file(tmp_path, "sqlite:///var/lib/telemetryd/a.db")
    assert a == cursor_file(tmp_path, "sqlite:///var/lib/telemetryd/a.db")
    assert a.parent == tmp_path
    assert a.name.startswith("cursor-sqlite-")
    assert a != cursor_file(tmp_path, "sqlite:///var/lib/telemetryd/b.db")
    assert a != cursor_file(tmp_path, "influx://host:8086/a.db")
    assert not a.name.endswith(".wal")  # never taken for a WAL segment


# -- the feed -------------------------------------------------------------------------------
def test_feed_serves_committed_batches_from_memory(rig: Rig) -> None:
    async def main() -> None:
        feed = Feed(rig.wal)
        first = reports(range(3))
        second = reports(range(3, 5))
        rig.commit(feed, first)
        rig.commit(feed, second)
        got = await feed.read(1, 3)
        assert [i for i, _ in got] == [1, 2, 3]
        assert got[0][1] is first[1]  # the same objects: nothing decoded again
        assert got[2][1] is second[0]
        assert await feed.read(4, 100) == [(4, second[1])]

    asyncio.run(main())


def test_feed_never_serves_across_a_gap_and_reads_the_wal_instead(rig: Rig) -> None:
    async def main() -> None:
        feed = Feed(rig.wal)
        rig.commit(feed, reports(range(2)))
        unannounced = reports(range(2, 4))
        rig.commit(None, unannounced)  # durable, but the feed never heard of them
        latest = reports(range(4, 6))
        rig.commit(feed, latest)  # first index 4, not 2: the memory starts over
        got = await feed.read(1, 10)
        assert [i for i, _ in got] == [1, 2, 3, 4, 5]  # from the WAL, in order, no hole
        assert [r.seq for _, r in got] == [1, 2, 3, 4, 5]  # type: ignore[union-attr]
        assert got[1][1] == unannounced[0]
        assert got[1][1] is not unannounced[0]
        memory = await feed.read(4, 10)
        assert memory[0][1] is latest[0]

    asyncio.run(main())


def test_feed_reads_the_wal_for_what_memory_no_longer_holds(rig: Rig) -> None:
    async def main() -> None:
        feed = Feed(rig.wal, keep=4)
        batch = reports(range(10))
        rig.commit(feed, batch)
        old = await feed.read(0, 3)
        assert [r.seq for _, r in old] == [0, 1, 2]  # type: ignore[union-attr]
        assert old[0][1] is not batch[0]
        recent = await feed.read(6, 10)
        assert [i for i, _ in recent] == [6, 7, 8, 9]
        assert recent[0][1] is batch[6]

    asyncio.run(main())


def test_feed_read_waits_for_the_record(rig: Rig) -> None:
    async def main() -> None:
        feed = Feed(rig.wal)
        rig.commit(feed, reports(range(2)))
        pending = asyncio.create_task(feed.read(2, 5))
        await asyncio.sleep(0.05)
        assert not pending.done()
        later = reports(range(2, 4))
        rig.commit(feed, later)
        got = await asyncio.wait_for(pending, 1)
        assert [i for i, _ in got] == [2, 3]
        assert got[0][1] is later[0]

    asyncio.run(main())


def test_feed_returns_none_for_a_record_that_does_not_decode(rig: Rig) -> None:
    async def main() -> None:
        rig.commit(None, reports(range(2)))
        rig.wal.append([b'{"not": "a report"}'])
        rig.commit(None, reports(range(3, 4)))
        feed = Feed(rig.wal)  # a restart: nothing in memory
        got = await feed.read(0, 10)
        assert [i for i, _ in got] == [0, 1, 2, 3]
        assert got[2][1] is None
        assert got[3][1] is not None and got[3][1].seq == 3

    asyncio.run(main())


# -- the runner -----------------------------------------------------------------------------
def test_runner_writes_everything_in_order_in_batches(rig: Rig) -> None:
    sink = FakeSink()

    async def main() -> None:
        feed = Feed(rig.wal)
        rig.commit(feed, reports(range(6)))
        runner = rig.runner(sink, feed, batch_size=4)
        assert runner.lag() == 6
        assert runner.report().state == "starting"

        async def more() -> None:
            await asyncio.sleep(0.05)
            rig.commit(feed, reports(range(6, 9)))

        extra = asyncio.create_task(more())
        assert await drive(runner, lambda: len(sink.written) == 9)
        await extra
        assert sink.written == list(range(9))
        assert all(len(b) <= 4 for b in sink.batches)
        assert sink.batches[0] == [0, 1, 2, 3]
        assert runner.cursor == 9
        assert rig.saved_cursor(sink) == 9
        state = runner.report()
        assert (state.state, state.written, state.lag, state.retries) == ("ok", 9, 0, 0)
        assert state.name == sink.name
        assert sink.opens == 1
        assert sink.closed

    asyncio.run(main())


def test_cursor_is_saved_after_each_batch_once_its_interval_passed(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sinkrunner, "CURSOR_SAVE_S", 0.0)
    sink = FakeSink()
    seen: list[int | None] = []
    sink.on_write = lambda batch: seen.append(rig.saved_cursor(sink))

    async def main() -> None:
        feed = Feed(rig.wal)
        rig.commit(feed, reports(range(10)))
        assert await drive(rig.runner(sink, feed, batch_size=3), lambda: len(sink.written) == 10)

    asyncio.run(main())
    assert seen == [None, 3, 6, 9]  # at each write, the previous batch's end is on disk


def test_cursor_saves_are_spaced_and_the_wal_is_released_only_up_to_the_saved_one(
    rig: Rig,
) -> None:
    sink = FakeSink()
    seen: list[tuple[int | None, int]] = []

    async def main() -> None:
        feed = Feed(rig.wal)
        runner = rig.runner(sink, feed, batch_size=3)
        sink.on_write = lambda batch: seen.append((rig.saved_cursor(sink), runner.saved))
        rig.commit(feed, reports(range(10)))
        assert await drive(runner, lambda: len(sink.written) == 10)
        assert runner.saved == runner.cursor == 10  # saved when it stopped

    asyncio.run(main())
    # The first batch's end is saved at once; the next saves wait CURSOR_SAVE_S, and
    # ``saved`` (what the aggregator releases the WAL up to) follows the file, not the writes.
    assert seen == [(None, 0), (3, 3), (3, 3), (3, 3)]
    assert rig.saved_cursor(sink) == 10


def test_a_lone_report_lingers_for_the_next_one(rig: Rig) -> None:
    sink = FakeSink()

    async def main() -> None:
        feed = Feed(rig.wal)
        runner = SinkRunner(sink, feed, cursor_file(rig.wal.directory, sink.name),
                            rig.deadletters, batch_size=8, linger_s=0.3)  # fmt: skip
        rig.commit(feed, reports(range(1)))

        async def later() -> None:
            await asyncio.sleep(0.05)
            rig.commit(feed, reports(range(1, 3)))

        follow = asyncio.create_task(later())
        assert await drive(runner, lambda: len(sink.written) == 3)
        await follow

    asyncio.run(main())
    assert sink.batches == [[0, 1, 2]]  # one write, not a write for the first alone


def test_a_sink_error_is_retried_without_advancing(rig: Rig) -> None:
    sink = FakeSink()
    sink.plan = [SinkError("store down"), SinkError("store down"), SinkError("still down")]
    cursors: list[int | None] = []
    sink.on_write = lambda batch: cursors.append(rig.saved_cursor(sink))

    async def main() -> None:
        feed = Feed(rig.wal)
        rig.commit(feed, reports(range(5)))
        runner = rig.runner(sink, feed, batch_size=3)
        assert await drive(runner, lambda: len(sink.written) == 5)
        state = runner.report()
        assert state.retries == 3
        assert state.last_error == "still down"
        assert state.state == "ok"
        assert state.written == 5

    asyncio.run(main())
    attempted = [seqs for _, seqs in sink.attempts]
    assert attempted[:4] == [[0, 1, 2]] * 4  # the same batch again, never skipped
    assert sink.batches == [[0, 1, 2], [3, 4]]  # written once
    assert cursors[:4] == [None] * 4
    assert rig.saved_cursor(sink) == 5


def test_a_sink_error_shows_as_retrying_while_it_lasts(rig: Rig) -> None:
    sink = FakeSink()
    sink.fail_always = SinkError("429 too many requests", retry_after=0.01)

    async def main() -> None:
        feed = Feed(rig.wal)
        rig.commit(feed, reports(range(3)))
        runner = rig.runner(sink, feed)
        assert await drive(runner, lambda: len(sink.attempts) >= 3, drain_s=0.1)
        state = runner.report()
        assert state.state == "retrying"
        assert state.last_error == "429 too many requests"
        assert state.written == 0
        assert state.lag == 3
        assert runner.cursor == 0
        assert sink.closed  # stopped after the drain time although it never caught up

    asyncio.run(main())
    assert rig.saved_cursor(sink) is None


def test_retry_after_is_honoured(rig: Rig) -> None:
    sink = FakeSink()
    sink.plan = [SinkError("rate limited", retry_after=0.3)]

    async def main() -> None:
        feed = Feed(rig.wal)
        rig.commit(feed, reports(range(2)))
        assert await drive(rig.runner(sink, feed), lambda: len(sink.written) == 2)

    asyncio.run(main())
    (first, _), (second, _) = sink.attempts[:2]
    assert second - first >= 0.29  # the backoff alone would have waited 10-20 ms


def test_rejected_reports_go_to_dead_letters_and_the_cursor_advances(rig: Rig) -> None:
    sink = FakeSink(name="fake://store/rejecting")

    def refuse_seq_1(batch: Sequence[Report]) -> BaseException:
        sink.batches.append([r.seq for r in batch if r.seq != 1])  # the rest was written
        return SinkRejected([(r, "field type conflict on power_w") for r in batch if r.seq == 1])

    sink.plan = [refuse_seq_1]

    async def main() -> None:
        feed = Feed(rig.wal)
        rig.commit(feed, reports(range(6)))
        runner = rig.runner(sink, feed, batch_size=3)
        assert await drive(runner, lambda: runner.cursor == 6)
        assert runner.report().rejected == 1

    asyncio.run(main())
    assert [seqs for _, seqs in sink.attempts] == [[0, 1, 2], [3, 4, 5]]  # not retried
    assert sink.written == [0, 2, 3, 4, 5]
    (letter,) = rig.deadletters.read()
    assert letter["topic"] == "sink:fake://store/rejecting"
    assert letter["reason"] == "store_rejected"
    assert letter["detail"] == "field type conflict on power_w"
    assert letter["payload"] == "n1:1"
    assert rig.deadletters.counts["store_rejected"] == 1
    assert rig.saved_cursor(sink) == 6


def test_a_restart_resumes_from_the_saved_cursor(rig: Rig) -> None:
    first_sink = FakeSink()

    async def first_run() -> None:
        feed = Feed(rig.wal)
        rig.commit(feed, reports(range(7)))
        assert await drive(rig.runner(first_sink, feed), lambda: len(first_sink.written) == 7)

    asyncio.run(first_run())
    rig.reopen()  # the aggregator restarts
    rig.commit(None, reports(range(7, 10)))
    second_sink = FakeSink()  # same name: same cursor file

    async def second_run() -> None:
        feed = Feed(rig.wal)
        runner = rig.runner(second_sink, feed)
        assert runner.cursor == 7
        assert runner.lag() == 3
        assert await drive(runner, lambda: len(second_sink.written) == 3)

    asyncio.run(second_run())
    assert second_sink.written == [7, 8, 9]  # nothing written twice, nothing skipped
    other = FakeSink(name="fake://store/b")  # another sink starts from the oldest record

    async def other_run() -> None:
        feed = Feed(rig.wal)
        assert await drive(rig.runner(other, feed), lambda: len(other.written) == 10)

    asyncio.run(other_run())
    assert other.written == list(range(10))


def test_a_cursor_into_released_segments_starts_at_the_oldest_kept(tmp_path: Path) -> None:
    rig = Rig(tmp_path, segment_bytes=1)  # one segment per batch
    sink = FakeSink()
    try:
        rig.commit(None, reports(range(3)))
        rig.commit(None, reports(range(3, 5)))
        rig.commit(None, reports(range(5, 6)))
        cursor_file(rig.wal.directory, sink.name).write_text("1")
        rig.wal.release(5)
        assert rig.wal.first_index == 5

        async def main() -> None:
            runner = rig.runner(sink, Feed(rig.wal))
            assert runner.cursor == 5
            assert await drive(runner, lambda: len(sink.written) == 1)

        asyncio.run(main())
        assert sink.written == [5]
    finally:
        rig.wal.close()


def test_an_unreadable_cursor_starts_at_the_oldest_kept(rig: Rig) -> None:
    sink = FakeSink()
    cursor_file(rig.wal.directory, sink.name).write_text("garbage\n")
    rig.commit(None, reports(range(2)))

    async def main() -> None:
        runner = rig.runner(sink, Feed(rig.wal))
        assert runner.cursor == 0
        assert await drive(runner, lambda: len(sink.written) == 2)

    asyncio.run(main())
    assert sink.written == [0, 1]


def test_open_is_retried_until_the_store_is_there(rig: Rig) -> None:
    sink = FakeSink()
    sink.open_failures = [SinkError("connection refused"), SinkError("connection refused")]

    async def main() -> None:
        feed = Feed(rig.wal)
        rig.commit(feed, reports(range(2)))
        runner = rig.runner(sink, feed)
        assert await drive(runner, lambda: len(sink.written) == 2)
        assert runner.report().retries == 2
        assert runner.report().state == "ok"

    asyncio.run(main())
    assert sink.opens == 3


def test_a_record_that_does_not_decode_is_skipped(rig: Rig) -> None:
    sink = FakeSink()
    rig.commit(None, reports(range(2)))
    rig.wal.append([b"\x00garbage"])
    rig.commit(None, reports(range(3, 5)))

    async def main() -> None:
        runner = rig.runner(sink, Feed(rig.wal), batch_size=10)
        assert await drive(runner, lambda: runner.cursor == 5)

    asyncio.run(main())
    assert sink.written == [0, 1, 3, 4]
    assert rig.saved_cursor(sink) == 5


def test_stop_drains_what_is_committed_then_returns(rig: Rig) -> None:
    sink = FakeSink()

    async def main() -> None:
        feed = Feed(rig.wal)
        runner = rig.runner(sink, feed, batch_size=2)
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop, drain_s=2.0))
        await asyncio.sleep(0.02)  # open, waiting for records
        rig.commit(feed, reports(range(5)))
        stop.set()  # at once: what is committed is still written, within drain_s
        await asyncio.wait_for(task, 3)
        assert runner.lag() == 0

    asyncio.run(main())
    assert sink.written == [0, 1, 2, 3, 4]
    assert sink.closed


def test_a_failing_sink_does_not_stall_another(rig: Rig) -> None:
    broken = FakeSink(name="fake://broken")
    broken.fail_always = SinkError("down")
    healthy = FakeSink(name="fake://healthy")

    async def main() -> None:
        feed = Feed(rig.wal)
        runners = [rig.runner(broken, feed), rig.runner(healthy, feed)]
        stop = asyncio.Event()
        tasks = [asyncio.create_task(r.run(stop, drain_s=0.1)) for r in runners]
        for n in range(5):
            rig.commit(feed, reports(range(n * 3, n * 3 + 3)))
            await asyncio.sleep(0.01)
        deadline = time.monotonic() + 3
        while len(healthy.written) < 15 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 3)
        assert runners[0].cursor == 0
        assert runners[1].cursor == 15

    asyncio.run(main())
    assert healthy.written == list(range(15))
    assert broken.written == []


# -- found problems -------------------------------------------------------------------------
def test_rejected_reports_do_not_count_as_written(rig: Rig) -> None:
    sink = FakeSink()
    sink.plan = [lambda batch: SinkRejected([(batch[0], "refused")])]

    async def main() -> None:
        feed = Feed(rig.wal)
        rig.commit(feed, reports(range(3)))
        runner = rig.runner(sink, feed)
        assert await drive(runner, lambda: runner.cursor == 3)
        assert runner.report().rejected == 1
        assert runner.report().written == 2

    asyncio.run(main())


def test_a_sink_moves_past_records_lost_to_corruption(tmp_path: Path) -> None:
    rig = Rig(tmp_path, segment_bytes=1)  # one segment per batch
    sink = FakeSink()
    batch = reports(range(4))
    rig.commit(None, batch)
    rig.commit(None, reports(range(4, 8)))
    rig.wal.close()
    segment = rig.wal.directory / f"{0:020d}.wal"
    damaged = bytearray(segment.read_bytes())
    damaged[8 + len(encode_report(batch[0])) + 8 + 20] ^= 0x01  # inside record 1
    segment.write_bytes(bytes(damaged))
    rig.wal = rig.open_wal()
    try:
        assert rig.wal.corrupt_records == 1

        async def main() -> None:
            runner = rig.runner(sink, Feed(rig.wal))
            reached = await drive(runner, lambda: 7 in sink.written, within=0.5, drain_s=0.1)
            assert reached, f"stuck at cursor {runner.cursor}, wrote {sink.written}"

        asyncio.run(main())
        assert sink.written == [0, 4, 5, 6, 7]
    finally:
        rig.wal.close()


def test_reports_appended_after_recovery_reach_a_sink_that_was_ahead(rig: Rig) -> None:
    sink = FakeSink()
    old = reports(range(6))

    async def before() -> None:
        feed = Feed(rig.wal)
        rig.commit(feed, old)
        assert await drive(rig.runner(sink, feed), lambda: len(sink.written) == 6)

    asyncio.run(before())
    rig.wal.close()
    segment = rig.wal.directory / f"{0:020d}.wal"
    damaged = bytearray(segment.read_bytes())
    record = 8 + len(encode_report(old[0]))
    damaged[2 * record + 8 + 20] ^= 0x01  # inside record 2: disk damage
    segment.write_bytes(bytes(damaged))
    rig.wal = rig.open_wal()
    assert rig.wal.corrupt_records == 1
    assert rig.wal.next_index > 5  # never reuse an index a reader may have gone past

    async def after() -> None:
        feed = Feed(rig.wal)
        rig.commit(feed, reports(range(100, 104)))  # new reports, acknowledged to the broker
        runner = rig.runner(sink, feed)
        reached = await drive(runner, lambda: 103 in sink.written, within=0.5, drain_s=0.1)
        assert reached, f"cursor {runner.cursor}, WAL next index {rig.wal.next_index}"

    asyncio.run(after())


def test_cursor_file_stays_in_the_directory_for_any_name(tmp_path: Path) -> None:
    assert cursor_file(tmp_path, "/var/lib/telemetryd/archive").parent == tmp_path

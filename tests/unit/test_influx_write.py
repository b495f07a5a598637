"""The answer policy shared by the InfluxDB sinks: Retry-After, splitting, bisecting, resuming.

``LineWriter`` is driven by an in-process ``post`` that applies a tiny rule (refuse lines
containing "poison", answer 413 above N lines, fail on cue): a test of our algorithm, not an
imitation of a server. The servers themselves are in tests/integration (a real InfluxDB
1.x, and the InfluxDB 2 stand-in).
"""

from __future__ import annotations

import asyncio
import datetime
import gzip
import math
from collections import Counter
from collections.abc import Callable

import pytest

from exporters.base import SinkError, SinkRejected
from exporters.influx_write import (
    RETRY_AFTER_MAX,
    Interrupted,
    LineCounters,
    LineSink,
    LineWriter,
    WriteReply,
    retry_after,
)
from exporters.lineprotocol import Encoder
from telemetryd.config import InfluxConfig
from telemetryd.model import Report, decode_report
from tests.reports import sampled

ANY_REASON = "422: partial write: field type conflict dropped=1"
NOW = datetime.datetime(2026, 3, 1, 12, 0, 0, tzinfo=datetime.UTC)


# -- Retry-After ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        ("  7 ", 7.0),
        ("0", 0.0),
        ("1.5", 1.5),  # not RFC 9110's 1*DIGIT, but a clear enough request
        ("Sun, 01 Mar 2026 12:00:30 GMT", 30.0),  # an HTTP date, 30 s after NOW
        ("Sun, 01 Mar 2026 12:00:30 -0000", 30.0),  # a date without a zone is taken as UTC
        ("Sun, 01 Mar 2026 11:59:00 GMT", 0.0),  # in the past: now
        ("-5", 0.0),  # negative: now
        ("-inf", 0.0),
        ("86400", RETRY_AFTER_MAX),  # a day: capped
        ("inf", RETRY_AFTER_MAX),
        ("Sun, 01 Mar 2027 12:00:00 GMT", RETRY_AFTER_MAX),
    ],
)
def test_retry_after_seconds_and_dates(header, seconds):
    assert retry_after(header, now=NOW) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "header", [None, "", "   ", "soon", "nan", "0x10", "1 2", "Sun, 32 Mar 2026 12:00:00 GMT"]
)
def test_retry_after_absent_or_garbage_is_none(header):
    assert retry_after(header, now=NOW) is None


def test_retry_after_date_uses_the_clock_when_no_now_is_given():
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=100)
    header = soon.strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert 90.0 <= retry_after(header) <= 100.0


# -- LineWriter against a rule --------------------------------------------------------------
class Rule:
    """An in-process ``post``: stores good lines, refuses "poison" ones, 413 above ``max_lines``.

    Like InfluxDB, a request with refused lines keeps the others (a partial write) and says
    how many it dropped; ``fail`` answers the next requests with a status (or raises
    SinkError, as the sinks do when no answer came) before any line is looked at.
    """

    def __init__(self, *, max_lines: int | None = None, compressed: bool = False) -> None:
        self.max_lines = max_lines
        self.compressed = compressed
        self.stored: Counter[str] = Counter()  # every line written, with how often
        self.requests: list[list[str]] = []
        self.fail: list[WriteReply | SinkError] = []
        self.fail_after = 0  # let this many requests through before ``fail`` applies
        self.down: Callable[[list[str]], bool] | None = None  # no answer to these requests

    async def __call__(self, body: bytes) -> WriteReply:
        if self.compressed:
            assert body[:2] == b"\x1f\x8b", "not gzip"
            body = gzip.decompress(body)
        text = body.decode()
        assert text.endswith("\n")
        lines = text[:-1].split("\n")
        self.requests.append(lines)
        if self.down is not None and self.down(lines):
            raise SinkError("influxdb2://db: cannot connect to db:8086: Connection refused")
        if self.fail and self.fail_after <= 0:
            outcome = self.fail.pop(0)
            if isinstance(outcome, SinkError):
                raise outcome
            return outcome
        self.fail_after -= 1
        if self.max_lines is not None and len(lines) > self.max_lines:
            return WriteReply(413, "request too large")
        bad = [line for line in lines if "poison" in line]
        self.stored.update(line for line in lines if "poison" not in line)
        if bad:
            return WriteReply(422, f"partial write: field type conflict dropped={len(bad)}")
        return WriteReply(204)


def writer(post: Rule, *, batch_lines: int = 5000, compress: bool = False) -> LineWriter:
    return LineWriter(
        "influxdb2://db:8086?org=o&bucket=b",
        post,
        batch_lines=batch_lines,
        auth_retry=30.0,
        compress=compress,
        counters=LineCounters(),
        what="bucket 'b' of org 'o'",
    )


def line_sink(post: Rule, *, batch_lines: int = 5000, parallel: int = 1) -> LineSink:
    cfg = InfluxConfig(batch_lines=batch_lines, auth_retry=30.0, gzip=False, parallel=parallel)
    return LineSink("influxdb2://db:8086?org=o&bucket=b", post, cfg, "bucket 'b' of org 'o'")


def lines(n: int, bad: set[int] = frozenset()) -> list[str]:
    return [f"m,i={i} v={i}i {i}" if i not in bad else f"m,i={i} poison=1i {i}" for i in range(n)]


def test_good_lines_go_in_requests_of_batch_lines_each_once_in_order():
    rule = Rule(compressed=True)
    w = writer(rule, compress=True)
    sent = lines(12_000)
    assert asyncio.run(w.deliver(sent)) == []
    assert [len(r) for r in rule.requests] == [5000, 5000, 2000]
    assert [line for r in rule.requests for line in r] == sent
    assert rule.stored == Counter(sent)
    assert w.counters == LineCounters(requests=3)  # written is counted by the sink


def test_one_bad_line_in_5000_is_found_in_logarithmically_many_requests():
    rule = Rule()
    w = writer(rule)
    sent = lines(5000, bad={3217})
    rejected = asyncio.run(w.deliver(sent))
    assert rejected == [(sent[3217].encode(), "422: partial write: field type conflict dropped=1")]
    # Each level of the bisection sends both halves: 1 + 2 * ceil(log2(5000)) at most.
    assert len(rule.requests) <= 1 + 2 * math.ceil(math.log2(5000))
    assert set(rule.stored) == set(sent) - {sent[3217]}  # every good line, no bad one
    assert w.counters.requests == len(rule.requests)
    assert w.counters.lines_set_aside == 1
    assert w.counters.lines_retried == 0


def test_bad_lines_spread_out_are_each_set_aside_with_the_reason():
    rule = Rule()
    w = writer(rule, batch_lines=1000)
    bad = {0, 999, 1000, 1500, 2999}
    sent = lines(3000, bad=bad)
    rejected = asyncio.run(w.deliver(sent))
    assert [line for line, _ in rejected] == [sent[i].encode() for i in sorted(bad)]
    assert all(why.startswith("422: partial write") for _, why in rejected)
    assert set(rule.stored) == {sent[i] for i in range(3000) if i not in bad}
    assert w.counters.lines_set_aside == len(bad)


def test_a_request_the_server_dropped_entirely_is_set_aside_in_one_go():
    rule = Rule()
    w = writer(rule, batch_lines=10)
    sent = lines(10, bad=set(range(10)))
    rejected = asyncio.run(w.deliver(sent))
    assert len(rule.requests) == 1  # "dropped=10" of 10 lines: no bisection
    assert [line for line, _ in rejected] == [s.encode() for s in sent]
    assert w.counters.lines_set_aside == 10


def test_413_splits_until_the_requests_fit_and_writes_each_line_once():
    rule = Rule(max_lines=700)
    w = writer(rule)
    sent = lines(5000)
    assert asyncio.run(w.deliver(sent)) == []
    # 5000 -> 2 x 2500 -> 4 x 1250 -> 8 x 625: 1 + 2 + 4 + 8 requests, 8 of them written.
    assert len(rule.requests) == 15
    assert sorted(len(r) for r in rule.requests if len(r) <= 700) == [625] * 8
    assert rule.stored == Counter(sent)  # 413 writes nothing, so each line went in once
    assert w.counters.lines_set_aside == 0


def test_a_single_line_too_large_is_set_aside_with_413():
    rule = Rule(max_lines=0)
    w = writer(rule)
    sent = lines(2)
    rejected = asyncio.run(w.deliver(sent))
    assert rejected == [(s.encode(), "413: request too large") for s in sent]
    assert not rule.stored


@pytest.mark.parametrize(
    ("reply", "retry", "words"),
    [
        (WriteReply(503, "unavailable", 7.0), 7.0, ["503", "unavailable"]),
        (WriteReply(503, "unavailable"), None, ["503"]),
        (WriteReply(429, "too many requests", 1.0), 1.0, ["429"]),
        (WriteReply(500, "boom"), None, ["500", "boom"]),
        (WriteReply(401, "unauthorized access"), 30.0, ["401", "token", "unauthorized access"]),
        (WriteReply(403, "forbidden"), 30.0, ["403", "token"]),
        (WriteReply(404, 'bucket "b" not found'), 30.0, ["404", "bucket 'b' of org 'o'"]),
        (WriteReply(418, "teapot"), 30.0, ["418", "teapot"]),
        # Retry-After on a 401 does not make a refused token retry fast.
        (WriteReply(401, "unauthorized access", 1.0), 30.0, ["401"]),
    ],
)
def test_retryable_answers_raise_sinkerror_with_one_line(reply, retry, words):
    rule = Rule()
    rule.fail = [reply]
    w = writer(rule)
    with pytest.raises(SinkError) as caught:
        asyncio.run(w.deliver(lines(10)))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("influxdb2://db:8086?org=o&bucket=b: ")
    assert all(word in message for word in words), message
    assert caught.value.retry_after == retry
    assert w.counters.lines_retried == 10
    assert not rule.stored


def test_interrupted_delivery_says_where_to_resume():
    rule = Rule()
    w = writer(rule, batch_lines=100)
    sent = lines(500, bad={20, 250})
    third = sent[200]
    rule.down = lambda request: third in request  # the server goes away at the third chunk
    with pytest.raises(Interrupted) as caught:
        asyncio.run(w.deliver(sent))
    assert caught.value.progress == 200
    assert caught.value.rejected == [(sent[20].encode(), ANY_REASON)]
    assert w.counters.lines_set_aside == 1
    assert "Connection refused" in str(caught.value)
    rule.down = None
    rule.requests.clear()
    rejected = asyncio.run(w.deliver(sent, caught.value.progress))
    assert [line for line, _ in rejected] == [sent[250].encode()]
    assert rule.requests[0][0] == third  # nothing before the third chunk was sent again
    assert all(line not in request for request in rule.requests for line in sent[:200])
    assert set(rule.stored) == set(sent) - {sent[20], sent[250]}
    assert w.counters.lines_set_aside == 2


def test_interrupted_inside_a_bisection_sends_that_chunk_again():
    rule = Rule()
    rule.fail_after = 2  # the chunk (422) and its first half (422) go through; then no answer
    rule.fail = [SinkError("influxdb2://db: timed out")]
    w = writer(rule, batch_lines=100)
    sent = lines(200, bad={20})
    with pytest.raises(Interrupted) as caught:
        asyncio.run(w.deliver(sent))
    assert caught.value.progress == 0
    assert caught.value.rejected == []
    assert w.counters.lines_set_aside == 0
    rule.requests.clear()
    rejected = asyncio.run(w.deliver(sent, caught.value.progress))
    assert rule.requests[0] == sent[:100]
    assert [line for line, _ in rejected] == [sent[20].encode()]
    assert w.counters.lines_set_aside == 1


def test_a_bad_line_found_before_an_interruption_is_counted_once():
    # The first chunk's bisection sets a bad line aside, then its second half fails: the
    # retry sends that chunk again and finds the same line. One line, counted once.
    rule = Rule()
    w = writer(rule, batch_lines=4)
    sent = lines(4, bad={0})
    # requests: [0..3] 422, [0,1] 422, [0] 422 (set aside), [1] 204, [2,3] fails
    rule.fail_after = 4
    rule.fail = [WriteReply(503, "unavailable")]
    with pytest.raises(Interrupted) as caught:
        asyncio.run(w.deliver(sent))
    assert caught.value.progress == 0
    rejected = asyncio.run(w.deliver(sent, caught.value.progress))
    assert [line for line, _ in rejected] == [sent[0].encode()]
    assert w.counters.lines_set_aside == 1


# -- LineSink: encode once, resume a batch, count -------------------------------------------
S = 1_000_000_000


def reports(n: int) -> list[Report]:
    out = []
    for seq in range(n):
        r = decode_report(sampled())
        r.seq = seq
        r.time_ns = 1_800_000_000 * S + seq * 10 * S
        out.append(r)
    return out


def test_line_sink_resumes_an_interrupted_batch_and_counts_each_line_once():
    batch = reports(4)
    sent = Encoder().encode(batch)
    rule = Rule()
    sink = line_sink(rule, batch_lines=10)
    rule.fail_after = 3  # three requests of 10 lines go in, then the server is gone
    rule.fail = [SinkError("no answer"), SinkError("no answer")]
    for _ in range(2):
        with pytest.raises(SinkError):
            asyncio.run(sink.write(batch))
    asyncio.run(sink.write(batch))
    # 3 good + 2 failed + the rest from where it stopped: no good request was sent twice.
    chunks = math.ceil(len(sent) / 10)
    assert len(rule.requests) == chunks + 2
    assert rule.requests[3] == rule.requests[4] == sent[30:40]
    assert rule.requests[5] == sent[30:40]
    assert rule.stored == Counter(sent)
    assert sink.line_stats.lines_written == len(sent)
    assert sink.line_stats.lines_retried == 20
    assert sink.line_stats.requests == chunks + 2


def test_line_sink_reports_lines_set_aside_before_and_after_an_interruption():
    batch = reports(2)
    sent = Encoder().encode(batch)
    poison = {3, len(sent) - 2}
    rule = Rule()
    original = rule.__call__

    async def post(body: bytes) -> WriteReply:  # two of the encoded lines are refused
        text = body.decode()
        for i in poison:
            text = text.replace(sent[i] + "\n", sent[i] + " poison\n")
        return await original(text.encode())

    sink = line_sink(rule, batch_lines=8)
    sink.writer.post = post
    rule.fail_after = 5  # the first chunk's bisection is done, the next chunk fails
    rule.fail = [WriteReply(503, "unavailable", 2.0)]
    with pytest.raises(SinkError) as failed:
        asyncio.run(sink.write(batch))
    assert failed.value.retry_after == 2.0
    with pytest.raises(SinkRejected) as caught:
        asyncio.run(sink.write(batch))
    assert sorted(line for line, _ in caught.value.lines) == sorted(
        sent[i].encode() for i in poison
    )
    assert all("field type conflict" in why for _, why in caught.value.lines)
    assert sink.line_stats.lines_set_aside == 2
    assert sink.line_stats.lines_written == len(sent) - 2


def test_line_sink_empty_batch_sends_nothing():
    rule = Rule()
    sink = line_sink(rule)
    asyncio.run(sink.write([]))
    assert rule.requests == []


def test_parallel_requests_resume_at_the_first_that_failed():
    batch = reports(4)
    sent = Encoder().encode(batch)
    rule = Rule()
    sink = line_sink(rule, batch_lines=10, parallel=3)
    rule.fail_after = 4  # the first window of three goes in; in the second, the second fails
    rule.fail = [WriteReply(503, "unavailable")]
    with pytest.raises(SinkError):
        asyncio.run(sink.write(batch))
    assert len(rule.requests) == 6
    asyncio.run(sink.write(batch))
    # Resumed at chunk 4 (the one refused): chunk 5, written in the same window, is sent
    # again (the same points), chunks 0-3 are not.
    assert rule.requests[6][0] == sent[40]
    assert set(rule.stored) == set(sent)
    assert sink.line_stats.lines_written == len(sent)
    assert sink.line_stats.requests == 6 + math.ceil(len(sent) / 10) - 4

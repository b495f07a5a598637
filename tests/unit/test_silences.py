"""Silences: add, expire, persist, prune, and two processes sharing the file."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from telemetryd.alerting.silences import SilenceError, SilenceStore
from tests.unit.alerting_helpers import FakeClock, S

LABELS = {"alertname": "GpuHot", "node": "n17", "cluster": "c1", "severity": "warning"}


def test_add_mutes_until_it_ends(tmp_path: Path) -> None:
    clock = FakeClock()
    store = SilenceStore(tmp_path, clock=clock)
    now = clock.time_ns()
    silence = store.add(['node="n17"', 'alertname=~"Gpu.*"'], ends_ns=now + 60 * S,
                        created_by="alice", comment="swapping GPU 3")  # fmt: skip
    assert store.muted(LABELS) == [silence.id]
    assert store.muted({**LABELS, "node": "n18"}) == []
    assert store.active() == [silence]
    assert silence.state(now) == "active"
    clock.advance(60)
    assert store.muted(LABELS) == []
    assert store.active() == []
    assert store.list() == [silence]  # kept (expired) for `alerts list`
    assert silence.state(clock.time_ns()) == "expired"


def test_pending_silence_starts_later(tmp_path: Path) -> None:
    clock = FakeClock()
    store = SilenceStore(tmp_path, clock=clock)
    now = clock.time_ns()
    silence = store.add(['node="n17"'], starts_ns=now + 10 * S, ends_ns=now + 20 * S,
                        created_by="bob", comment="maintenance window")  # fmt: skip
    assert silence.state(now) == "pending"
    assert store.muted(LABELS) == []
    clock.advance(10)
    assert store.muted(LABELS) == [silence.id]


def test_file_format_and_reload(tmp_path: Path) -> None:
    clock = FakeClock()
    store = SilenceStore(tmp_path, clock=clock)
    silence = store.add(['node="n17"'], ends_ns=clock.time_ns() + 60 * S, created_by="alice",
                        comment="c")  # fmt: skip
    data = json.loads((tmp_path / "silences.json").read_text())
    assert data == {
        "version": 1,
        "silences": [{
            "id": silence.id, "matchers": ['node="n17"'], "starts_ns": clock.time_ns(),
            "ends_ns": clock.time_ns() + 60 * S, "created_by": "alice", "comment": "c",
            "created_ns": clock.time_ns(),
        }],
    }  # fmt: skip
    again = SilenceStore(tmp_path, clock=clock)
    assert again.list() == [silence]
    assert not again.reload_if_changed()  # unchanged: nothing re-read


def test_cli_and_aggregator_stores_see_each_others_writes(tmp_path: Path) -> None:
    clock = FakeClock()
    running = SilenceStore(tmp_path, clock=clock)  # the aggregator's
    cli = SilenceStore(tmp_path, clock=clock)  # `telemetryd alerts silence`
    ends = clock.time_ns() + 3600 * S
    first = cli.add(['node="n17"'], ends_ns=ends, created_by="alice", comment="")
    assert running.muted(LABELS) == []  # not yet re-read
    assert running.reload_if_changed()
    assert running.muted(LABELS) == [first.id]
    second = running.add(['node="n18"'], ends_ns=ends, created_by="bot", comment="")
    # The running store's write kept the CLI's silence (read under the lock first).
    assert {s.id for s in running.list()} == {first.id, second.id}
    assert cli.reload_if_changed()
    assert {s.id for s in cli.list()} == {first.id, second.id}
    cli.expire(second.id)
    assert running.reload_if_changed()
    assert running.muted({**LABELS, "node": "n18"}) == []
    assert not running.reload_if_changed()
    (tmp_path / "silences.json").unlink()
    assert running.reload_if_changed()
    assert running.list() == []


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from telemetryd.alerting.silences import SilenceStore\n"
        "store = SilenceStore(Path(sys.argv[1]))\n"
        "for i in range(15):\n"
        "    store.add([f'node=\"{sys.argv[2]}-{i}\"'], ends_ns=time.time_ns() + 10**12,\n"
        "              created_by=sys.argv[2], comment='')\n"
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path), f"w{n}"], env=env)
        for n in range(4)
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0, 0]
    store = SilenceStore(tmp_path)
    assert len(store.list()) == 60
    assert {s.created_by for s in store.list()} == {"w0", "w1", "w2", "w3"}


def test_expire_by_prefix_and_errors(tmp_path: Path) -> None:
    clock = FakeClock()
    store = SilenceStore(tmp_path, clock=clock)
    ends = clock.time_ns() + 60 * S
    silence = store.add(['node="n17"'], ends_ns=ends, created_by="a", comment="")
    clock.advance(5)
    ended = store.expire(silence.id[:8])
    assert ended.ends_ns == clock.time_ns()
    assert store.muted(LABELS) == []
    with pytest.raises(SilenceError, match="has already expired"):
        store.expire(silence.id)
    with pytest.raises(SilenceError, match="no silence with id 'nope'"):
        store.expire("nope")


def test_a_pending_silence_expired_ends_before_it_starts(tmp_path: Path) -> None:
    clock = FakeClock()
    store = SilenceStore(tmp_path, clock=clock)
    now = clock.time_ns()
    silence = store.add(['node="n1"'], starts_ns=now + 60 * S, ends_ns=now + 120 * S,
                        created_by="a", comment="")  # fmt: skip
    ended = store.expire(silence.id)
    assert ended.starts_ns == ended.ends_ns == now
    assert ended.state(now) == "expired"


@pytest.mark.parametrize(
    ("matchers", "says"),
    [
        ([], "at least one matcher"),
        (['node=~".*"'], "does not match an empty label"),
        (['node!="x"', 'rack=""'], "would mute every alert"),
        (["node"], "silence matcher: expected a matcher"),
    ],
)
def test_add_refuses_bad_silences(tmp_path: Path, matchers: list[str], says: str) -> None:
    clock = FakeClock()
    store = SilenceStore(tmp_path, clock=clock)
    with pytest.raises(SilenceError, match=None) as err:
        store.add(matchers, ends_ns=clock.time_ns() + S, created_by="a", comment="")
    assert says in str(err.value)
    assert not (tmp_path / "silences.json").exists()


def test_add_refuses_past_end_and_missing_author(tmp_path: Path) -> None:
    clock = FakeClock()
    store = SilenceStore(tmp_path, clock=clock)
    with pytest.raises(SilenceError, match="must end in the future"):
        store.add(['node="a"'], ends_ns=clock.time_ns(), created_by="a", comment="")
    with pytest.raises(SilenceError, match="needs its author"):
        store.add(['node="a"'], ends_ns=clock.time_ns() + S, created_by=" ", comment="")


def test_expired_silences_are_pruned_after_retention(tmp_path: Path) -> None:
    clock = FakeClock()
    store = SilenceStore(tmp_path, clock=clock, retention_s=3600)
    old = store.add(['node="a"'], ends_ns=clock.time_ns() + 60 * S, created_by="a", comment="")
    clock.advance(60 + 3600)
    assert old in store.list()  # pruned on the next write
    new = store.add(['node="b"'], ends_ns=clock.time_ns() + 60 * S, created_by="a", comment="")
    assert store.list() == [new]
    assert len(json.loads((tmp_path / "silences.json").read_text())["silences"]) == 1


def test_a_corrupt_file_keeps_the_silences_read_before(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    store = SilenceStore(tmp_path, clock=clock)
    silence = store.add(['node="n17"'], ends_ns=clock.time_ns() + 60 * S, created_by="a",
                        comment="")  # fmt: skip
    (tmp_path / "silences.json").write_text('{"silences": [{"id": 1}]}')
    with caplog.at_level(logging.WARNING):
        assert store.reload_if_changed()
    assert store.list() == [silence]
    assert "malformed record" in caplog.text
    assert "keeping the 1 silences read before" in caplog.text
    (tmp_path / "silences.json").write_text("{not json")
    with pytest.raises(SilenceError, match="cannot read"):
        store.add(['node="x"'], ends_ns=clock.time_ns() + S, created_by="a", comment="")

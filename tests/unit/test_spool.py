"""The agent's spool on real files: durable appends, bounds, the drop counter, recovery."""

from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path

import pytest

from telemetryd import spool as spool_module
from telemetryd.spool import Entry, Spool, SpoolError, entry_name

BOOT = "0123456789abcdef0123456789abcdef"
S = 1_000_000_000  # ns per second
T0 = 1_800_000_000  # seconds since the epoch: "now" for the fake clock


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def name_at(seconds: float, seq: int) -> str:
    return entry_name(int(seconds * S), BOOT, seq)


def make(directory: Path, *, max_bytes: int = 1 << 20, max_age_s: float = 3600, clock=None):
    spool = Spool(directory, max_bytes=max_bytes, max_age_s=max_age_s, clock=clock or Clock())
    spool.open()
    return spool


def reports_on_disk(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".json"))


def test_entry_name_sorts_by_time_and_carries_it() -> None:
    early = entry_name(5 * S, BOOT, 99)
    late = entry_name(40 * S, BOOT, 1)
    assert early == f"{5 * S:020d}-{BOOT}-{99:012d}.json"
    assert sorted([late, early]) == [early, late]
    assert int(early.split("-", 1)[0]) == 5 * S


def test_append_writes_the_exact_bytes_and_leaves_no_temporary(tmp_path: Path) -> None:
    spool = make(tmp_path / "spool")
    name = name_at(T0, 0)
    entry = spool.append(name, b'{"seq":0}')
    assert entry == Entry(name, 9, T0 * S)
    assert (tmp_path / "spool" / name).read_bytes() == b'{"seq":0}'
    assert not list((tmp_path / "spool").glob("*.tmp"))
    assert spool.read(entry) == b'{"seq":0}'
    assert entry in spool
    assert len(spool) == 1
    assert spool.bytes == 9
    assert spool.entries() == [entry]


def test_append_syncs_the_file_before_renaming_then_syncs_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = make(tmp_path / "spool")
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append("fsync-dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync-file")
        real_fsync(fd)

    def replace(src, dst) -> None:
        calls.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(spool_module.os, "fsync", fsync)
    monkeypatch.setattr(spool_module.os, "replace", replace)
    spool.append(name_at(T0, 0), b"x" * 100)
    assert calls == ["fsync-file", "replace", "fsync-dir"]


def test_a_short_write_is_continued_until_all_is_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = make(tmp_path / "spool")
    real_write = os.write
    monkeypatch.setattr(spool_module.os, "write", lambda fd, data: real_write(fd, data[:7]))
    payload = bytes(range(256)) * 3
    entry = spool.append(name_at(T0, 0), payload)
    assert (tmp_path / "spool" / entry.name).read_bytes() == payload
    assert entry.size == len(payload)


def test_disk_refusing_raises_spool_error_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = make(tmp_path / "spool")
    kept = spool.append(name_at(T0, 0), b"a" * 10)

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(spool_module.os, "write", full)
    with pytest.raises(SpoolError, match="No space left on device"):
        spool.append(name_at(T0, 1), b"b" * 10)
    assert spool.errors == 1
    assert spool.entries() == [kept]
    assert spool.bytes == 10
    assert os.listdir(tmp_path / "spool") == [kept.name]  # no .tmp, no half report


def test_a_spool_directory_removed_underneath_raises_spool_error(tmp_path: Path) -> None:
    spool = make(tmp_path / "spool")
    (tmp_path / "spool" / "spool.state").unlink(missing_ok=True)
    (tmp_path / "spool").rmdir()
    with pytest.raises(SpoolError, match="cannot spool to"):
        spool.append(name_at(T0, 0), b"x")
    assert spool.errors == 1
    assert len(spool) == 0


def test_a_spool_directory_that_cannot_exist_raises_spool_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    spool = Spool(tmp_path / "file" / "spool", max_bytes=1000, max_age_s=60, clock=Clock())
    with pytest.raises(SpoolError):
        spool.append(name_at(T0, 0), b"x")
    assert spool.errors == 1
    assert len(spool) == 0
    assert spool.bytes == 0


def test_remove_unlinks_and_read_then_returns_none(tmp_path: Path) -> None:
    spool = make(tmp_path / "spool")
    a = spool.append(name_at(T0, 0), b"a" * 10)
    b = spool.append(name_at(T0 + 1, 1), b"b" * 20)
    spool.remove(a)
    assert spool.read(a) is None
    assert a not in spool
    assert spool.entries() == [b]
    assert spool.bytes == 20
    assert reports_on_disk(tmp_path / "spool") == [b.name]
    spool.remove(a)  # a second PUBACK for the same report: nothing happens
    assert spool.bytes == 20
    (tmp_path / "spool" / b.name).unlink()  # gone behind our back: still forgotten cleanly
    spool.remove(b)
    assert spool.bytes == 0
    assert len(spool) == 0


def test_byte_bound_drops_the_oldest_and_counts(tmp_path: Path) -> None:
    spool = make(tmp_path / "spool", max_bytes=250)
    entries = [spool.append(name_at(T0 + i, i), bytes([65 + i]) * 100) for i in range(4)]
    assert spool.dropped == 2
    assert spool.entries() == entries[2:]
    assert spool.bytes == 200
    assert reports_on_disk(tmp_path / "spool") == [e.name for e in entries[2:]]
    assert spool.read(entries[0]) is None
    assert spool.read(entries[3]) == b"D" * 100


def test_a_report_bigger_than_the_bound_is_kept_and_pushes_out_the_rest(tmp_path: Path) -> None:
    spool = make(tmp_path / "spool", max_bytes=100)
    small = [spool.append(name_at(T0 + i, i), b"s" * 30) for i in range(3)]
    big = spool.append(name_at(T0 + 10, 3), b"B" * 150)
    assert spool.entries() == [big]
    assert spool.dropped == len(small)
    assert reports_on_disk(tmp_path / "spool") == [big.name]


def test_age_bound_drops_old_reports_on_the_next_append(tmp_path: Path) -> None:
    clock = Clock()
    spool = make(tmp_path / "spool", max_age_s=60, clock=clock)
    old = spool.append(name_at(T0 - 30, 0), b"o" * 10)
    mid = spool.append(name_at(T0 - 10, 1), b"m" * 10)
    assert spool.dropped == 0
    clock.now = T0 + 40  # old is 70 s old now, mid 50 s
    new = spool.append(name_at(T0 + 40, 2), b"n" * 10)
    assert spool.entries() == [mid, new]
    assert spool.dropped == 1
    assert spool.read(old) is None


def test_drop_counter_survives_restarts(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spool = make(directory, max_bytes=100)
    for i in range(5):
        spool.append(name_at(T0 + i, i), b"x" * 40)
    assert spool.dropped == 3

    again = make(directory, max_bytes=100)
    assert again.dropped == 3
    assert [e.name for e in again.entries()] == [name_at(T0 + 3, 3), name_at(T0 + 4, 4)]
    again.append(name_at(T0 + 5, 5), b"x" * 40)
    assert again.dropped == 4

    third = make(directory, max_bytes=100)
    assert third.dropped == 4
    assert json.loads((directory / "spool.state").read_text()) == {"dropped": 4}


def test_bounds_are_applied_at_open_and_those_drops_count_too(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    first = make(directory, max_bytes=10_000, max_age_s=3600)
    for i in range(6):
        first.append(name_at(T0 - 600 + i * 100, i), b"r" * 100)  # ages 600 s ... 100 s

    clock = Clock(T0)
    smaller = make(directory, max_bytes=350, max_age_s=350, clock=clock)
    # Age drops seq 0..2 (600, 500, 400 s old); bytes then hold 3 x 100 <= 350.
    assert [e.name for e in smaller.entries()] == [
        name_at(T0 - 600 + i * 100, i) for i in (3, 4, 5)
    ]
    assert smaller.dropped == 3
    assert smaller.bytes == 300
    assert make(directory, max_bytes=10_000, clock=clock).dropped == 3


def test_open_recovers_what_a_previous_run_left(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    directory.mkdir()
    names = [name_at(T0 - 3, 7), name_at(T0 - 20, 5), name_at(T0 - 10, 6)]
    for i, name in enumerate(names):
        (directory / name).write_bytes(b"z" * (10 + i))
    torn = directory / (name_at(T0 - 1, 8) + ".tmp")
    torn.write_bytes(b'{"half')
    (directory / "notes.json").write_text("{}")  # not a report name: left alone, not counted
    (directory / "spool.state").write_text(json.dumps({"dropped": 11}))

    spool = Spool(directory, max_bytes=1 << 20, max_age_s=3600, clock=Clock())
    entries = spool.open()
    assert [e.name for e in entries] == sorted(names)  # oldest first
    assert [e.size for e in entries] == [11, 12, 10]
    assert [e.time_ns for e in entries] == [(T0 - 20) * S, (T0 - 10) * S, (T0 - 3) * S]
    assert spool.bytes == 33
    assert spool.dropped == 11
    assert not torn.exists()  # never acknowledged as spooled: gone
    assert (directory / "notes.json").exists()
    assert spool.read(entries[0]) == b"z" * 11


def test_an_unreadable_state_file_restarts_the_counter(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    directory.mkdir()
    (directory / "spool.state").write_text("{not json")
    spool = make(directory, max_bytes=50)
    assert spool.dropped == 0
    spool.append(name_at(T0, 0), b"x" * 40)
    spool.append(name_at(T0 + 1, 1), b"x" * 40)
    assert make(directory, max_bytes=50).dropped == 1


def test_read_of_a_report_dropped_meanwhile_is_none(tmp_path: Path) -> None:
    spool = make(tmp_path / "spool", max_bytes=100)
    draining = [*spool.entries(), spool.append(name_at(T0, 0), b"a" * 60)]
    spool.append(name_at(T0 + 1, 1), b"b" * 60)  # pushes the first one out
    assert spool.read(draining[0]) is None


def test_concurrent_appends_and_removals_keep_the_accounting(tmp_path: Path) -> None:
    spool = make(tmp_path / "spool")
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for i in range(20):
                entry = spool.append(name_at(T0 + i, k * 100 + i), b"p" * (k + 1))
                if i % 2:
                    spool.remove(entry)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors
    assert len(spool) == 40
    assert spool.bytes == sum(10 * (k + 1) for k in range(4))
    assert len(reports_on_disk(tmp_path / "spool")) == 40


def test_entries_stay_oldest_first_when_the_clock_steps_back(tmp_path: Path) -> None:
    spool = make(tmp_path / "spool")
    later = spool.append(name_at(T0 + 100, 0), b"a")
    earlier = spool.append(name_at(T0, 1), b"b")
    assert spool.entries() == [earlier, later]

"""The aggregator's write-ahead log on real files: numbering, segments, recovery, failures."""

from __future__ import annotations

import errno
import os
import struct
import tempfile
import threading
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetryd import wal as wal_module
from telemetryd.wal import Wal, WalError

HEADER = 8  # <u32 length><u32 crc32>


def opened(directory: Path, *, max_bytes: int = 1 << 30, segment_bytes: int = 64 << 20) -> Wal:
    wal = Wal(directory, max_bytes=max_bytes, segment_bytes=segment_bytes)
    wal.open()
    return wal


def read_all(wal: Wal, start: int | None = None) -> list[tuple[int, bytes]]:
    """Every record from ``start`` (default: the oldest kept) on, across segments."""
    index = wal.first_index if start is None else start
    out: list[tuple[int, bytes]] = []
    while index < wal.next_index:
        chunk = wal.read(index, 1000)
        if not chunk:
            break
        out += chunk
        index = chunk[-1][0] + 1
    return out


def segments(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.wal"))


def record(payload: bytes) -> bytes:
    return struct.pack("<II", len(payload), zlib.crc32(payload)) + payload


def payload(i: int, size: int = 20) -> bytes:
    return f"record-{i:06d}-".encode().ljust(size, b".")


# -- writing and reading --------------------------------------------------------------------
def test_a_new_log_starts_at_zero(tmp_path: Path) -> None:
    wal = opened(tmp_path / "wal")
    try:
        assert (wal.first_index, wal.next_index, wal.bytes) == (0, 0, 0)
        assert wal.read(0, 10) == []
        assert segments(tmp_path / "wal") == [f"{0:020d}.wal"]
    finally:
        wal.close()


def test_append_numbers_batches_contiguously(tmp_path: Path) -> None:
    wal = opened(tmp_path / "wal")
    try:
        assert wal.append([b"a", b"bb", b"ccc"]) == 0
        assert wal.append([b"dddd"]) == 3
        assert wal.append([b"e", b"f"]) == 4
        assert wal.next_index == 6
        assert wal.read(0, 100) == [(0, b"a"), (1, b"bb"), (2, b"ccc"), (3, b"dddd"),
                                    (4, b"e"), (5, b"f")]  # fmt: skip
        assert wal.read(2, 2) == [(2, b"ccc"), (3, b"dddd")]
        assert wal.read(5, 10) == [(5, b"f")]
        assert wal.read(6, 10) == []
        assert wal.bytes == 6 * HEADER + 1 + 2 + 3 + 4 + 1 + 1
    finally:
        wal.close()


def test_records_are_framed_with_length_and_crc(tmp_path: Path) -> None:
    wal = opened(tmp_path / "wal")
    wal.append([b"hello", b"\x00\xffbinary"])
    wal.close()
    data = (tmp_path / "wal" / f"{0:020d}.wal").read_bytes()
    assert data == record(b"hello") + record(b"\x00\xffbinary")


def test_one_fsync_per_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wal = opened(tmp_path / "wal")
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(wal_module.os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    try:
        wal.append([payload(i) for i in range(500)])
        assert len(synced) == 1  # group commit: the whole batch behind one sync
    finally:
        wal.close()


def test_rotation_at_segment_bytes_names_segments_by_first_index(tmp_path: Path) -> None:
    directory = tmp_path / "wal"
    wal = opened(directory, segment_bytes=3 * (HEADER + 20))
    try:
        for i in range(8):
            wal.append([payload(i)])
        # Three 28-byte records fill a segment exactly: it rotates as the third lands.
        assert segments(directory) == [f"{0:020d}.wal", f"{3:020d}.wal", f"{6:020d}.wal"]
        assert (directory / f"{0:020d}.wal").stat().st_size == 84
        assert wal.read(1, 100) == [(1, payload(1)), (2, payload(2))]  # fewer at segment end
        assert wal.read(3, 1) == [(3, payload(3))]
        assert read_all(wal) == [(i, payload(i)) for i in range(8)]
    finally:
        wal.close()


def test_a_batch_bigger_than_a_segment_stays_whole_in_one(tmp_path: Path) -> None:
    directory = tmp_path / "wal"
    wal = opened(directory, segment_bytes=50)
    try:
        assert wal.append([payload(i) for i in range(10)]) == 0
        assert segments(directory) == [f"{0:020d}.wal", f"{10:020d}.wal"]
        assert wal.append([payload(10)]) == 10
        assert wal.append([payload(11)]) == 11  # 56 >= 50: rotates
        assert segments(directory) == [f"{0:020d}.wal", f"{10:020d}.wal", f"{12:020d}.wal"]
        assert wal.read(0, 100) == [(i, payload(i)) for i in range(10)]
    finally:
        wal.close()


def test_reopen_reads_back_everything_and_continues_the_numbering(tmp_path: Path) -> None:
    directory = tmp_path / "wal"
    wal = opened(directory, segment_bytes=100)
    for i in range(0, 12, 3):
        wal.append([payload(j) for j in range(i, i + 3)])
    before = read_all(wal)
    wal.close()

    again = opened(directory, segment_bytes=100)
    try:
        assert again.corrupt_records == 0
        assert again.next_index == 12
        assert read_all(again) == before
        assert again.append([b"after"]) == 12
        assert again.read(12, 1) == [(12, b"after")]
    finally:
        again.close()


def test_read_below_the_oldest_kept_record_is_empty(tmp_path: Path) -> None:
    wal = opened(tmp_path / "wal", segment_bytes=HEADER + 20)
    try:
        for i in range(4):
            wal.append([payload(i)])
        wal.release(2)
        assert wal.first_index == 2
        assert wal.read(0, 10) == []
        assert wal.read(1, 10) == []
        assert wal.read(2, 10) == [(2, payload(2))]
    finally:
        wal.close()


# -- release and bounds -----------------------------------------------------------------------
def test_release_deletes_whole_segments_before_upto_only(tmp_path: Path) -> None:
    directory = tmp_path / "wal"
    wal = opened(directory, segment_bytes=2 * (HEADER + 20))
    try:
        for i in range(7):
            wal.append([payload(i)])
        assert segments(directory) == [f"{i:020d}.wal" for i in (0, 2, 4, 6)]
        assert wal.release(1) == 0  # segment 0 holds record 1, still needed
        assert wal.release(3) == 56  # segment 0 ([0, 2)) is wholly before 3
        assert segments(directory) == [f"{i:020d}.wal" for i in (2, 4, 6)]
        assert wal.first_index == 2
        assert wal.bytes == 2 * 28 + 2 * 28 + 28
        assert read_all(wal) == [(i, payload(i)) for i in range(2, 7)]
    finally:
        wal.close()


def test_release_never_deletes_the_active_segment(tmp_path: Path) -> None:
    directory = tmp_path / "wal"
    wal = opened(directory, segment_bytes=1 << 20)
    try:
        wal.append([payload(0), payload(1)])
        assert wal.release(10**9) == 0
        assert segments(directory) == [f"{0:020d}.wal"]
        assert wal.append([payload(2)]) == 2
        assert read_all(wal) == [(i, payload(i)) for i in range(3)]
    finally:
        wal.close()


def test_release_past_everything_keeps_the_empty_active_segment(tmp_path: Path) -> None:
    directory = tmp_path / "wal"
    wal = opened(directory, segment_bytes=HEADER + 20)
    try:
        for i in range(3):
            wal.append([payload(i)])  # each fills a segment: the active one is empty
        assert wal.release(10**9) == 3 * 28
        assert segments(directory) == [f"{3:020d}.wal"]
        assert (wal.first_index, wal.next_index, wal.bytes) == (3, 3, 0)
        assert wal.append([b"x"]) == 3
    finally:
        wal.close()
    again = opened(directory)
    try:
        assert (again.first_index, again.next_index) == (3, 4)
        assert again.read(3, 1) == [(3, b"x")]
    finally:
        again.close()


def test_full_at_max_bytes_and_not_after_release(tmp_path: Path) -> None:
    wal = opened(tmp_path / "wal", max_bytes=4 * 28, segment_bytes=2 * 28)
    try:
        wal.append([payload(0), payload(1), payload(2)])
        assert wal.bytes == 84
        assert not wal.full()
        wal.append([payload(3)])
        assert wal.bytes == 112
        assert wal.full()
        wal.release(2)  # the first segment holds [0, 3): not yet
        assert wal.full()
        assert wal.release(3) == 84
        assert not wal.full()
    finally:
        wal.close()


# -- recovery ---------------------------------------------------------------------------------
def write_segments(directory: Path, layout: list[list[bytes]]) -> list[Path]:
    """Write segments through the WAL itself, one segment per inner list."""
    wal = opened(directory, segment_bytes=1 << 30)
    paths = []
    for n, batch in enumerate(layout):
        wal.append(batch)
        paths.append(wal._segments[-1].path)
        if n < len(layout) - 1:
            wal._rotate()
    wal.close()
    return paths


def test_a_zero_filled_tail_of_the_last_segment_is_cut(tmp_path: Path) -> None:
    directory = tmp_path / "wal"
    wal = opened(directory)
    wal.append([payload(i) for i in range(3)])
    wal.close()
    path = directory / f"{0:020d}.wal"
    good = path.stat().st_size
    with open(path, "ab") as handle:
        handle.write(b"\0" * 4096)  # what a crash mid-write can leave

    again = opened(directory)
    try:
        assert again.corrupt_records == 0
        assert path.stat().st_size == good
        assert read_all(again) == [(i, payload(i)) for i in range(3)]
        assert again.append([b"next"]) == 3
        assert read_all(again)[-1] == (3, b"next")
        assert not list(directory.glob("*.corrupt"))
    finally:
        again.close()


def test_a_record_cut_short_at_the_end_is_cut(tmp_path: Path) -> None:
    directory = tmp_path / "wal"
    wal = opened(directory)
    wal.append([payload(i) for i in range(3)])
    wal.close()
    path = directory / f"{0:020d}.wal"
    os.truncate(path, path.stat().st_size - 5)  # the last record lost its last 5 bytes

    again = opened(directory)
    try:
        assert again.corrupt_records == 0
        assert again.next_index == 2
        assert path.stat().st_size == 2 * 28
        assert read_all(again) == [(0, payload(0)), (1, payload(1))]
        assert again.append([b"resent"]) == 2  # never acked: the broker sends it again
        assert read_all(again)[-1] == (2, b"resent")
    finally:
        again.close()


@pytest.mark.parametrize("header_bytes", [1, 4, 7])
def test_a_header_cut_short_at_the_end_is_cut(tmp_path: Path, header_bytes: int) -> None:
    directory = tmp_path / "wal"
    wal = opened(directory)
    wal.append([payload(i) for i in range(2)])
    wal.close()
    path = directory / f"{0:020d}.wal"
    with open(path, "ab") as handle:
        handle.write(record(payload(2))[:header_bytes])

    again = opened(directory)
    try:
        assert again.corrupt_records == 0
        assert path.stat().st_size == 2 * 28
        assert again.next_index == 2
        assert again.append([payload(2)]) == 2
        assert read_all(again) == [(i, payload(i)) for i in range(3)]
    finally:
        again.close()


def test_a_torn_tail_of_the_last_segment_leaves_earlier_segments_alone(tmp_path: Path) -> None:
    directory = tmp_path / "wal"
    paths = write_segments(directory, [[payload(0), payload(1)], [payload(2), payload(3)]])
    with open(paths[1], "ab") as handle:
        handle.write(record(payload(4))[:15])

    again = opened(directory)
    try:
        assert again.corrupt_records == 0
        assert read_all(again) == [(i, payload(i)) for i in range(4)]
        assert again.next_index == 4
    finally:
        again.close()


def test_a_corrupt_record_in_a_closed_segment_is_moved_aside_and_counted(tmp_path: Path) -> None:
    directory = tmp_path / "wal"
    paths = write_segments(directory, [[payload(i) for i in range(4)], [payload(4), payload(5)]])
    first = paths[0]
    original = first.read_bytes()
    damaged = bytearray(original)
    damaged[1 * 28 + HEADER + 3] ^= 0x40  # one bit of record 1's payload
    first.write_bytes(bytes(damaged))

    again = opened(directory)
    try:
        assert again.corrupt_records == 1
        assert first.read_bytes() == original[:28]  # the readable part: record 0
        aside = first.with_suffix(".corrupt")
        assert aside.read_bytes() == bytes(damaged[28:])  # records 1..3, kept for the operator
        assert again.read(0, 10) == [(0, payload(0))]
        assert again.read(1, 10) == []
        # The later segment keeps its numbering: what follows the damage is still readable.
        assert again.read(4, 10) == [(4, payload(4)), (5, payload(5))]
        assert again.next_index == 6
        assert again.append([b"new"]) == 6
    finally:
        again.close()
    assert opened(directory).corrupt_records == 0  # moved aside once: the next open is clean


def test_zeros_inside_a_closed_segment_are_damage_not_a_torn_write(tmp_path: Path) -> None:
    directory = tmp_path / "wal"
    paths = write_segments(directory, [[payload(0), payload(1)], [payload(2)]])
    with open(paths[0], "ab") as handle:
        handle.write(b"\0" * 64)  # a closed segment was synced whole: this is not a crash

    again = opened(directory)
    try:
        assert again.corrupt_records == 1
        assert paths[0].with_suffix(".corrupt").read_bytes() == b"\0" * 64
        assert read_all(again) == [(i, payload(i)) for i in range(3)]
    finally:
        again.close()


def test_a_bad_crc_in_the_middle_of_the_last_segment_is_counted_not_cut_silently(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "wal"
    wal = opened(directory)
    wal.append([payload(i) for i in range(4)])
    wal.close()
    path = directory / f"{0:020d}.wal"
    damaged = bytearray(path.read_bytes())
    damaged[2 * 28 + HEADER] ^= 0x01
    path.write_bytes(bytes(damaged))

    again = opened(directory)
    try:
        assert again.corrupt_records == 1
        assert path.with_suffix(".corrupt").read_bytes() == bytes(damaged[56:])
        assert read_all(again) == [(0, payload(0)), (1, payload(1))]
    finally:
        again.close()


# -- write failures ---------------------------------------------------------------------------
def test_append_before_open_is_a_wal_error(tmp_path: Path) -> None:
    wal = Wal(tmp_path / "wal", max_bytes=1000)
    with pytest.raises(WalError, match="not open"):
        wal.append([b"x"])


def test_a_disk_that_fills_mid_batch_leaves_no_partial_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "wal"
    wal = opened(directory)
    wal.append([payload(0), payload(1)])
    real_write = os.write
    calls = 0

    def write_half_then_fail(fd: int, data) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            return real_write(fd, bytes(data[: len(data) // 2]))  # a short write ...
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # ... then the disk is full

    monkeypatch.setattr(wal_module.os, "write", write_half_then_fail)
    with pytest.raises(WalError, match="No space left on device"):
        wal.append([payload(i) for i in range(2, 6)])
    monkeypatch.undo()

    path = directory / f"{0:020d}.wal"
    assert path.stat().st_size == 2 * 28  # cut back to the last good size
    assert wal.next_index == 2  # nothing was numbered
    assert wal.append([payload(2)]) == 2  # the retry of the held batch
    assert read_all(wal) == [(i, payload(i)) for i in range(3)]
    wal.close()
    again = opened(directory)
    try:
        assert again.corrupt_records == 0
        assert read_all(again) == [(i, payload(i)) for i in range(3)]
    finally:
        again.close()


def test_a_failing_fsync_is_a_wal_error_and_numbers_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "wal"
    wal = opened(directory)
    try:
        wal.append([payload(0)])

        def eio(fd: int) -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        monkeypatch.setattr(wal_module.os, "fsync", eio)
        with pytest.raises(WalError, match="Input/output error"):
            wal.append([payload(1)])
        monkeypatch.undo()
        assert wal.next_index == 1
        assert (directory / f"{0:020d}.wal").stat().st_size == 28
        assert wal.append([payload(1)]) == 1
        assert read_all(wal) == [(0, payload(0)), (1, payload(1))]
    finally:
        wal.close()


def test_a_closed_descriptor_is_a_wal_error(tmp_path: Path) -> None:
    directory = tmp_path / "wal"
    wal = opened(directory)
    wal.append([payload(0)])
    assert wal._fd is not None
    os.close(wal._fd)  # the file is gone from under us
    try:
        with pytest.raises(WalError, match="cannot write the WAL"):
            wal.append([payload(1)])
        assert wal.next_index == 1
    finally:
        wal._fd = None
    again = opened(directory)
    try:
        assert read_all(again) == [(0, payload(0))]
    finally:
        again.close()


def test_a_wal_directory_under_a_regular_file_cannot_open(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    wal = Wal(tmp_path / "file" / "wal", max_bytes=1000)
    with pytest.raises(OSError):
        wal.open()
    with pytest.raises(WalError):
        wal.append([b"x"])


# -- properties -------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(
    batches=st.lists(
        st.lists(st.binary(min_size=1, max_size=120), min_size=1, max_size=6),
        min_size=1,
        max_size=15,
    ),
    segment_bytes=st.integers(min_value=HEADER + 1, max_value=400),
)
def test_round_trip_over_batches_rotation_and_reopen(
    batches: list[list[bytes]], segment_bytes: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "wal"
        wal = opened(directory, segment_bytes=segment_bytes)
        expected: list[bytes] = []
        for batch in batches:
            assert wal.append(batch) == len(expected)
            expected += batch
        want = list(enumerate(expected))
        assert read_all(wal) == want
        assert wal.next_index == len(expected)
        assert wal.bytes == sum(HEADER + len(p) for p in expected)
        wal.close()

        again = opened(directory, segment_bytes=segment_bytes)
        try:
            assert again.corrupt_records == 0
            assert again.next_index == len(expected)
            assert read_all(again) == want
            for name in segments(directory):
                first = int(name.removesuffix(".wal"))
                assert again.read(first, 1)[:1] == (
                    [(first, expected[first])] if first < len(expected) else []
                )
        finally:
            again.close()


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=60), min_size=1, max_size=30),
    start=st.integers(min_value=0, max_value=40),
    count=st.integers(min_value=1, max_value=40),
)
def test_read_returns_a_prefix_of_what_follows_index(
    sizes: list[int], start: int, count: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        wal = opened(Path(tmp) / "wal", segment_bytes=100)
        try:
            data = [bytes([i % 256]) * size for i, size in enumerate(sizes)]
            for item in data:
                wal.append([item])
            got = wal.read(start, count)
            assert len(got) <= count
            assert got == list(enumerate(data))[start : start + len(got)]
            if start < len(data):
                assert got  # at least the record at index
        finally:
            wal.close()


# -- found problems ---------------------------------------------------------------------------
def test_an_empty_record_is_refused(tmp_path: Path) -> None:
    # An empty record would read back as a crash's zero fill and cut what follows it.
    wal = opened(tmp_path / "wal")
    try:
        with pytest.raises(ValueError, match="never empty"):
            wal.append([b"a", b"", b"c"])
        assert wal.next_index == 0
    finally:
        wal.close()


def test_read_of_zero_records_is_empty(tmp_path: Path) -> None:
    wal = opened(tmp_path / "wal")
    try:
        wal.append([b"a"])
        assert wal.read(0, 0) == []
    finally:
        wal.close()


def test_overlapping_appends_get_distinct_indices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wal = opened(tmp_path / "wal")
    real_write = os.write
    second_done = threading.Event()
    first_writing = threading.Event()
    results: dict[str, int] = {}

    def slow_first_write(fd: int, data) -> int:
        if threading.current_thread().name == "first":
            first_writing.set()
            second_done.wait(2)
        return real_write(fd, data)

    monkeypatch.setattr(wal_module.os, "write", slow_first_write)

    def first() -> None:
        results["first"] = wal.append([b"one-one", b"one-two"])

    def second() -> None:
        first_writing.wait(2)
        results["second"] = wal.append([b"two"])
        second_done.set()

    threads = [threading.Thread(target=first, name="first"), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    monkeypatch.undo()
    try:
        assert sorted(results.values()) in ([0, 1], [0, 2])
        assert wal.next_index == 3
        assert sorted(p for _, p in read_all(wal)) == [b"one-one", b"one-two", b"two"]
    finally:
        wal.close()


def test_a_wal_smaller_than_a_segment_can_still_be_emptied(tmp_path: Path) -> None:
    # A 32 MiB WAL with the default 64 MiB segments was one segment, never released
    # (only whole non-active segments are): once full it stayed full (bench/fleet_run.py).
    wal = opened(tmp_path / "wal", max_bytes=4 * 28, segment_bytes=64 << 20)
    try:
        assert wal.segment_bytes <= wal.max_bytes // 4
        for i in range(4):
            wal.append([payload(i)])
        assert wal.full()
        wal.release(wal.next_index)  # every record written out by the sinks
        assert not wal.full()
    finally:
        wal.close()

"""The dead-letter file: JSON lines, synced on flush, bounded by rotation, payload kept."""

from __future__ import annotations

import base64
import json
import os
import threading
from pathlib import Path

import pytest

from telemetryd import durable
from telemetryd.deadletter import DeadLetters

S = 1_000_000_000
T = 1_800_000_000 * S  # 2027-01-15T08:00:00Z
KEEP = 64 << 10


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().split(b"\n") if line]


def test_add_queues_and_counts_flush_writes(tmp_path: Path) -> None:
    path = tmp_path / "dl.jsonl"
    dl = DeadLetters(path, max_bytes=1 << 20)
    dl.add("telemetry/v1/c1/n1/report", "json", "input data was truncated", b'{"a":', T)
    assert dl.counts == {"json": 1}
    assert not path.exists()  # queued, not yet written
    assert dl.read() == []
    dl.flush()
    assert dl.read() == [
        {
            "time": "2027-01-15T08:00:00+00:00",
            "topic": "telemetry/v1/c1/n1/report",
            "reason": "json",
            "detail": "input data was truncated",
            "payload": '{"a":',
        }
    ]
    assert lines(path) == dl.read()
    assert path.read_bytes().endswith(b"\n")


def test_flush_appends_and_syncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "dl.jsonl"
    dl = DeadLetters(path, max_bytes=1 << 20)
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(durable.os, "fsync", fsync)
    dl.add("t/1", "schema", "seq: expected int", b"{}", T)
    dl.add("t/2", "topic", "bad topic", b"{}", T + S)
    dl.flush()
    assert synced == [str(path)]
    dl.add("t/3", "schema", "x", b"{}", T + 2 * S)
    dl.flush()
    assert len(synced) == 2
    assert [d["topic"] for d in dl.read()] == ["t/1", "t/2", "t/3"]
    assert dl.counts == {"schema": 2, "topic": 1}


def test_flush_with_nothing_queued_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dl.jsonl"
    dl = DeadLetters(path, max_bytes=100)
    dl.flush()
    assert not path.parent.exists()


def test_flush_creates_the_directory(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "dl.jsonl"
    dl = DeadLetters(path, max_bytes=1 << 20)
    dl.add("t", "json", "d", b"x", T)
    dl.flush()
    assert len(dl.read()) == 1


def test_binary_payload_is_kept_as_base64(tmp_path: Path) -> None:
    dl = DeadLetters(tmp_path / "dl.jsonl", max_bytes=1 << 20)
    raw = b"\xff\xfe\x00binary\x80"
    dl.add("t", "json", "invalid UTF-8", raw, T)
    dl.flush()
    (letter,) = dl.read()
    assert "payload" not in letter
    assert base64.b64decode(letter["payload_base64"]) == raw  # type: ignore[arg-type]


def test_text_payload_is_kept_as_text_even_if_not_ascii(tmp_path: Path) -> None:
    dl = DeadLetters(tmp_path / "dl.jsonl", max_bytes=1 << 20)
    text = '{"node":"nœud-é","x":"\\u0000\n\t"}'
    dl.add("t", "schema", "node: ...", text.encode(), T)
    dl.flush()
    (letter,) = dl.read()
    assert letter["payload"] == text
    assert "payload_base64" not in letter
    assert len((tmp_path / "dl.jsonl").read_bytes().splitlines()) == 1  # one letter, one line


def test_an_oversized_payload_is_truncated_and_says_from_what(tmp_path: Path) -> None:
    dl = DeadLetters(tmp_path / "dl.jsonl", max_bytes=1 << 30)
    big = b"x" * (5 << 20)
    dl.add("t", "oversized", f"{len(big)} bytes > 4194304", big, T)
    raw = b"\xff" * (KEEP + 1)
    dl.add("t", "oversized", "binary", raw, T)
    exact = b"y" * KEEP
    dl.add("t", "json", "exactly the limit", exact, T)
    dl.flush()
    text, binary, whole = dl.read()
    assert text["truncated_from"] == 5 << 20
    assert text["payload"] == "x" * KEEP
    assert binary["truncated_from"] == KEEP + 1
    assert base64.b64decode(binary["payload_base64"]) == b"\xff" * KEEP  # type: ignore[arg-type]
    assert "truncated_from" not in whole
    assert whole["payload"] == "y" * KEEP
    assert (tmp_path / "dl.jsonl").stat().st_size < 3 * 2 * KEEP  # bounded per letter


def test_rotation_past_max_bytes_keeps_one_old_file(tmp_path: Path) -> None:
    path = tmp_path / "dl.jsonl"
    old = path.with_name("dl.jsonl.1")
    dl = DeadLetters(path, max_bytes=700)

    def letter(i: int) -> None:
        dl.add(f"t/{i}", "json", "d", b"p" * 150, T + i)
        dl.flush()

    for i in range(3):
        letter(i)
    assert not old.exists()
    assert path.stat().st_size == 3 * 252  # over the bound now: rotated on the next flush
    letter(3)
    assert [d["topic"] for d in lines(old)] == ["t/0", "t/1", "t/2"]
    assert [d["topic"] for d in dl.read()] == ["t/3"]
    for i in range(4, 9):
        letter(i)
    # Only one old file is kept: the first three are gone for good, the rest split in two.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dl.jsonl", "dl.jsonl.1"]
    assert [d["topic"] for d in lines(old)] == ["t/3", "t/4", "t/5"]
    assert [d["topic"] for d in dl.read()] == ["t/6", "t/7", "t/8"]
    assert dl.counts == {"json": 9}  # counts are not rotated away


def test_counts_by_reason(tmp_path: Path) -> None:
    dl = DeadLetters(tmp_path / "dl.jsonl", max_bytes=1 << 20)
    for reason in ["json", "schema", "json", "too_old", "json"]:
        dl.add("t", reason, "d", b"", T)
    assert dl.counts == {"json": 3, "schema": 1, "too_old": 1}
    assert dl.counts["clock_skew"] == 0


def test_concurrent_adds_and_flushes_lose_nothing(tmp_path: Path) -> None:
    dl = DeadLetters(tmp_path / "dl.jsonl", max_bytes=1 << 30)

    def producer(k: int) -> None:
        for i in range(50):
            dl.add(f"t/{k}/{i}", "json", "d", b"x", T)
            if i % 10 == 0:
                dl.flush()

    threads = [threading.Thread(target=producer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    dl.flush()
    topics = [d["topic"] for d in dl.read()]
    assert sorted(topics) == sorted(f"t/{k}/{i}" for k in range(4) for i in range(50))
    assert dl.counts["json"] == 200


# -- found problems -------------------------------------------------------------------------
@pytest.mark.parametrize("char", ["\u2028", "\u0085"])
def test_read_survives_unicode_line_separators_in_a_payload(tmp_path: Path, char: str) -> None:
    dl = DeadLetters(tmp_path / "dl.jsonl", max_bytes=1 << 20)
    dl.add("t", "schema", "d", f'{{"node":"a{char}b"}}'.encode(), T)
    dl.flush()
    assert dl.read()[0]["payload"] == f'{{"node":"a{char}b"}}'


def test_letters_queued_before_a_failed_flush_are_written_by_the_next(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a regular file where the directory should be")
    dl = DeadLetters(blocker / "dl.jsonl", max_bytes=1 << 20)
    dl.add("t", "json", "d", b"{", T)
    with pytest.raises(OSError):
        dl.flush()
    blocker.unlink()
    dl.flush()
    assert len(dl.read()) == 1

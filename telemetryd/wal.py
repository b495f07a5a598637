"""The aggregator's write-ahead log: accepted reports, synced before the broker is acked.

Records are numbered (their *index*) and appended in batches, one fsync per batch (group
commit: under load the batch grows while the previous fsync runs, so throughput scales
with load, not with disk latency). Each record is ``<u32 length><u32 crc32><payload>``;
segment files are named by the index of their first record. Sinks read the log through
their own cursors; a segment is deleted once every reader (every sink, and the fleet
snapshot) is past it. When the log holds ``max_bytes``, the aggregator stops acknowledging
and the broker keeps the rest.

Recovery: a torn record at the end of the last segment (a crash mid-write) is cut off; it
was never acknowledged, so the broker sends it again. A corrupt record inside a segment
(disk damage) ends that segment's readable part: the rest is moved aside and counted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from telemetryd.durable import fsync_dir, write_all

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<II")
SUFFIX = ".wal"


class WalError(Exception):
    """The log cannot be written (disk full, I/O error): hold the batch and retry."""


@dataclass(slots=True)
class _Segment:
    first: int
    path: Path
    offsets: list[int] = field(default_factory=list)  # file offset of each record
    size: int = 0

    @property
    def end(self) -> int:
        """Index one past the segment's last record."""
        return self.first + len(self.offsets)


class Wal:
    """A numbered, segmented, synced log of byte records; thread-safe."""

    def __init__(self, directory: Path, *, max_bytes: int, segment_bytes: int = 64 << 20) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        # At least four segments fit in the bound: only whole segments other than the
        # active one are released, so a segment as large as the bound (a 32 MiB WAL with
        # 64 MiB segments) could never be freed, and a full WAL stalled for good.
        self.segment_bytes = max(1, min(segment_bytes, max_bytes // 4))
        self._segments: list[_Segment] = []
        self._lock = threading.Lock()  # the segment table (readers and the writer)
        self._write_lock = threading.Lock()  # one append at a time, without blocking readers
        self._fd: int | None = None
        self.corrupt_records = 0

    # -- opening ---------------------------------------------------------------------------
    def open(self) -> None:
        """Find the segments, index their records, cut a torn tail."""
        self.directory.mkdir(parents=True, exist_ok=True)
        paths = sorted(self.directory.glob(f"*{SUFFIX}"), key=lambda p: int(p.stem))
        lost_bound = 0
        for path in paths:
            segment = _Segment(int(path.stem), path)
            lost_bound = self._scan(segment, last=path == paths[-1])
            if self._segments and segment.first != self._segments[-1].end:
                log.warning("WAL segment %s does not follow its predecessor", path)
            self._segments.append(segment)
        if not self._segments:
            self._segments.append(_Segment(0, self.directory / f"{0:020d}{SUFFIX}"))
        self._open_active()
        if lost_bound:
            # Records past a corrupt one in the last segment may have been read already:
            # continue beyond the most that can have been there, never reuse their indices.
            self.advance_to(self._segments[-1].end + lost_bound)

    def _scan(self, segment: _Segment, last: bool) -> int:
        """Index the segment's records; return how many records at most were lost."""
        data = segment.path.read_bytes()
        pos = 0
        torn = False
        while pos + _HEADER.size <= len(data):
            length, crc = _HEADER.unpack_from(data, pos)
            end = pos + _HEADER.size + length
            if length == 0 or end > len(data):
                torn = True  # zeros a crash left behind, or a record cut short
                break
            if zlib.crc32(data[pos + _HEADER.size : end]) != crc:
                break
            segment.offsets.append(pos)
            pos = end
        else:
            torn = pos < len(data)  # a header cut short
        segment.size = pos
        lost = 0
        if pos == len(data):
            return lost
        if last and torn:
            # The end of the last batch never reached its fsync, so it was never acked.
            log.warning("WAL %s: cut %d bytes of a torn write", segment.path, len(data) - pos)
        else:
            lost = (len(data) - pos) // (_HEADER.size + 1) + 1
            self.corrupt_records += 1
            aside = segment.path.with_suffix(".corrupt")
            aside.write_bytes(data[pos:])
            log.error(
                "WAL %s: corrupt record at byte %d; the rest is in %s", segment.path, pos, aside
            )
        with open(segment.path, "r+b") as handle:
            handle.truncate(pos)
            os.fsync(handle.fileno())
        return lost if last else 0

    def _open_active(self) -> None:
        active = self._segments[-1]
        self._fd = os.open(active.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fsync_dir(self.directory)

    # -- writing ---------------------------------------------------------------------------
    def append(self, payloads: list[bytes]) -> int:
        """Append and sync a batch; return the index of its first record."""
        if any(not p for p in payloads):
            raise ValueError("WAL records are never empty (an empty one reads as a torn write)")
        with self._write_lock:
            return self._append(payloads)

    def _append(self, payloads: list[bytes]) -> int:
        if self._fd is None:
            raise WalError("WAL is not open")
        with self._lock:
            active = self._segments[-1]
            first = active.end
            chunks = []
            offsets = []
            pos = active.size
            for payload in payloads:
                offsets.append(pos)
                chunks.append(_HEADER.pack(len(payload), zlib.crc32(payload)))
                chunks.append(payload)
                pos += _HEADER.size + len(payload)
        try:
            write_all(self._fd, b"".join(chunks))
            os.fsync(self._fd)
        except OSError as exc:
            # An unknown part may be on disk: cut back to the last good size before retrying.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, active.size)
            raise WalError(
                f"cannot write the WAL in {self.directory}: {exc.strerror or exc}"
            ) from None
        with self._lock:
            active.offsets.extend(offsets)
            active.size = pos
            if active.size >= self.segment_bytes:
                self._rotate()
        return first

    def _rotate(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        end = self._segments[-1].end
        self._segments.append(_Segment(end, self.directory / f"{end:020d}{SUFFIX}"))
        self._open_active()

    # -- reading ---------------------------------------------------------------------------
    def read(self, index: int, max_records: int) -> list[tuple[int, bytes]]:
        """Up to ``max_records`` records from ``index`` on (fewer at a segment's end)."""
        if max_records <= 0:
            return []
        with self._lock:
            segment = next((s for s in self._segments if s.first <= index < s.end), None)
            if segment is None:
                return []
            start = index - segment.first
            offsets = segment.offsets[start : start + max_records]
            after = start + len(offsets)
            stop = segment.offsets[after] if after < len(segment.offsets) else segment.size
        with open(segment.path, "rb") as handle:
            handle.seek(offsets[0])
            data = handle.read(stop - offsets[0])
        out = []
        base = offsets[0]
        for i, offset in enumerate(offsets):
            length, _crc = _HEADER.unpack_from(data, offset - base)
            begin = offset - base + _HEADER.size
            out.append((index + i, data[begin : begin + length]))
        return out

    def next_present(self, index: int) -> int:
        """The first index at or after ``index`` that exists.

        Records lost to corruption, or deleted, are skipped; ``next_index`` when there is
        none yet.
        """
        with self._lock:
            for segment in self._segments:
                if index < segment.end:
                    return max(index, segment.first)
            return self._segments[-1].end

    def advance_to(self, index: int) -> None:
        """Make the next record's index at least ``index``.

        After corruption cut the last segment short, indices past the cut may already be
        known to readers (a sink's cursor); reusing them would hide new records from them.
        """
        with self._write_lock, self._lock:
            if index <= self._segments[-1].end:
                return
            log.warning("WAL: continuing at record %d (records up to there were lost)", index)
            if self._fd is not None:
                os.close(self._fd)
            self._segments.append(_Segment(index, self.directory / f"{index:020d}{SUFFIX}"))
            self._open_active()

    # -- trimming --------------------------------------------------------------------------
    def release(self, upto: int) -> int:
        """Delete segments wholly before ``upto`` (never the active one); return bytes freed."""
        freed = 0
        with self._lock:
            while len(self._segments) > 1 and self._segments[0].end <= upto:
                segment = self._segments.pop(0)
                freed += segment.size
                segment.path.unlink(missing_ok=True)
        return freed

    @property
    def first_index(self) -> int:
        """Index of the oldest record still kept."""
        return self._segments[0].first

    @property
    def next_index(self) -> int:
        """Index the next appended record will get."""
        return self._segments[-1].end

    def bytes_from(self, index: int) -> int:
        """Bytes of log at and after record ``index``: what a reader at ``index`` has left."""
        total = 0
        with self._lock:
            for segment in self._segments:
                if index >= segment.end:
                    continue
                if index <= segment.first:
                    total += segment.size
                else:
                    total += segment.size - segment.offsets[index - segment.first]
        return total

    @property
    def bytes(self) -> int:
        """Bytes of log kept."""
        return sum(s.size for s in self._segments)

    def full(self) -> bool:
        """Whether the log is at its bound (stop acknowledging until sinks catch up)."""
        return self.bytes >= self.max_bytes

    def close(self) -> None:
        """Close the active segment."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

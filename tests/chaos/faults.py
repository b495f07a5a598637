"""Helpers for the fault-injection tests: how many times, and the accounting at the end.

The processes, the witness and the loss checks are the integration tests' own
(tests/integration/pipeline.py, test_pipeline.py); this adds only what repeating a fault
many times needs: the number of rounds (short in CI, long with ``TELEMETRYD_CHAOS=full``),
a seeded random source whose seed is printed, the duplicate count from SQLite, and one
printed line per test (``[chaos] ...``) that /work/notes/rel-chaos.md's table is made from.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.chaos.conftest import size as rounds
from tests.integration.pipeline import Key, by_boot, holes

__all__ = ["SteppedClock", "Tally", "duplicates", "rounds", "seeded"]


def seeded(name: str) -> random.Random:
    """A random source fixed by ``TELEMETRYD_CHAOS_SEED`` (default 9) so a failure replays."""
    seed = int(os.environ.get("TELEMETRYD_CHAOS_SEED", "9"))
    print(f"\n[chaos] {name}: seed {seed}")
    return random.Random(f"{name}:{seed}")


def duplicates(tmp: Path) -> int:
    """Reports stored more than once: rows of the agent table minus distinct keys."""
    db = sqlite3.connect(tmp / "aggregator" / "telemetry.db")
    try:
        (rows, distinct) = db.execute(
            "SELECT COUNT(*), COUNT(DISTINCT node || '/' || boot_id || '/' || seq) FROM agent"
        ).fetchone()
    finally:
        db.close()
    return int(rows) - int(distinct)


@dataclass
class Tally:
    """What one fault test measured, printed as one ``[chaos]`` line."""

    fault: str
    runs: int = 0
    recoveries: list[float] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)

    def recovered(self, since: float) -> None:
        """Record the seconds from ``since`` (monotonic) to now."""
        self.recoveries.append(time.monotonic() - since)

    def report(self, keys: set[Key], delivered: set[Key], dups: int) -> dict[str, int]:
        """Print and return lost (delivered, not stored), holes (never delivered), dups."""
        lost = len(delivered - keys)
        gaps = sum(holes(s) for s in by_boot(keys).values())
        rec = (f"max {max(self.recoveries):.1f} s, mean "
               f"{sum(self.recoveries) / len(self.recoveries):.1f} s"
               if self.recoveries else "-")  # fmt: skip
        print(
            f"\n[chaos] {self.fault}: runs {self.runs}, stored {len(keys)}, lost {lost}, "
            f"holes {gaps}, duplicates {dups}, recovery {rec}, counters {self.counters}"
        )
        return {"lost": lost, "holes": gaps, "duplicates": dups}


_CLOCK_SHIM = '''"""From tests/chaos/faults.py: this process's wall clock, offset from a file."""
import os
import time

_path = os.environ.get("CHAOS_CLOCK_FILE")
if _path:
    _time, _time_ns, _mono = time.time, time.time_ns, time.monotonic
    _state = [0.0, -1.0]  # offset in seconds, when last read (monotonic)

    def _offset():
        now = _mono()
        if now - _state[1] > 0.05:
            _state[1] = now
            try:
                with open(_path) as handle:
                    _state[0] = float(handle.read() or 0)
            except (OSError, ValueError):
                pass
        return _state[0]

    time.time = lambda: _time() + _offset()
    time.time_ns = lambda: _time_ns() + int(_offset() * 1e9)
'''


class SteppedClock:
    """Step a service's wall clock (``time.time``/``time.time_ns``), monotonic untouched.

    faketime is not installed here and the services take no clock from outside, so the
    seam is a ``sitecustomize`` on the child's PYTHONPATH that adds the offset written to a
    file: a step is one write, seen within 50 ms, as an NTP step or an operator's
    ``date -s`` would be. ``datetime.now()`` is not offset (the services stamp reports
    with ``time.time_ns``).
    """

    def __init__(self, tmp: Path, name: str) -> None:
        shim = tmp / "clockshim"
        shim.mkdir(exist_ok=True)
        (shim / "sitecustomize.py").write_text(_CLOCK_SHIM)
        self.shim = shim
        self.file = tmp / f"clock-{name}"
        self.offset = 0.0
        self.step(0.0)

    def attach(self, env: dict[str, str]) -> None:
        """Make a service's environment (before its start) use this clock."""
        paths = [str(self.shim), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        env["CHAOS_CLOCK_FILE"] = str(self.file)

    def step(self, seconds: float) -> None:
        """Move the clock by ``seconds`` (either way) now."""
        self.offset += seconds
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(repr(self.offset))
        tmp.replace(self.file)

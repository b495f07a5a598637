"""NVML calls hanging on one GPU, again and again (the simulator's ``hang`` scenario).

A hung NVML call is the classic way a GPU exporter stops reporting a whole node. Each GPU
is read on its own worker thread with a timeout, so while GPU 1's calls hang the agent
must keep its interval, report GPU 0 as usual and GPU 1 with an error the operator sees
(``timeout``, then ``hung`` while the same call is stuck), and read GPU 1 again once the
call returns. Counted: reports lost (none), the longest gap between reports, the stored
error rows, and the recovery (how long GPU 1 stays in error past the hang's end).
"""

from __future__ import annotations

import itertools
import sqlite3
import time

import pytest

from tests.chaos.faults import Tally, duplicates, rounds, seeded
from tests.integration.pipeline import agent, aggregator
from tests.integration.test_pipeline import assert_no_loss, settle

pytestmark = pytest.mark.integration

INTERVAL = 0.5


def test_nvml_hangs_cost_one_gpu_not_the_node(tmp_path, mosquitto, witness):
    random = seeded("nvml-hang")
    tally = Tally("NVML call hangs (sim scenario)", runs=rounds(1, 12))
    at, hangs, lines = 1.5, [], []
    for _ in range(tally.runs):  # hangs longer than the 0.3 s timeout, with good reads between
        duration = round(random.uniform(1.5, 3.0), 1)
        hangs.append(duration)
        lines.append(f'[[fault]]\nat = {at:.1f}\ngpu = 1\nkind = "hang"\nduration = {duration}\n')
        at += duration + round(random.uniform(1.5, 2.5), 1)
    scenario = tmp_path / "hangs.toml"
    scenario.write_text("\n".join(lines))
    agg = aggregator(tmp_path, mosquitto.url).start().wait_log("consuming")
    a = agent(tmp_path, mosquitto.url, "n0", interval=INTERVAL, sim_scenario=str(scenario),
              nvml_timeout="0.3")  # fmt: skip
    a.start()
    time.sleep(at + 1.0)
    keys = settle(tmp_path, [a], witness)
    assert agg.stop() == 0, agg.tail()
    assert_no_loss(keys, ["n0"])
    db = sqlite3.connect(tmp_path / "aggregator" / "telemetry.db")
    rows = db.execute("SELECT time_ns, gpu_index, error_code FROM gpu ORDER BY time_ns").fetchall()
    db.close()
    times = sorted({t for t, _, _ in rows})
    gap = max(b - a for a, b in itertools.pairwise(times)) / 1e9
    gpu0_errors = sum(1 for _, g, e in rows if g == 0 and e)
    gpu1 = [(t, e) for t, g, e in rows if g == 1]
    episodes: list[list[int]] = []  # consecutive error rows of GPU 1
    for (t, e), prev in zip(gpu1, [(0, None), *gpu1], strict=False):
        if e and not prev[1]:
            episodes.append([t, t])
        elif e:
            episodes[-1][1] = t
    codes = sorted({e for _, e in gpu1 if e})
    # GPU 1 is in error from the first late read to the first good one after the hang.
    for (start, end), duration in zip(episodes, hangs, strict=False):
        tally.recoveries.append(max(0.0, (end - start) / 1e9 + INTERVAL - duration))
    tally.counters = {"hangs": len(hangs), "error_episodes": len(episodes), "codes": codes,
                      "gpu0_errors": gpu0_errors, "max_gap_s": round(gap, 2)}  # fmt: skip
    got = tally.report(keys, witness.seen(), duplicates(tmp_path))
    assert got == {"lost": 0, "holes": 0, "duplicates": 0}
    assert gpu0_errors == 0
    assert len(episodes) == len(hangs), codes
    assert set(codes) <= {"timeout", "hung"} and codes
    assert gap < INTERVAL * 2 + 1.0, "a hung GPU delayed the node's reports"

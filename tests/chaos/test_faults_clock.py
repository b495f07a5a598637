"""The wall clock stepping back and forward, on an agent and on the aggregator.

Seam: ``SteppedClock`` (tests/chaos/faults.py), a ``sitecustomize`` that offsets the
child's ``time.time``/``time.time_ns`` (faketime is not installed here). Both services
wait on the monotonic clock, so a step must neither stall the agent's sampling nor make it
burst; reports stamped within the aggregator's skew bound (300 s ahead, 30 days behind)
are stored whatever the step. A step larger than the bound makes the aggregator refuse
reports as ``clock_skew``: those are the only losses allowed, each one a dead letter
counted in the fleet summary (holes == lost == rejected["clock_skew"]).
"""

from __future__ import annotations

import time

import pytest

from tests.chaos.faults import SteppedClock, Tally, duplicates, rounds, seeded
from tests.integration.pipeline import agent, aggregator, by_boot, spool_files, stored, wait_until
from tests.integration.test_pipeline_edges import _summary

pytestmark = pytest.mark.integration


def test_wall_clock_steps_lose_only_what_the_skew_bound_refuses(tmp_path, mosquitto, witness):
    random = seeded("clock-step")
    tally = Tally("wall clock steps (agent, aggregator)", runs=rounds(2, 40))
    clocks = {
        "aggregator": SteppedClock(tmp_path, "aggregator"),
        "n0": SteppedClock(tmp_path, "n0"),
    }
    agg = aggregator(tmp_path, mosquitto.url, fleet_interval="1")
    clocks["aggregator"].attach(agg.env)
    agg.start().wait_log("consuming")
    a = agent(tmp_path, mosquitto.url, "n0")
    clocks["n0"].attach(a.env)
    a.start()
    time.sleep(1.5)
    steps = []
    for _ in range(tally.runs):  # within the bounds: nothing may be lost
        # To an offset within +-120 s of true time: the two clocks stay < 300 s apart (a
        # random walk of steps would wander past the bound in a long run).
        who = random.choice(sorted(clocks))
        by = round(random.uniform(-120, 120) - clocks[who].offset, 1)
        clocks[who].step(by)
        steps.append((who, by))
        count = len(stored(tmp_path))
        back = time.monotonic()
        wait_until(lambda c=count: len(stored(tmp_path)) > c + 2, 15, "reports after a step")
        tally.recovered(back)
        time.sleep(random.uniform(0.5, 1.5))
    # Beyond the bound: the agent 400 s ahead of the aggregator for a while, then back.
    ahead = 400 - clocks["n0"].offset + clocks["aggregator"].offset
    clocks["n0"].step(ahead)
    time.sleep(random.uniform(1.0, 2.0))
    clocks["n0"].step(-ahead)
    steps += [("n0", round(ahead, 1)), ("n0", round(-ahead, 1))]
    count = len(stored(tmp_path))
    back = time.monotonic()
    wait_until(lambda: len(stored(tmp_path)) > count, 15, "reports after the big step")
    tally.recovered(back)
    wait_until(lambda: len(spool_files(tmp_path, "n0")) <= 1, 30, "the backlog sent")
    assert a.stop() == 0, a.tail()
    time.sleep(0.5)
    summary = _summary(mosquitto.port, until=lambda s: "clock_skew" in s.get("rejected", {}))
    refused = summary["rejected"]["clock_skew"]
    wait_until(lambda: len(stored(tmp_path)) + refused >= len(witness.seen()), 15, "the store")
    keys = stored(tmp_path)
    tally.counters = {"steps": len(steps), "rejected": summary["rejected"]}
    print(f"[chaos] clock steps (who, seconds): {steps}")
    got = tally.report(keys, witness.seen(), duplicates(tmp_path))
    assert agg.stop() == 0, agg.tail()
    assert summary["rejected"] == {"clock_skew": refused} and refused > 0
    assert got == {"lost": refused, "holes": refused, "duplicates": 0}
    assert all(seqs[0] == 0 for seqs in by_boot(keys).values())

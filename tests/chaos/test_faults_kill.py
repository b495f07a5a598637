"""The aggregator and the agents SIGKILLed at seeded random moments, many times.

The single-kill forms are in tests/integration/test_pipeline.py. Here one process of the
three (aggregator, n0, n1) is killed at a random moment, down a random while, started
again, over and over; the broker stays up, so the witness is the yardstick: every report
it saw must be stored exactly once and every boot must be contiguous from 0. A killed
agent's spooled reports keep their boot id and numbers and are sent by the next boot.
"""

from __future__ import annotations

import time

import pytest

from tests.chaos.faults import Tally, duplicates, rounds, seeded
from tests.integration.pipeline import agent, aggregator, by_boot, stored, wait_until
from tests.integration.test_pipeline import assert_no_loss, settle

pytestmark = pytest.mark.integration


def test_random_sigkills_of_aggregator_and_agents(tmp_path, mosquitto, witness):
    random = seeded("process-kill")
    tally = Tally("aggregator/agent SIGKILL at random", runs=rounds(3, 45))
    nodes = ["n0", "n1"]
    procs = {"aggregator": aggregator(tmp_path, mosquitto.url).start().wait_log("consuming")}
    procs.update({n: agent(tmp_path, mosquitto.url, n).start() for n in nodes})
    kills = dict.fromkeys(procs, 0)
    time.sleep(1.5)
    # Each process in turn, the order shuffled per cycle: even the short run kills all three.
    order = [v for _ in range(tally.runs) for v in random.sample(sorted(procs), len(procs))]
    for victim in order[: tally.runs]:
        time.sleep(random.uniform(0.1, 2.0))
        procs[victim].kill()
        kills[victim] += 1
        time.sleep(random.uniform(0.0, 1.0))
        procs[victim].start()
        back = time.monotonic()
        boots = len(by_boot(stored(tmp_path)))
        count = len(stored(tmp_path))
        if victim == "aggregator":  # recovered: it stores again
            wait_until(lambda c=count: len(stored(tmp_path)) > c, 30, "the store to grow")
        else:  # recovered: the new boot's reports are stored
            wait_until(lambda b=boots: len(by_boot(stored(tmp_path))) > b, 30, "a new boot")
        tally.recovered(back)
    keys = settle(tmp_path, [procs[n] for n in nodes], witness)
    assert procs["aggregator"].stop() == 0, procs["aggregator"].tail()
    tally.counters = {f"{name}_kills": n for name, n in kills.items()}
    got = tally.report(keys, witness.seen(), duplicates(tmp_path))
    assert got == {"lost": 0, "holes": 0, "duplicates": 0}
    assert_no_loss(keys, nodes)

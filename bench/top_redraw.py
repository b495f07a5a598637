"""What one ``top`` redraw costs in-process, with no broker: a driver for profiling.

bench/top_cpu.py is the measure (real broker, real terminal); this is the quick loop to
find where the time goes. A Watch is fed the load generator's reports (1,000 nodes x 8
GPUs by default, values moving every round), ``TopApp`` runs headless (Textual's
``run_test`` at 200x60, the size top_cpu.py's terminal has) and each round is: ingest one
report per node, redraw, let Textual paint. It prints CPU milliseconds per round, split
into ingest and the rest (redraw and paint), per view.

Usage: PYTHONPATH=$PWD python bench/top_redraw.py [--nodes 1000] [--rounds 30] [--view fleet]
       [--profile FILE] (a cProfile of the redraw rounds, for pstats/snakeviz)
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import time

from bench.loadgen import STEPS, TABLES, Fleet, build_fleet
from telemetryd.config import TopConfig
from telemetryd.tui import TopApp
from telemetryd.watch import Watch


async def run(args: argparse.Namespace, fleet: Fleet) -> None:
    watch = Watch()
    app = TopApp(TopConfig(refresh=3600.0), watch=watch, feed=False)
    seq = 0

    def feed() -> None:
        nonlocal seq
        seq += 1
        now = time.time_ns()
        for n, (topic, form) in enumerate(zip(fleet.topics, fleet.formats, strict=True)):
            row = fleet.tables[n % TABLES][(seq + fleet.offsets[n]) % STEPS]
            watch.ingest(topic, form % (seq, now, *row))

    for topic, status in zip(fleet.topics, fleet.statuses, strict=True):
        watch.ingest(topic.rsplit("/", 1)[0] + "/status", status)
    feed()
    profile = cProfile.Profile() if args.profile else None
    async with app.run_test(size=(200, 60)) as pilot:
        await pilot.press({"fleet": "1", "nodes": "2", "alerts": "3"}[args.view])
        await pilot.pause(0.2)
        ingest = draw = 0.0
        for _ in range(args.rounds):
            t0 = time.process_time()
            feed()
            t1 = time.process_time()
            if profile:
                profile.enable()
            app.tick()
            await pilot.pause()
            await pilot.pause()
            if profile:
                profile.disable()
            t2 = time.process_time()
            ingest += t1 - t0
            draw += t2 - t1
    n = args.rounds
    print(f"{args.nodes} nodes x {args.gpus} GPUs, view {args.view}, {n} rounds: "
          f"ingest {1000 * ingest / n:.1f} ms/round, redraw+paint {1000 * draw / n:.1f} "
          f"ms/round")  # fmt: skip
    if profile:
        profile.dump_stats(args.profile)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--view", choices=["fleet", "nodes", "alerts"], default="fleet")
    parser.add_argument("--profile", default="")
    args = parser.parse_args()
    fleet = build_fleet("bench", args.nodes, args.gpus, 1.0)  # runs a loop of its own
    asyncio.run(run(args, fleet))


if __name__ == "__main__":
    main()

"""The bare subscriber: a viewer's floor. Subscribes as a viewer does and only counts.

Same client library (telemetryd's ``MqttSession`` over aiomqtt/paho), same filter
(telemetry/v1/<cluster>/#, QoS 0), same broker and stream as ``telemetryd top``: whatever it costs,
any viewer pays too. Each message is acknowledged (a no-op at QoS 0) and counted, nothing
else. Every second it rewrites ``--stats`` with the count, so a harness can take rates.

Usage: python bench/mqtt_count.py --broker mqtt://127.0.0.1:1883 [--cluster bench]
       [--stats FILE] [--qos 0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time
from pathlib import Path

from exporters.mqtt import MqttSession, MqttSettings
from telemetryd.topics import watch_filter
from telemetryd.urls import parse_broker_url


async def count(broker: str, cluster: str, qos: int, stats: Path | None) -> None:
    # The protocol top subscribes with by default ([top] mqtt_version): the baseline pays
    # the same client-library cost per message, so the ratio is top's own work.
    settings = MqttSettings(broker=parse_broker_url(broker), version="3.1.1",
                            client_id=f"bench-count-{os.getpid()}")  # fmt: skip
    seen = [0]

    async def write() -> None:
        tmp = stats.with_suffix(".tmp") if stats else None
        while stats is not None and tmp is not None:
            tmp.write_text(json.dumps({"time": time.monotonic(), "messages": seen[0]}))
            tmp.replace(stats)
            await asyncio.sleep(1.0)

    async with MqttSession(settings) as session:
        await session.subscribe([watch_filter(cluster)], qos=qos)
        writer = asyncio.create_task(write())
        try:
            async for message in session.messages():
                seen[0] += 1
                session.ack(message)
        finally:
            writer.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    parser.add_argument("--cluster", default="bench")
    # QoS 0 as telemetryd's viewers subscribe (watchfeed.follow): at 1 the PUBACKs it sends
    # would double its cost, and the baseline would no longer be a viewer's floor.
    parser.add_argument("--qos", type=int, choices=[0, 1], default=0)
    parser.add_argument("--stats", default="")
    args = parser.parse_args()
    stats = Path(args.stats) if args.stats else None
    with contextlib.suppress(KeyboardInterrupt):  # SIGINT is how the harness stops it
        asyncio.run(count(args.broker, args.cluster, args.qos, stats))


if __name__ == "__main__":
    main()

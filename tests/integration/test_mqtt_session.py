"""The MQTT session's flow control against a real Mosquitto.

A consumer with ``max_pending`` stops reading its socket when that many messages wait, so
a backlog cannot fill its memory. Its own publishes' PUBACKs arrive on that same socket:
the aggregator publishes alerts and fleet events between batches, while its queue is full.
Before the fix each such publish waited out the whole timeout (10 s) with the backlog
unread: bench/aggregator_throughput.py drained 145 reports/s with the alert engine on,
733 after it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from exporters.mqtt import HARD_FACTOR, MqttSession, MqttSettings
from telemetryd.urls import parse_broker_url
from tests.integration.mosquitto import Mosquitto

BACKLOG = 300
MAX_PENDING = 20
BIG_BACKLOG = 1500


def settings(broker: Mosquitto, client_id: str) -> MqttSettings:
    """As the aggregator's: a persistent session, a window twice ``max_pending``."""
    return MqttSettings(broker=parse_broker_url(broker.url), client_id=client_id, timeout=5.0,
                        persistent=True, session_expiry=600, receive_maximum=2 * MAX_PENDING,
                        max_pending=MAX_PENDING)  # fmt: skip


async def until(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    # Polling private state: there is no event to wait on.
    while not condition() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    return condition()


def test_a_publish_gets_its_puback_while_a_full_queue_has_paused_reading(
    mosquitto: Mosquitto,
) -> None:
    async def main() -> None:
        async with MqttSession(settings(mosquitto, "consumer")) as consumer:
            await consumer.subscribe(["backlog/#"])
        # A backlog queued for the offline session: Mosquitto sends it past the window.
        async with MqttSession(settings(mosquitto, "producer")) as producer:
            await asyncio.gather(*(producer.publish(f"backlog/{i}", b"x" * 1000)
                                   for i in range(BACKLOG)))  # fmt: skip
        async with MqttSession(settings(mosquitto, "consumer")) as consumer:
            messages = consumer.messages()
            first = await anext(messages)  # consuming from now on: a full queue pauses
            assert await until(lambda: consumer._paused, 5), "the queue never filled"
            started = time.monotonic()
            with consumer.urgent():  # the consumer's own publish: nobody else drains
                await consumer.publish("alerts/x", b"firing", retain=True)  # QoS 1: waits
            took = time.monotonic() - started
            assert took < 2.0, f"PUBACK took {took:.1f} s: the paused socket was not read"
            consumer.ack(first)
            # Flow control still holds: reading paused again, and every message comes.
            assert consumer._paused
            got = 1
            async for message in messages:
                consumer.ack(message)
                got += 1
                if got == BACKLOG:
                    break
            assert got == BACKLOG

    asyncio.run(asyncio.wait_for(main(), 60))


def test_another_tasks_publish_cannot_read_the_backlog_into_memory(mosquitto: Mosquitto) -> None:
    # Housekeeping publishes (summaries, rollups, alert state) while the consumer is behind:
    # the socket is read for their PUBACKs only up to HARD_FACTOR x max_pending; then the
    # PUBACK waits until the consumer has taken messages. Before the bound, a consumer that
    # published while behind read a whole backlog into memory (a gigabyte in a minute).
    async def main() -> None:
        async with MqttSession(settings(mosquitto, "consumer2")) as consumer:
            await consumer.subscribe(["big/#"])
        async with MqttSession(settings(mosquitto, "producer2")) as producer:
            await asyncio.gather(*(producer.publish(f"big/{i}", b"x" * 1000)
                                   for i in range(BIG_BACKLOG)))  # fmt: skip
        async with MqttSession(settings(mosquitto, "consumer2")) as consumer:
            messages = consumer.messages()
            first = await anext(messages)
            consumer.ack(first)
            assert await until(lambda: consumer._paused, 5), "the queue never filled"
            publish = asyncio.create_task(consumer.publish("fleet/x", b"summary", retain=True))
            await asyncio.sleep(1.0)  # the backlog is there to be read; the bound holds it back
            queued = consumer._client._queue.qsize()  # type: ignore[union-attr]
            assert queued <= HARD_FACTOR * MAX_PENDING + 2, f"{queued} messages read ahead"
            got = 1
            async for message in messages:  # the consumer drains: reading resumes
                consumer.ack(message)
                got += 1
                if got == BIG_BACKLOG:
                    break
            await asyncio.wait_for(publish, 5)
            assert got == BIG_BACKLOG

    asyncio.run(asyncio.wait_for(main(), 90))

"""Keeping a :class:`~telemetryd.watch.Watch` fed from the broker, through reconnects."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Protocol

from exporters.mqtt import MqttSession, MqttSettings, MqttUnavailable
from telemetryd.backoff import Backoff
from telemetryd.topics import watch_filter
from telemetryd.watch import Watch


class Fed(Protocol):
    """What :func:`follow_filters` feeds: a Watch, or the national viewers' watches."""

    connected: bool
    connection: str
    version: int

    def ingest(self, topic: str, payload: bytes) -> None:
        """Take one message."""


async def follow(
    settings: MqttSettings,
    watch: Watch,
    cluster: str,
    *,
    stop: asyncio.Event,
    on_message: Callable[[], None] | None = None,
) -> None:
    """Keep ``watch`` fed with ``cluster`` until ``stop`` (see :func:`follow_filters`)."""
    await follow_filters(settings, watch, [watch_filter(cluster)], stop=stop,
                         on_message=on_message)  # fmt: skip


async def follow_filters(
    settings: MqttSettings,
    watch: Fed,
    filters: list[str],
    *,
    stop: asyncio.Event,
    on_message: Callable[[], None] | None = None,
) -> None:
    """Keep ``watch`` fed from the broker until ``stop``, reconnecting with backoff.

    QoS 0 and a clean session: a viewer wants the present, not a backlog, and must not
    make the broker queue for it while it is away.
    """
    backoff = Backoff(cap=settings.reconnect_max)
    while not stop.is_set():
        try:
            async with MqttSession(settings) as session:
                await session.subscribe(filters, qos=0)
                watch.connected, watch.connection = True, f"connected to {settings.broker}"
                backoff.reset()
                watch.version += 1
                reader = asyncio.create_task(_read(session, watch, on_message), name="watch-read")
                stopper = asyncio.create_task(stop.wait(), name="watch-stop")
                try:
                    done, _ = await asyncio.wait(
                        {reader, stopper}, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:  # also when follow itself is cancelled (top quits in the demo):
                    for task in (reader, stopper):  # a reader left running would fail on
                        task.cancel()  # the disconnect with nobody to retrieve it
                if reader in done and not reader.cancelled():
                    reader.result()  # raises MqttUnavailable when the connection dropped
        except MqttUnavailable as exc:
            watch.connected, watch.connection = False, f"disconnected: {exc}"
            watch.version += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=backoff.next())
    watch.connected = False


async def _read(session: MqttSession, watch: Fed, on_message: Callable[[], None] | None) -> None:
    async for message in session.messages():
        watch.ingest(message.topic, message.payload)
        if on_message is not None:
            on_message()

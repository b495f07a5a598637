"""A TCP relay that can be frozen: how the demo makes a node silent while it stays connected.

A node whose agent is hung, or whose network path stalls without breaking, keeps its MQTT
connection open and sends nothing. The broker then sees no Last Will and the aggregator
must notice the silence itself (``NodeSilent``), which is what the demo wants to show. The
relay sits between one agent and the broker; ``freeze`` stops it forwarding in both
directions without closing anything, ``thaw`` resumes, and every byte held meanwhile is
delivered in order: the agent's reports of the silent period arrive late, none are lost.
A connection opened while frozen is accepted and held until the thaw.

The agent must outlast the freeze: its keepalive and its PUBACK wait are set longer than
the silent period (telemetryd/demo.py), or it would give up on the connection and
reconnect, which is a different story (NodeOffline).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024


class Link:
    """Relay connections from a loopback port to ``upstream``; frozen on demand."""

    def __init__(self, upstream_host: str, upstream_port: int, *, name: str = "link") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.name = name
        self.port = 0
        self.connections = 0  # accepted so far
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def frozen(self) -> bool:
        """Whether bytes are being held."""
        return not self._flowing.is_set()

    def freeze(self) -> None:
        """Stop forwarding in both directions; connections stay open."""
        if not self.frozen:
            log.info("%s: frozen", self.name)
        self._flowing.clear()

    def thaw(self) -> None:
        """Forward again, starting with what was held."""
        if self.frozen:
            log.info("%s: thawed", self.name)
        self._flowing.set()

    async def start(self, host: str = "127.0.0.1") -> int:
        """Listen on a free port of ``host``; the port."""
        self._server = await asyncio.start_server(self._accepted, host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        """Stop listening and close every relayed connection."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()  # both pumps of a connection then end on their own
        if self._tasks:
            _, late = await asyncio.wait(list(self._tasks), timeout=1.0)
            for task in late:
                task.cancel()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), timeout=1.0)
            self._server = None

    async def serve(self, stop: asyncio.Event) -> None:
        """Relay until ``stop``, then thaw (so goodbyes get through) and close."""
        try:
            await stop.wait()
        finally:
            self.thaw()
            await self.close()

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        upstream: asyncio.StreamWriter | None = None
        try:
            await self._flowing.wait()  # a connection made while frozen waits too
            up_reader, upstream = await asyncio.open_connection(*self.upstream)
            self._writers.add(upstream)
            async with asyncio.TaskGroup() as group:
                group.create_task(self._pump(reader, upstream), name=f"{self.name}.up")
                group.create_task(self._pump(up_reader, writer), name=f"{self.name}.down")
        except* OSError as group:
            log.debug("%s: connection ended: %r", self.name, group.exceptions[0])
        finally:
            for end in (writer, upstream):
                if end is not None:
                    self._writers.discard(end)
                    end.close()
            self._tasks.discard(task)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        """Copy one direction; held while frozen; an end of stream closes the other side."""
        while True:
            await self._flowing.wait()
            data = await source.read(_CHUNK)
            if not data:
                break
            await self._flowing.wait()  # frozen between the read and the write: hold it
            sink.write(data)
            await sink.drain()
        if sink.can_write_eof():
            sink.write_eof()
        sink.close()

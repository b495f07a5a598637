"""Several aggregators on one shared subscription: each node is owned by one member.

A broker's ``$share`` group hands each message to one member; Mosquitto does it round
robin, so one node's reports land on every member in turn. Alert state (``for:``
timers, silence detection, counters, notifications) needs every report of a node in one
place, so each node has an *owner*: a stable hash of ``cluster/node`` over the number of
members. A member that receives a report of a node it does not own still stores it (any
member may write any report: writes are idempotent) but does not evaluate it: it
forwards the original payload to the owner on ``telemetryd/fwd/<group>/<owner>/<topic>``
and acknowledges the original only after that publish's PUBACK, so the broker holds the
message until the owner's copy is safe (docs/sharing.md).

The hash is zlib's CRC-32, never Python's ``hash()``: that one is salted per process, and
every member (and every restart) must agree on who owns what.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from telemetryd.errors import ConfigError
from telemetryd.topics import forward_filter, forward_topic

if TYPE_CHECKING:
    from exporters.mqtt import MqttSession
    from telemetryd.aggregator import Aggregator
    from telemetryd.config import AggregatorConfig

log = logging.getLogger(__name__)


def owner(cluster: str, node: str, members: int) -> int:
    """The member (0 .. members-1) that owns ``node`` of ``cluster``: the same everywhere."""
    if members <= 1:
        return 0
    return zlib.crc32(f"{cluster}/{node}".encode()) % members


def membership_problem(cfg: AggregatorConfig) -> tuple[str, str] | None:
    """(key, what was expected) when ``members``/``member`` cannot work, else None."""
    if cfg.members < 1:
        return "aggregator.members", f"expected 1 or more, got {cfg.members}"
    if not 0 <= cfg.member < cfg.members:
        return ("aggregator.member", f"expected 0 .. {cfg.members - 1} "
                f"(aggregator.members is {cfg.members}), got {cfg.member}")  # fmt: skip
    if cfg.members > 1 and not cfg.shared_group:
        return ("aggregator.members", f"{cfg.members} members need aggregator.shared_group "
                "(the $share group they split)")  # fmt: skip
    if cfg.members > 1 and cfg.mqtt_version != "5":
        # A 3.1.1 PUBACK cannot say "not authorised": a refused forward would look delivered.
        return ("aggregator.mqtt_version", f"expected 5 with aggregator.members above 1, "
                f"got {cfg.mqtt_version}")  # fmt: skip
    return None


@dataclass(frozen=True, slots=True)
class Shard:
    """This aggregator's place in its group; absent (None) when it is alone."""

    group: str
    members: int
    member: int

    @classmethod
    def from_config(cls, cfg: AggregatorConfig) -> Shard | None:
        """The shard of a configuration, None with one member; ConfigError if invalid."""
        problem = membership_problem(cfg)
        if problem is not None:
            raise ConfigError([f"{problem[0]}: {problem[1]}"])
        if cfg.members == 1:
            return None
        return cls(cfg.shared_group, cfg.members, cfg.member)

    def owns(self, cluster: str, node: str) -> bool:
        """Whether this member keeps the state of ``node``."""
        return owner(cluster, node, self.members) == self.member

    def forward_to(self, cluster: str, node: str, original: str) -> str:
        """The topic that hands a message of ``node`` (on ``original``) to its owner."""
        return forward_topic(self.group, owner(cluster, node, self.members), original)

    def filter(self) -> str:
        """What this member subscribes to (not shared): messages forwarded to it."""
        return forward_filter(self.group, self.member)

    def name(self, host: str) -> str:
        """The aggregator's name (fleet summary, alert labels): two members never share it."""
        return f"{host}-m{self.member}"


async def forward(session: MqttSession, messages: list[tuple[str, bytes]]) -> None:
    """Publish each (topic, payload) QoS 1 and return once every PUBACK came back.

    Concurrent: a batch of forwards costs one round trip, not one per message. Any
    failure raises MqttUnavailable before the caller acknowledges the originals.
    """
    await asyncio.gather(*(session.publish(topic, payload) for topic, payload in messages))


def drop_foreign(agg: Aggregator, shard: Shard) -> int:
    """At start-up: forget the state of nodes this member no longer owns; how many.

    After a membership change (members N -> M) some nodes have a new owner. Their fleet
    entries, jobs and alert timers go; their firing alerts are *resolved* (not silently
    forgotten): receivers and the retained ``_alerts`` topics hear the end from the member
    that announced the start, and the new owner fires them again if the condition still
    holds (after its ``for:``). Forgetting them instead would leave pages open forever.
    """
    foreign = [key for key in agg.fleet.nodes if not shard.owns(*key)]
    foreign += [key for key in agg.jobs.by_node if not shard.owns(*key)]
    for key in set(foreign):
        agg.fleet.nodes.pop(key, None)
        agg.jobs.by_node.pop(key, None)
        agg.jobs.latest.pop(key, None)
    if agg.alerts is not None:
        agg.alerts.engine.forget_nodes(lambda c, n: not shard.owns(c, n), time.time_ns())
    if foreign:
        log.info("%d node(s) now owned by another member of %s: their state dropped, "
                 "their firing alerts resolved here", len(set(foreign)), shard.group)  # fmt: skip
    return len(set(foreign))

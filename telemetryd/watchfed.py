"""The national picture: every site's summaries as a viewer sees them on the national broker.

Each site's broker bridges out only its aggregator's retained output, mapped under a
prefix: ``<prefix>/<site>/telemetry/v1/<cluster>/{_fleet,_rollup/<node>,_alerts/...}``
(examples/federation, docs/federation.md). :class:`FederationWatch` splits the site from
the prefix and keeps one :class:`~telemetryd.watch.Watch` per site, so fleet summaries,
alerts, pending alerts and silences are read exactly as a site viewer reads them; the
rollups, which a site viewer has no use for, are kept here per node. As in watch.py this
is data only: ``fedstatus`` and ``fedtop`` are the views.

A raw topic (a report, an event, a presence) under a site's prefix means that site's
bridge sends more than it should: it is counted as a problem and never used.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from exporters.mqtt import MqttSettings
from telemetryd.codec import DecodeError
from telemetryd.names import name_problem
from telemetryd.rollupmodel import Rollup, decode_rollup
from telemetryd.topics import ROOT, parse_rollup_topic
from telemetryd.watch import Watch
from telemetryd.watchfeed import Fed as _Fed
from telemetryd.watchfeed import follow_filters

DEFAULT_PREFIX = "sites"
BRIDGE_STATE = "_bridge/state"  # the site bridge's notification topic (examples/federation)


def prefix_problem(prefix: str) -> str | None:
    """Why ``prefix`` cannot be a federation prefix (levels of names, no wildcards), or None."""
    if not prefix:
        return "is empty; expected topic levels such as 'sites' or 'national/sites'"
    for level in prefix.split("/"):
        problem = name_problem(level)
        if problem:
            return f"level {level!r} {problem}"
    return None


def filters(prefix: str) -> list[str]:
    """What a national viewer subscribes to: every site's summaries and bridge state."""
    return [f"{prefix}/+/{ROOT}/#", f"{prefix}/+/{BRIDGE_STATE}"]


@dataclass
class Site:
    """One site: its aggregators' summaries and alerts (a Watch), its rollups, its bridge."""

    name: str
    watch: Watch
    rollups: dict[tuple[str, str], Rollup] = field(default_factory=dict)
    bridge: str | None = None  # "1" connected, "0" down, None: not reported

    def newest_summary_ns(self) -> int | None:
        """When the newest fleet summary of any of its clusters was made."""
        return max((f.time_ns for f in self.watch.fleets.values()), default=None)

    def clusters(self) -> list[str]:
        """Clusters that have a summary or a rollup."""
        return sorted(set(self.watch.fleets) | {c for c, _ in self.rollups})


class FederationWatch:
    """Every site under ``prefix`` on the national broker; feed it with :meth:`ingest`."""

    def __init__(
        self,
        *,
        prefix: str = DEFAULT_PREFIX,
        silent_after: float = 3.0,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.prefix = prefix
        self.silent_after = silent_after
        self.clock = clock
        self.sites: dict[str, Site] = {}
        self.messages = 0
        self.rejected: Counter[str] = Counter()
        self.last_problem = ""
        self.version = 0
        self.connected = False
        self.connection = "connecting"

    def site(self, name: str) -> Site:
        """The site called ``name``, made on first sight."""
        site = self.sites.get(name)
        if site is None:
            watch = Watch(silent_after=self.silent_after, history=2, clock=self.clock)
            site = self.sites[name] = Site(name, watch)
        return site

    def ingest(self, topic: str, payload: bytes) -> None:
        """Take one message; a bad one is counted with its reason, never raised."""
        self.messages += 1
        head = f"{self.prefix}/"
        if not topic.startswith(head):
            return self._reject("topic", f"{topic}: not under {head}")
        name, _, inner = topic[len(head) :].partition("/")
        problem = name_problem(name)
        if problem:
            return self._reject("topic", f"{topic}: site {name!r} {problem}")
        parts = inner.split("/")
        ours = len(parts) >= 4 and f"{parts[0]}/{parts[1]}" == ROOT and parts[3].startswith("_")
        if inner == BRIDGE_STATE:
            self.site(name).bridge = payload.decode(errors="replace") or None
        elif ours and parts[3] == "_rollup":
            problem = self._rollup(self.site(name), inner, payload)
            if problem:
                return self._reject("payload", f"{topic}: {problem}")
        elif ours:  # the aggregator's summaries, alerts, pending alerts, silences
            watch = self.site(name).watch
            before = sum(watch.rejected.values())
            watch.ingest(inner, payload)
            if sum(watch.rejected.values()) != before:
                return self._reject("payload", f"{name}: {watch.last_problem}")
        else:
            return self._reject("raw", f"{topic}: raw site data on the national broker "
                                "(the site's bridge sends more than its summaries)")  # fmt: skip
        self.version += 1

    @staticmethod
    def _rollup(site: Site, topic: str, payload: bytes) -> str | None:
        """Keep (or, when empty, forget) a node's rollup; the problem, if any."""
        parsed = parse_rollup_topic(topic)
        if isinstance(parsed, str):
            return parsed
        if not payload:
            site.rollups.pop(parsed, None)  # the site forgot the node
            return None
        try:
            rollup = decode_rollup(payload)
        except DecodeError as exc:
            return str(exc)
        if (rollup.cluster, rollup.node) != parsed:
            return f"rollup of {rollup.cluster}/{rollup.node} on this topic"
        site.rollups[parsed] = rollup
        return None

    def _reject(self, reason: str, line: str) -> None:
        self.rejected[reason] += 1
        self.last_problem = line


class Fed(_Fed, Protocol):
    """What :func:`follow` feeds: a FederationWatch, or top's NationalWatch (fedtop.py)."""

    prefix: str


async def follow(
    settings: MqttSettings,
    watch: Fed,
    *,
    stop: asyncio.Event,
    on_message: Callable[[], None] | None = None,
) -> None:
    """Keep ``watch`` fed from the national broker until ``stop``, reconnecting with backoff.

    QoS 0 and a clean session, like a site viewer: the present, never a backlog.
    """
    await follow_filters(settings, watch, filters(watch.prefix), stop=stop,
                         on_message=on_message)  # fmt: skip

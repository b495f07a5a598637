"""``telemetryd top --federation``: the national top, every site's nodes from their rollups.

No new screen: ``top``'s own UI (tui.py) is fed a :class:`NationalWatch`, a
:class:`~telemetryd.watch.Watch` whose clusters are ``<site>/<cluster>`` and whose nodes
are built from rollups instead of reports. A rollup is a per-node aggregate (mean
utilisation, mean power, hottest temperature, peak memory per GPU over the interval), so
every column of top's fleet table and heatmap has a value for it; a node's state is its
site aggregator's verdict at the rollup (offline, silent), shown ``unknown`` once the
rollup is older than three of its intervals (the site or its bridge went quiet).
Alerts, pending alerts and silences come from each site's retained state, their
``cluster`` label prefixed with the site like the nodes, and a ``site`` label added.

The national broker carries no reports, events or processes, so a node's detail view
shows its GPUs' aggregates and nothing more: that raw data stays on its site.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from exporters.mqtt import MqttSettings
from telemetryd.alerting.model import Alert
from telemetryd.codec import DecodeError, convert, to_builtins
from telemetryd.config import TopConfig
from telemetryd.model import FleetNode
from telemetryd.rollupmodel import Rollup
from telemetryd.topics import part_member
from telemetryd.watch import METRICS, GpuState, NodeState, NodeStateName, Watch
from telemetryd.watchfed import BRIDGE_STATE, FederationWatch, follow
from telemetryd.watchwire import ErrorView, GpuSample, Ring, sampled_value

if TYPE_CHECKING:
    from telemetryd.tui import TopApp

STALE_INTERVALS = 3  # a rollup older than this many of its intervals: state unknown


def site_cluster(site: str, cluster: str) -> str:
    """How a site's cluster is named in the national top."""
    return f"{site}/{cluster}"


def sample(gpu_index: int, rollup: Rollup) -> GpuSample:
    """One GPU of a rollup as top's GPU sample: its aggregates stand for the live values."""
    g = next(g for g in rollup.gpus if g.index == gpu_index)
    failed = g.health not in ("ok", "unknown")
    return GpuSample(
        index=g.index, uuid=g.uuid,
        error=ErrorView(code=g.health, message=f"{g.failed} failed reading(s) in the "
                        "interval") if failed else None,
        util_gpu_pct=None if g.util_mean_pct is None else round(g.util_mean_pct),
        temp_c=g.temp_max_c, power_w=g.power_mean_w,
        fb_total_bytes=g.mem_total_bytes, fb_used_bytes=g.mem_used_max_bytes,
    )  # fmt: skip


class NationalWatch(Watch):
    """A Watch of every site under ``prefix``: fed national topics, shown by top's UI."""

    def __init__(
        self,
        *,
        prefix: str,
        silent_after: float = 3.0,
        history: int = 180,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        super().__init__(silent_after=silent_after, history=history, clock=clock)
        self.fed = FederationWatch(prefix=prefix, silent_after=silent_after, clock=clock)
        self.prefix = prefix

    def ingest(self, topic: str, payload: bytes) -> None:
        """Keep the site's state (FederationWatch), then project it into top's picture."""
        self.messages += 1
        fed = self.fed
        refused = sum(fed.rejected.values())
        fed.ingest(topic, payload)
        if sum(fed.rejected.values()) != refused:
            self._reject("national", fed.last_problem)
            return
        site, _, inner = topic[len(self.prefix) + 1 :].partition("/")
        if inner == BRIDGE_STATE:
            return
        parts = inner.split("/")  # telemetry/v1/<cluster>/_<kind>[/...]
        cluster, kind, rest = site_cluster(site, parts[2]), parts[3], parts[4:]
        try:
            if kind == "_rollup":
                self._rollup(site, cluster, rest[0])
            elif kind == "_fleet" and (not rest or part_member(rest) is not None):
                # The site's Watch has merged a group's parts (fleetparts.py) already.
                summary = fed.sites[site].watch.fleets.get(parts[2])
                if summary is not None:
                    self._fleet(cluster, summary)
            elif kind == "_alerts" and len(rest) == 1:
                self._alert(cluster, rest[0], payload)
                alert = self.firing.get((cluster, rest[0]))
                if alert is not None:
                    alert.labels["site"] = site
                    alert.labels["cluster"] = site_cluster(site, alert.labels.get("cluster", ""))
            elif kind == "_pending" and not rest:
                self._set_pending(cluster, payload)
            elif kind == "_pending" and part_member(rest) is not None:
                merged = fed.sites[site].watch.pending.get(parts[2])
                if merged is not None:
                    self.pending[cluster] = merged
                else:
                    self.pending.pop(cluster, None)
                self.alerts_version += 1
            elif kind == "_silences" and not rest:
                self._set_silences(cluster, payload)
            else:
                return
        except DecodeError as exc:
            self._reject("payload", f"{topic}: {exc}")
            return
        self.version += 1

    def _rollup(self, site: str, cluster: str, node: str) -> None:
        rollup = self.fed.sites[site].rollups.get((cluster.split("/", 1)[1], node))
        if rollup is None:
            self.nodes.pop((cluster, node), None)
            return
        state = self._node(cluster, node)
        state.fleet = FleetNode(node=node, state=rollup.state, last_seen_ns=rollup.last_seen_ns,
                                gpus=len(rollup.gpus))  # fmt: skip
        state.jobs = tuple(rollup.jobs)
        for g in rollup.gpus:
            s = sample(g.index, rollup)
            gpu = state.gpus.get(g.index)
            if gpu is None:
                gpu = state.gpus[g.index] = GpuState(s, {m: Ring(self.history) for m in METRICS})
            gpu.sample = s
            for metric, ring in gpu.rings.items():
                ring.push(sampled_value(s, metric))
        for index in set(state.gpus) - {g.index for g in rollup.gpus}:
            del state.gpus[index]
        if isinstance(state, RollupNode):
            state.made_ns, state.interval_ns = rollup.time_ns, rollup.time_ns - rollup.start_ns

    def silenced_by(self, alert: Alert, now_ns: int | None = None) -> list[str]:
        """Asked of the alert's own site, where its labels are as the silences expect."""
        site = self.fed.sites.get(alert.labels.get("site", ""))
        if site is None:
            return []
        same = [a for (_, fp), a in site.watch.firing.items() if fp == alert.fingerprint]
        return site.watch.silenced_by(same[0], now_ns) if same else []

    def _node(self, cluster: str, node: str) -> NodeState:
        state = self.nodes.get((cluster, node))
        if state is None:
            state = self.nodes[(cluster, node)] = RollupNode(cluster, node)
        return state


@dataclass
class RollupNode(NodeState):
    """A node known from its rollups: the site's verdict until the rollup is too old."""

    made_ns: int = 0  # when its newest rollup was made
    interval_ns: int = 0  # the interval that rollup covered

    def state(self, now_ns: int, silent_after: float) -> NodeStateName:
        """The site aggregator's verdict, or unknown once the rollup is stale."""
        if self.made_ns and now_ns - self.made_ns > STALE_INTERVALS * self.interval_ns:
            return "unknown"
        return super().state(now_ns, silent_after)


def app(cfg: TopConfig, settings: MqttSettings, prefix: str) -> TopApp:
    """The app of top, fed from the national broker's site prefixes, not one site's tree."""
    from telemetryd.tui import TopApp

    class NationalTop(TopApp):
        async def _follow(self) -> None:
            assert isinstance(self.live, NationalWatch)
            await follow(self.mqtt(), self.live, stop=self._stop)

    # Read-only: silence requests never cross a bridge; a silence is added at its site.
    cfg = convert({**to_builtins(cfg), "allow_silence": False}, TopConfig)
    watch = NationalWatch(prefix=prefix, silent_after=cfg.silent_after, history=cfg.history)
    return NationalTop(cfg, settings=settings, watch=watch,
                       title=f"telemetryd top --federation ({prefix}/)")  # fmt: skip


def main(cfg: TopConfig, settings: MqttSettings, prefix: str) -> int:
    """The CLI's entry: run the national top; the exit code."""
    from telemetryd.logcapture import logs_into

    national = app(cfg, settings, prefix)
    with logs_into(national.live.note):
        national.run()
    return national.return_code or 0

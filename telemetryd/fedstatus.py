"""``telemetryd status --federation``: every site once, from the national broker.

Everything a site bridges out is retained, so the answer needs no report: connect,
subscribe to ``<prefix>/+/telemetry/v1/#``, let the retained state arrive (it is over
after SETTLE_S without a retained message, or at ``--wait``), and answer one line per
site: clusters, nodes (online/total), GPUs (failed), firing alerts, and the age of the
site's newest fleet summary, which is what says whether the site's aggregator and bridge
still work.

Exit codes, for scripts: 0 every site fresh and nothing firing; 1 an alert fires (not
silenced) somewhere; 3 a site's newest summary is older than ``--stale`` seconds, or a site
has none, or no site is there at all (3 wins over 1: the alert state of a stale site is
unknown); 2 bad usage or an unreachable broker (the CLI's part).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time

from exporters.mqtt import MqttSession, MqttSettings, MqttUnavailable
from telemetryd.codec import Struct, field
from telemetryd.status import BrokerUnreachable, iso
from telemetryd.watchfed import FederationWatch, Site, filters

SETTLE_S = 0.3
STALE_S = 60.0
EXIT_FIRING = 1
EXIT_STALE = 3


class FiringAlert(Struct, kw_only=True):
    """One firing alert, with its site."""

    site: str
    name: str
    severity: str
    cluster: str | None = None
    node: str | None = None
    gpu: str | None = None
    summary: str = ""


class SiteLine(Struct, kw_only=True):
    """One site at a glance."""

    site: str
    clusters: list[str]
    nodes: int = 0
    online: int = 0
    gpus: int = 0
    gpus_failed: int = 0
    firing: int = 0
    silenced: int = 0
    rollups: int = 0  # nodes with a rollup (0: the site's rollup_interval is 0, or none yet)
    summary: str | None = None  # time of the newest fleet summary (UTC)
    summary_age_s: float | None = None
    stale: bool = True
    bridge: str | None = None  # "up", "down", or None when the bridge does not say


class FederationDoc(Struct, kw_only=True):
    """The answer of ``status --federation --json``."""

    schema: int = 1
    generated: str
    broker: str
    prefix: str
    stale_after_s: float
    sites: list[SiteLine] = field(default_factory=list)
    firing: list[FiringAlert] = field(default_factory=list)
    exit_code: int = 0
    warnings: list[str] = field(default_factory=list)


async def gather(settings: MqttSettings, prefix: str, wait_s: float) -> FederationWatch:
    """Connect once and take the retained state until it settles or ``wait_s`` passed."""
    watch = FederationWatch(prefix=prefix)
    settings = dataclasses.replace(settings, timeout=min(settings.timeout, max(wait_s, 2.0)))
    loop = asyncio.get_running_loop()
    try:
        async with MqttSession(settings) as session:
            await session.subscribe(filters(prefix), qos=0)
            last = loop.time()
            deadline = last + wait_s

            async def read() -> None:
                nonlocal last
                async for message in session.messages():
                    watch.ingest(message.topic, message.payload)
                    if message.retain:
                        last = loop.time()

            reader = asyncio.create_task(read(), name="fedstatus.read")
            try:
                while not reader.done():
                    now = loop.time()
                    if now - last >= SETTLE_S or now >= deadline:
                        break
                    await asyncio.wait({reader}, timeout=min(last + SETTLE_S, deadline) - now)
                if reader.done():
                    reader.result()
                    raise MqttUnavailable("the connection closed")
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, MqttUnavailable):
                    await reader
    except MqttUnavailable as exc:
        text = str(exc)
        if str(settings.broker) not in text:
            text = f"broker {settings.broker}: {text}"
        raise BrokerUnreachable(text) from None
    return watch


def _site_line(site: Site, now_ns: int, stale_s: float, firing: list[FiringAlert]) -> SiteLine:
    watch = site.watch
    line = SiteLine(site=site.name, clusters=site.clusters(), rollups=len(site.rollups))
    summarised = set()
    for cluster, fleet in watch.fleets.items():  # the aggregator's own verdict, per node
        summarised.add(cluster)
        for node in fleet.nodes:
            line.nodes += 1
            line.online += node.state == "online"
            line.gpus += node.gpus
            line.gpus_failed += node.gpus_failed
    for (cluster, _), rollup in site.rollups.items():  # a cluster without a summary yet
        if cluster not in summarised:
            line.nodes += 1
            line.online += rollup.state == "online"
            line.gpus += len(rollup.gpus)
            line.gpus_failed += sum(g.health not in ("ok", "unknown") for g in rollup.gpus)
    for alert in watch.firing_alerts():
        if watch.silenced_by(alert, now_ns):
            line.silenced += 1
            continue
        line.firing += 1
        labels = alert.labels
        firing.append(FiringAlert(site=site.name, name=alert.name, severity=alert.severity,
                                  cluster=labels.get("cluster"), node=labels.get("node"),
                                  gpu=labels.get("gpu"),
                                  summary=alert.annotations.get("summary", "")))  # fmt: skip
    newest = site.newest_summary_ns()
    if newest is not None:
        line.summary = iso(newest)
        line.summary_age_s = round(max(0.0, (now_ns - newest) / 1e9), 1)
        line.stale = line.summary_age_s > stale_s
    line.bridge = {"1": "up", "0": "down"}.get(site.bridge or "")
    return line


def summarize(
    watch: FederationWatch, now_ns: int, *, broker: str = "", stale_s: float = STALE_S
) -> FederationDoc:
    """Every site at ``now_ns`` (pure: the same watch, the same answer)."""
    doc = FederationDoc(generated=iso(now_ns), broker=broker, prefix=watch.prefix,
                        stale_after_s=stale_s)  # fmt: skip
    for name in sorted(watch.sites):
        doc.sites.append(_site_line(watch.sites[name], now_ns, stale_s, doc.firing))
    doc.firing.sort(key=lambda a: (a.site, a.severity != "critical", a.name, a.node or ""))
    where = f"on {broker}" if broker else "on the national broker"
    if not doc.sites:
        doc.warnings.append(f"no site under {watch.prefix}/ {where}: is a site's bridge "
                            "connected, and is --prefix right?")  # fmt: skip
    for s in doc.sites:
        if s.summary is None:
            doc.warnings.append(f"site {s.site}: no fleet summary: its aggregator or its "
                                "bridge is not running; its alerts are unknown")  # fmt: skip
        elif s.stale:
            doc.warnings.append(f"site {s.site}: newest fleet summary is {s.summary_age_s:.0f} "
                                f"s old (over {stale_s:g} s): its aggregator or bridge may be "
                                "down")  # fmt: skip
        if s.bridge == "down":
            doc.warnings.append(f"site {s.site}: its bridge says it is disconnected")
    if watch.rejected:
        doc.warnings.append(f"{sum(watch.rejected.values())} message(s) could not be used; "
                            f"the last: {watch.last_problem}")  # fmt: skip
    if not doc.sites or any(s.stale for s in doc.sites):
        doc.exit_code = EXIT_STALE
    elif doc.firing:
        doc.exit_code = EXIT_FIRING
    return doc


async def status(
    settings: MqttSettings, prefix: str, wait_s: float, stale_s: float
) -> FederationDoc:
    """Gather, then summarise at the moment the gathering ended."""
    watch = await gather(settings, prefix, wait_s)
    return summarize(watch, time.time_ns(), broker=str(settings.broker), stale_s=stale_s)


def render(doc: FederationDoc) -> str:
    """The answer for a person: one line per site, then the firing alerts and warnings."""
    head = ("SITE", "CLUSTERS", "NODES", "ONLINE", "GPUS", "FAILED", "FIRING", "SUMMARY AGE")
    rows = [head] + [
        (s.site, ",".join(s.clusters) or "-", str(s.nodes), str(s.online), str(s.gpus),
         str(s.gpus_failed), str(s.firing),
         "none" if s.summary_age_s is None else f"{s.summary_age_s:.0f}s"
         + (" STALE" if s.stale else ""))
        for s in doc.sites
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if doc.firing:
        lines.append("")
        lines.append(f"FIRING ({len(doc.firing)})")
        for a in doc.firing:
            where = "/".join(p for p in (a.cluster, a.node) if p) or "-"
            gpu = f" gpu {a.gpu}" if a.gpu else ""
            lines.append(f"  {a.site:<10} {a.severity:<8} {a.name:<24} {where}{gpu}  {a.summary}")
    lines += [f"warning: {w}" for w in doc.warnings]
    return "\n".join(lines)

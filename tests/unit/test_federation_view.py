"""The national viewers' data side: sites from prefixes, status lines, top rows from rollups."""

from __future__ import annotations

from telemetryd import fedstatus, topview
from telemetryd.alerting.model import Alert, fingerprint
from telemetryd.alerting.wire import SilenceInfo, Silences
from telemetryd.codec import encode_json
from telemetryd.fedtop import NationalWatch
from telemetryd.model import FleetNode, FleetSummary
from telemetryd.rollupmodel import Rollup, RollupGpu
from telemetryd.watchfed import FederationWatch, filters, prefix_problem

S = 1_000_000_000
NOW = 1_800_000_000 * S


def rollup(node: str, *, cluster: str = "c1", made: int = NOW - S, lost: bool = False) -> bytes:
    gpus = [
        RollupGpu(index=0, uuid="GPU-0", health="ok", samples=6, util_mean_pct=80.0,
                  util_max_pct=90, power_mean_w=300.0, temp_max_c=70.0,
                  mem_used_max_bytes=40 << 30, mem_total_bytes=80 << 30, energy_mj=18_000_000),
        RollupGpu(index=1, uuid="GPU-1", health="gpu_lost" if lost else "ok", samples=6,
                  failed=6 if lost else 0, util_mean_pct=None if lost else 20.0,
                  power_mean_w=None if lost else 100.0, temp_max_c=None if lost else 50.0),
    ]  # fmt: skip
    return encode_json(Rollup(schema=1, cluster=cluster, node=node, time_ns=made,
                              start_ns=made - 60 * S, state="online", reports=6,
                              last_seen_ns=made - S, gpus=gpus, jobs=["81234"]))  # fmt: skip


def summary(nodes: list[str], made: int = NOW - 2 * S) -> bytes:
    return encode_json(FleetSummary(
        schema=1, cluster="c1", time_ns=made, aggregator="agg-1",
        nodes=[FleetNode(node=n, state="online", gpus=2, gpus_failed=int(n == "n2"))
               for n in nodes],
    ))  # fmt: skip


def alert(node: str) -> tuple[str, bytes]:
    labels = {"alertname": "GpuLost", "severity": "critical", "cluster": "c1", "node": node,
              "gpu": "1"}  # fmt: skip
    fp = fingerprint(labels)
    return fp, encode_json(Alert(fingerprint=fp, status="firing", labels=labels,
                                 annotations={"summary": "GPU 1 fell off the bus"},
                                 fired_ns=NOW - 10 * S))  # fmt: skip


def feed(watch: FederationWatch | NationalWatch, prefix: str = "sites") -> None:
    fp, payload = alert("n2")
    for topic, data in [
        ("site-a/telemetry/v1/c1/_fleet", summary(["n1", "n2"])),
        ("site-a/telemetry/v1/c1/_rollup/n1", rollup("n1")),
        ("site-a/telemetry/v1/c1/_rollup/n2", rollup("n2", lost=True)),
        (f"site-a/telemetry/v1/c1/_alerts/{fp}", payload),
        ("site-a/_bridge/state", b"1"),
        ("site-b/telemetry/v1/c1/_fleet", summary(["n1"], made=NOW - 600 * S)),
        ("site-b/telemetry/v1/c1/_rollup/n1", rollup("n1", made=NOW - 600 * S)),
    ]:
        watch.ingest(f"{prefix}/{topic}", data)


def test_sites_come_from_the_prefix_and_raw_data_is_refused() -> None:
    watch = FederationWatch(prefix="national/sites", clock=lambda: NOW)
    feed(watch, "national/sites")
    assert sorted(watch.sites) == ["site-a", "site-b"] and not watch.rejected
    a = watch.sites["site-a"]
    assert sorted(a.rollups) == [("c1", "n1"), ("c1", "n2")] and a.bridge == "1"
    assert a.clusters() == ["c1"] and a.newest_summary_ns() == NOW - 2 * S
    watch.ingest("national/sites/site-a/telemetry/v1/c1/_rollup/n1", b"")  # forgotten
    assert sorted(a.rollups) == [("c1", "n2")]
    watch.ingest("national/sites/site-a/telemetry/v1/c1/n1/report", b"{}")
    assert "raw site data on the national broker" in watch.last_problem
    for topic in ("elsewhere/x", "national/sites/_x/telemetry/v1/c1/_fleet"):
        watch.ingest(topic, b"{}")
    assert watch.rejected == {"raw": 1, "topic": 2}
    watch.ingest("national/sites/site-a/telemetry/v1/c1/_rollup/n3", rollup("n1"))
    assert "rollup of c1/n1" in watch.last_problem
    assert filters("sites") == ["sites/+/telemetry/v1/#", "sites/+/_bridge/state"]
    assert prefix_problem("sites") is None and prefix_problem("national/sites") is None
    assert "'+'" in str(prefix_problem("a/+")) and prefix_problem("") is not None


def test_status_lines_per_site_and_exit_codes() -> None:
    watch = FederationWatch(clock=lambda: NOW)
    feed(watch)
    doc = fedstatus.summarize(watch, NOW, broker="mqtt://national:1883", stale_s=60)
    a, b = doc.sites
    assert (a.site, a.nodes, a.online, a.gpus, a.gpus_failed, a.firing, a.rollups) == (
        "site-a", 2, 2, 4, 1, 1, 2)  # fmt: skip
    assert (a.summary_age_s, a.stale, a.bridge) == (2.0, False, "up")
    assert (b.site, b.stale, b.summary_age_s, b.firing) == ("site-b", True, 600.0, 0)
    assert doc.exit_code == fedstatus.EXIT_STALE
    assert [(f.site, f.name, f.node) for f in doc.firing] == [("site-a", "GpuLost", "n2")]
    text = fedstatus.render(doc)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["SITE", "CLUSTERS", "NODES"]
    assert lines[1].split() == ["site-a", "c1", "2", "2", "4", "1", "1", "2s"]
    assert lines[2].split()[-2:] == ["600s", "STALE"]
    assert "GpuLost" in text and "warning: site site-b: newest fleet summary is 600 s old" in text

    fresh = fedstatus.summarize(watch, NOW, stale_s=3600)
    assert fresh.exit_code == fedstatus.EXIT_FIRING
    silences = Silences(time_ns=NOW, silences=[SilenceInfo(
        id="s1", matchers=['node="n2"'], starts_ns=NOW - S, ends_ns=NOW + 60 * S,
        created_by="op", comment="")])  # fmt: skip
    watch.ingest("sites/site-a/telemetry/v1/c1/_silences", encode_json(silences))
    quiet = fedstatus.summarize(watch, NOW, stale_s=3600)
    assert quiet.exit_code == 0 and quiet.sites[0].silenced == 1 and not quiet.firing
    empty = fedstatus.summarize(FederationWatch(), NOW)
    assert empty.exit_code == fedstatus.EXIT_STALE and "no site under sites/" in empty.warnings[0]


def test_national_top_rows_come_from_rollups() -> None:
    watch = NationalWatch(prefix="sites", clock=lambda: NOW)
    feed(watch)
    rows = {r.key: r for r in topview.build_rows(watch, NOW)}
    assert sorted(rows) == ["site-a/c1/n1", "site-a/c1/n2", "site-b/c1/n1"]
    n1, n2 = rows["site-a/c1/n1"], rows["site-a/c1/n2"]
    assert (n1.state, n1.gpus, n1.failed, n1.util, n1.power, n1.temp) == (
        "online", 2, 0, 50.0, 400.0, 70.0)  # fmt: skip
    assert n1.mem == 50.0 and n1.jobs == ("81234",) and n1.seen_s == 2.0
    assert (n2.failed, n2.alerts, n2.severity) == (1, 1, "critical")
    assert rows["site-b/c1/n1"].state == "unknown"  # its rollup is 10 intervals old
    (fired,) = watch.firing_alerts()
    assert fired.labels["site"] == "site-a" and fired.labels["cluster"] == "site-a/c1"
    watch.ingest("sites/site-a/telemetry/v1/c1/_rollup/n1", b"")
    assert ("site-a/c1", "n1") not in watch.nodes
    watch.ingest("sites/site-a/telemetry/v1/c1/n1/report", b"{}")
    assert watch.rejected == {"national": 1} and "raw site data" in watch.last_problem


def test_national_top_merges_a_sites_group_parts() -> None:
    # A site with two aggregators in a $share group (docs/sharing.md) publishes parts.
    from telemetryd.alerting.wire import PendingAlerts

    watch = NationalWatch(prefix="sites", clock=lambda: NOW)
    watch.ingest("sites/site-a/telemetry/v1/c1/_fleet/part/0", summary(["n1"]))
    watch.ingest("sites/site-a/telemetry/v1/c1/_fleet/part/1", summary(["n2", "n3"]))
    assert watch.rejected == {}
    fleet = watch.fleets["site-a/c1"]
    assert [n.node for n in fleet.nodes] == ["n1", "n2", "n3"]
    fp, _ = alert("n2")
    hot = Alert(fingerprint=fp, status="firing", labels={"alertname": "GpuLost", "node": "n2",
                "severity": "critical", "cluster": "c1"})  # fmt: skip
    pending = PendingAlerts(time_ns=NOW, alerts=[hot])
    watch.ingest("sites/site-a/telemetry/v1/c1/_pending/part/1", encode_json(pending))
    assert [a.fingerprint for a in watch.pending["site-a/c1"].alerts] == [fp]
    watch.ingest("sites/site-a/telemetry/v1/c1/_pending/part/1", b"")
    assert "site-a/c1" not in watch.pending

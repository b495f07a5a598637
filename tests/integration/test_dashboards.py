"""Every dashboard query run against real servers holding realistic fleet data.

InfluxDB: reports of three 8-GPU nodes (two clusters) over five minutes, with a throttled
GPU, a GPU that falls off the bus, XIDs and other events, an energy counter reset by a
driver reload, host power and sensors, go through the real 1.x sink into the real
InfluxDB 1.x of the ``influxdb`` fixture. Then every panel query and template variable
query runs with Grafana's macros substituted as Grafana does; none may error, every one
must return data, and the fleet numbers must be the ones the reports imply.

Prometheus: every PromQL expression parses (``promtool check rules``), and a real
Prometheus, given samples of every name in ``PROMETHEUS_NAMES`` through
``promtool tsdb create-blocks-from openmetrics``, answers every panel query with data.
The samples stand in for the aggregator's /metrics (exporters/prometheus.py), which is
tested against Prometheus on its own.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import subprocess
import time
from collections import defaultdict

import msgspec
import pytest

from exporters.influxdb import InfluxV1Sink
from telemetryd.config import InfluxConfig
from telemetryd.model import (
    Event,
    Gpu,
    GpuError,
    Host,
    PowerZone,
    Report,
    Sensor,
    SourceError,
    decode_report,
)
from telemetryd.urls import parse_sink_url
from tests.integration.prometheus import Prometheus, promtool_binary
from tests.reports import sampled
from tests.unit.test_dashboards import (
    INFLUX,
    PROMETHEUS,
    PROMETHEUS_NAMES,
    load,
    prometheus_queries,
    targets,
    variables,
)

pytestmark = pytest.mark.integration

DATABASE = "telemetry"
INTERVAL_NS = 10_000_000_000
REPORTS = 30  # per node: five minutes
NODES = [("c1", "n1"), ("c1", "n2"), ("c2", "n3")]
THROTTLED = {("n1", 1): ["sw_power_cap"], ("n2", 5): ["sw_thermal", "hw_thermal"]}
# throttled for over two minutes, earlier: every throttling reason has a whole 1m interval
EARLIER = {("n1", 7): ["hw_slowdown", "hw_power_brake"], ("n2", 6): ["board_limit", "reliability"]}
LOST = ("n2", 3)  # falls off the bus for the last three reports
RECOVERED = ("n1", 4)  # times out for three reports a minute ago, then reads again
RESET = ("n2", 0)  # energy counter reset (driver reload) at report 20
MJ_PER_KWH = 3_600_000_000


# -- realistic reports ---------------------------------------------------------------------
def _gpu(g: Gpu, node: str, k: int, energy: dict[tuple[str, int], int]) -> Gpu:
    key = (node, g.index)
    if key == LOST and k >= REPORTS - 3:
        return Gpu(index=g.index, uuid=g.uuid, pci_bus_id=g.pci_bus_id, name=g.name,
                   driver=g.driver, error=GpuError(code="gpu_lost", message=(
                       "nvmlDeviceGetClockInfo: GPU is lost (fell off the bus); treat as XID 79"
                   )))  # fmt: skip
    if key == RECOVERED and REPORTS - 9 <= k < REPORTS - 6:
        timeout = GpuError(code="timeout", message="no answer in 5 s")
        return Gpu(index=g.index, uuid=g.uuid, pci_bus_id=g.pci_bus_id, name=g.name,
                   driver=g.driver, error=timeout)  # fmt: skip
    util = g.util_gpu_pct or 0
    power = (g.power_w or 0.0) + (k % 5) * 3.5
    energy[key] = 1_000 if key == RESET and k == 20 else energy[key] + int(power * 10_000)
    busy = util > 0
    return msgspec.structs.replace(
        g,
        power_w=power,
        energy_mj=energy[key],
        sm_active_pct=util * 0.9,
        sm_occupancy_pct=util * 0.4,
        tensor_active_pct=util * 0.6,
        dram_active_pct=util * 0.5,
        gr_engine_active_pct=float(util),
        pcie_tx_bytes_per_s=2.0e9 if busy else 1.0e5,
        pcie_rx_bytes_per_s=6.0e9 if busy else 1.0e5,
        pcie_replay_total=k * 2 if key == ("n1", 3) else 0,
        nvlink_tx_bytes=(g.nvlink_tx_bytes or 0) + k * 40_000_000_000,
        nvlink_rx_bytes=(g.nvlink_rx_bytes or 0) + k * 38_000_000_000,
        nvlink_crc_flit_errors=k if key == ("n1", 6) else 0,
        ecc_sbe_volatile=k // 4 if key == ("n1", 2) else 0,
        throttle_power_ns=k * 5_000_000_000 if key == ("n1", 1) else 0,
        throttle_thermal_ns=k * 7_000_000_000 if key == ("n2", 5) else 0,
        clock_event_reasons=THROTTLED.get(key)
        or (EARLIER.get(key) if 2 <= k < 16 else None)
        or g.clock_event_reasons,
        sm_clock_mhz=1_755 if key in THROTTLED else g.sm_clock_mhz,
    )


def _host(k: int, node_index: int) -> Host:
    zones = [("intel-rapl:0", "package-0", 210.0), ("intel-rapl:1", "package-1", 195.0),
             ("intel-rapl:0:0", "core", 150.0), ("intel-rapl:0:1", "dram", 24.0)]  # fmt: skip
    return Host(
        cpu_pct=30.0 + k % 7, cpu_core_pct=[25.0, 35.0, 40.0, 20.0], cpu_count=4,
        load_1=3.5, load_5=3.1, load_15=2.8,
        mem_total_bytes=2_199_023_255_552, mem_available_bytes=1_500_000_000_000,
        mem_used_bytes=650_000_000_000 + node_index * 1_000_000_000,
        uptime_s=86_400.0 + k * 10,
        power=[PowerZone(zone=z, name=n, energy_uj=int(w * 1e7 * (k + 1)), power_w=w + k % 3)
               for z, n, w in zones],
        sensors=[Sensor(chip="coretemp", label="Package id 0", temp_c=55.0 + k % 4,
                        high_c=84.0, crit_c=100.0),
                 Sensor(chip="nvme", label="Composite", temp_c=41.0)],
    )  # fmt: skip


def _events(node: str, gpus: list[Gpu], k: int, t: int) -> list[Event]:
    uuid = {g.index: g.uuid for g in gpus}
    events = []
    if node == "n1" and k == 8:
        events.append(Event(time_ns=t - 3_000_000_000, kind="xid", gpu_index=0, uuid=uuid[0],
                            code=13, name="RC_GR_EXCEPTION", severity="warning",
                            message="Graphics engine exception",
                            action="check the application; no action if isolated"))  # fmt: skip
    if node == "n1" and k == 5:
        events.append(Event(time_ns=t - 1_000_000_000, kind="ecc_sbe", gpu_index=2,
                            uuid=uuid[2], severity="info",
                            message="Single-bit ECC error"))  # fmt: skip
    if node == LOST[0] and k == REPORTS - 3:
        lost = LOST[1]
        events += [
            Event(time_ns=t - 2_000_000_000, kind="xid", gpu_index=lost, uuid=uuid[lost],
                  code=79, name="RC_GPU_HAS_FALLEN_OFF_THE_BUS", severity="critical",
                  message="GPU has fallen off the bus", action="drain the node; reset or reboot"),
            Event(time_ns=t, kind="gpu_lost", gpu_index=lost, uuid=uuid[lost],
                  severity="critical", message="GPU is lost", action="drain the node"),
        ]  # fmt: skip
    return events


def fleet(now_ns: int) -> list[Report]:
    """Every node's reports, oldest first; the newest at ``now_ns``."""
    base = decode_report(sampled())
    energy: dict[tuple[str, int], int] = defaultdict(int)
    for _, node in NODES:
        for g in base.gpus:
            energy[(node, g.index)] = g.energy_mj or 0
    reports = []
    for k in range(REPORTS):
        t = now_ns - (REPORTS - 1 - k) * INTERVAL_NS
        for i, (cluster, node) in enumerate(NODES):
            gpus = [_gpu(g, node, k, energy) for g in base.gpus]
            agent = msgspec.structs.replace(base.agent, events_dropped=3 if k > 20 else None)
            errors = [SourceError(source="hwmon", message="no input could be read")]
            reports.append(msgspec.structs.replace(
                base, cluster=cluster, node=node, boot_id=f"{i + 1:032x}", seq=k, time_ns=t,
                gpus=gpus, host=_host(k, i), events=_events(node, base.gpus, k, t),
                errors=errors if node == "n1" and k == 12 else [], agent=agent,
            ))  # fmt: skip
    return reports


def expected_energy_kwh(reports: list[Report], bucket_ns: int) -> dict[str, float]:
    """kWh per node as the dashboard computes it: non-negative steps of each bucket's last."""
    last: dict[tuple[str, int], dict[int, int]] = defaultdict(dict)
    for r in reports:
        for g in r.gpus:
            if g.energy_mj is not None:
                last[(r.node, g.index)][r.time_ns // bucket_ns] = g.energy_mj
    out: dict[str, float] = defaultdict(float)
    for (node, _), buckets in last.items():
        values = [buckets[b] for b in sorted(buckets)]
        out[node] += sum(max(b - a, 0) for a, b in itertools.pairwise(values))
    return {node: mj / MJ_PER_KWH for node, mj in out.items()}


# -- Grafana's macro substitution ------------------------------------------------------------
def grafana_regex(values: list[str]) -> str:
    """A variable inside ``/^$x$/``: one value escaped, several as ``(a|b)``."""
    escaped = [re.escape(v).replace("/", "\\/") for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def influx_substitute(query: str, scope: dict[str, str]) -> str:
    for name in sorted(scope, key=len, reverse=True):
        query = query.replace(f"${name}", scope[name])
    assert "$" not in re.sub(r"\$[/)]", "", query), f"unsubstituted variable in {query}"
    return query


def influx_scope(start_ns: int, end_ns: int, clusters, nodes, gpus) -> dict[str, str]:
    return {
        "timeFilter": f"time >= {start_ns // 1_000_000}ms and time <= {end_ns // 1_000_000}ms",
        "__interval": "1m",
        "cluster": grafana_regex(clusters),
        "node": grafana_regex(nodes),
        "gpu": grafana_regex(gpus),
        "window": "2m",
    }


def series_of(server, query: str) -> list[dict]:
    """Every series of one InfluxQL SELECT; an error fails the test with the query."""
    return server.query(query, DATABASE)


def one_value(server, query: str) -> float:
    series = series_of(server, query)
    assert len(series) == 1 and len(series[0]["values"]) == 1, (query, series)
    return series[0]["values"][0][1]


def panel_query(dashboard: dict, title: str, ref: str = "A") -> str:
    matches = [
        t["query"] for p, t in targets(dashboard) if p["title"] == title and t["refId"] == ref
    ]
    assert len(matches) == 1, f"one panel {title!r} with a query {ref}"
    return matches[0]


@pytest.fixture
def filled_influxdb(influxdb):
    """The real InfluxDB with the fleet written through the real 1.x sink."""
    influxdb.create_database(DATABASE)
    now_ns = time.time_ns()
    reports = fleet(now_ns)
    sink = InfluxV1Sink(parse_sink_url(influxdb.sink_url(DATABASE)), InfluxConfig())

    async def write() -> None:
        await sink.open()
        try:
            for start in range(0, len(reports), 25):
                await sink.write(reports[start : start + 25])
        finally:
            await sink.close()

    asyncio.run(write())
    assert sink.line_stats.lines_set_aside == 0
    start_ns = now_ns - REPORTS * INTERVAL_NS
    return influxdb, reports, start_ns, now_ns + 1_000_000_000


def test_every_influxql_query_runs_and_returns_data(filled_influxdb):
    server, _, start_ns, end_ns = filled_influxdb
    dash = load(INFLUX)
    gpus = [str(i) for i in range(8)]
    scopes = {
        "one cluster, one node": influx_scope(start_ns, end_ns, ["c1"], ["n1"], gpus),
        "every cluster, several nodes": influx_scope(
            start_ns, end_ns, ["c1", "c2"], ["n1", "n2", "n3"], ["0", "3", "5"]
        ),
    }
    for name, scope in scopes.items():
        empty = []
        for panel, target in targets(dash):
            interval = {"__interval": panel.get("interval", scope["__interval"])}
            query = influx_substitute(target["query"], {**scope, **interval})
            series = series_of(server, query)  # raises with InfluxDB's error
            if not any(s.get("values") for s in series):
                empty.append(f"{panel['title']!r} {target['refId']}: {query}")
        assert not empty, f"{name}: queries without data:\n" + "\n".join(empty)


def test_template_variables_list_what_was_written(filled_influxdb):
    server, *_ = filled_influxdb
    found = variables(load(INFLUX))
    scope = {"cluster": grafana_regex(["c1"]), "node": grafana_regex(["n1", "n2"])}

    def values(name: str) -> set[str]:
        query = influx_substitute(found[name]["query"], scope)
        return {v[1] for s in series_of(server, query) for v in s["values"]}

    assert values("cluster") == {"c1", "c2"}
    assert values("node") == {"n1", "n2"}
    assert values("gpu") == {str(i) for i in range(8)}


def test_fleet_numbers_are_the_ones_the_reports_imply(filled_influxdb):
    server, reports, start_ns, end_ns = filled_influxdb
    dash = load(INFLUX)
    scope = influx_scope(start_ns, end_ns, ["c1"], ["n1", "n2"], [str(i) for i in range(8)])

    def stat(title: str, ref: str = "A") -> float:
        return one_value(server, influx_substitute(panel_query(dash, title, ref), scope))

    c1 = [r for r in reports if r.cluster == "c1"]
    latest: dict[tuple[str, int], Gpu] = {}
    for r in c1:
        for g in r.gpus:
            if g.power_w is not None:
                latest[(r.node, g.index)] = g
    assert stat("GPUs reporting") == 16
    assert stat("Nodes reporting") == 2
    assert stat("GPUs throttled") == len(THROTTLED)  # gpu_idle is not throttling
    assert stat("GPUs in error") == 1  # the one that recovered a minute ago is not counted
    assert stat("XID events") == 2
    assert stat("GPU power now") == pytest.approx(sum(g.power_w for g in latest.values()) / 1000)
    assert stat("Mean GPU utilisation") == pytest.approx(
        sum(g.util_gpu_pct for g in latest.values()) / len(latest)
    )
    energy = expected_energy_kwh(c1, 60_000_000_000)
    assert stat("GPU energy today") == pytest.approx(sum(energy.values()))
    table = influx_substitute(panel_query(dash, "GPU energy per node over the time range"), scope)
    by_node = {s["tags"]["node"]: s["values"][0][1] for s in series_of(server, table)}
    assert by_node == pytest.approx(energy)

    errors = influx_substitute(panel_query(dash, "GPUs in error: latest message"), scope)
    [lost] = series_of(server, errors)
    assert (lost["tags"]["node"], lost["tags"]["gpu"]) == (LOST[0], str(LOST[1]))
    error = [r for r in reports if r.node == LOST[0]][-1].gpus[LOST[1]].error
    assert lost["values"][0][1:] == [error.code, error.message]
    throttled = influx_substitute(panel_query(dash, "GPUs throttled: reasons"), scope)
    assert {(s["tags"]["node"], int(s["tags"]["gpu"])): s["values"][0][1]
            for s in series_of(server, throttled)} == {
        key: ",".join(names) for key, names in THROTTLED.items()
    }  # fmt: skip
    xids = influx_substitute(panel_query(dash, "XID event log"), scope)
    rows = [dict(zip(s["columns"], v, strict=True)) for s in series_of(server, xids)
            for v in s["values"]]  # fmt: skip
    newest_first = [("n2", "3", "79"), ("n1", "0", "13")]
    assert [(r["node"], r["gpu"], r["code"]) for r in rows] == newest_first
    rapl = influx_substitute(panel_query(dash, "Host CPU package and DRAM power (RAPL)"), scope)
    zones = {s["tags"]["name"] for s in series_of(server, rapl)}
    assert zones == {"package-0", "package-1", "dram"}, "sub-zones are inside their package"


# -- Prometheus ------------------------------------------------------------------------------
def prometheus_scope() -> dict[str, str]:
    return {"__rate_interval": "1m", "__interval": "1m", "__range": "20m",
            "cluster": "(c1|c2)", "node": "(n1|n2)", "gpu": "(0|1|2|3)"}  # fmt: skip


def prometheus_substitute(expr: str, scope: dict[str, str]) -> str:
    for name in sorted(scope, key=len, reverse=True):
        expr = expr.replace(f"${name}", scope[name])
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def test_every_promql_expression_parses(tmp_path):
    promtool = promtool_binary()
    exprs = prometheus_queries(load(PROMETHEUS))
    scope = prometheus_scope()
    rules = [{"record": f"dashboard:query_{i}", "expr": prometheus_substitute(expr, scope)}
             for i, (_, expr) in enumerate(exprs)]  # fmt: skip
    path = tmp_path / "dashboard-rules.json"  # YAML is a superset of JSON
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules)} rules found" in done.stdout


def test_promtool_refuses_a_broken_expression(tmp_path):
    """The parse check above can fail: a broken expression is refused with the reason."""
    promtool = promtool_binary()
    path = tmp_path / "broken.json"
    rule = {"record": "dashboard:broken", "expr": "sum(rate(DCGM_FI_DEV_POWER_VIOLATION[1m])"}
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": [rule]}]}))
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode != 0 and "unclosed left parenthesis" in done.stderr


GPUS_PER_NODE = 4
STEP_S = 15
SAMPLES = 80  # 20 minutes


def _gpu_value(metric: str, node: str, gpu: int, k: int) -> float:
    busy = gpu != 3
    rates = {  # counters: increase per step
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": 500.0 * STEP_S * 1000,
        "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL": 5e10,
        "DCGM_FI_DEV_PCIE_REPLAY_COUNTER": 1.0 if (node, gpu) == ("n1", 2) else 0.0,
        "DCGM_FI_DEV_POWER_VIOLATION": 6e9 if (node, gpu) == ("n1", 1) else 0.0,
        "DCGM_FI_DEV_THERMAL_VIOLATION": 4e9 if (node, gpu) == ("n2", 2) else 0.0,
        "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL": 1.0 if (node, gpu) == ("n1", 0) else 0.0,
    }
    if metric in rates:
        return 1e9 + rates[metric] * k
    gauges = {
        "DCGM_FI_DEV_SM_CLOCK": 1980.0, "DCGM_FI_DEV_MEM_CLOCK": 2619.0,
        "DCGM_FI_DEV_MEMORY_TEMP": 66.0 + gpu, "DCGM_FI_DEV_GPU_TEMP": 60.0 + gpu,
        "DCGM_FI_DEV_POWER_USAGE": 550.0 + 10 * gpu if busy else 70.0,
        "DCGM_FI_DEV_GPU_UTIL": 90.0 if busy else 0.0, "DCGM_FI_DEV_MEM_COPY_UTIL": 45.0,
        "DCGM_FI_DEV_ENC_UTIL": 0.0, "DCGM_FI_DEV_DEC_UTIL": 0.0,
        "DCGM_FI_DEV_XID_ERRORS": 79.0 if (node, gpu) == ("n2", 3) and k > 40 else 0.0,
        "DCGM_FI_DEV_FB_FREE": 30000.0, "DCGM_FI_DEV_FB_USED": 50000.0,
        "DCGM_FI_DEV_FB_RESERVED": 553.0, "DCGM_FI_DEV_FB_TOTAL": 81559.0,
        "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": 0.0,
        "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS": 2.0 if (node, gpu) == ("n1", 0) else 0.0,
        "DCGM_FI_DEV_ROW_REMAP_FAILURE": 0.0,
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE": 0.9 if busy else 0.0,
        "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": 0.55 if busy else 0.0,
        "DCGM_FI_PROF_DRAM_ACTIVE": 0.45 if busy else 0.0,
        "DCGM_FI_PROF_PCIE_TX_BYTES": 2e9, "DCGM_FI_PROF_PCIE_RX_BYTES": 6e9,
        "DCGM_FI_DEV_POWER_MGMT_LIMIT": 700.0,
        "DCGM_FI_DEV_CLOCKS_EVENT_REASONS": (
            {("n1", 1): 0x4, ("n2", 2): 0x60}.get((node, gpu), 0.0 if busy else 0x1)
        ),
        "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": 0.0,
    }  # fmt: skip
    return float(gauges[metric])


def openmetrics(end_s: int) -> str:
    """Samples of every served name over 20 minutes: three nodes, two clusters."""
    lines: list[str] = []
    times = [end_s - (SAMPLES - 1 - k) * STEP_S for k in range(SAMPLES)]

    def series(metric: str, labels: dict[str, str], value) -> None:
        text = ",".join(f'{k}="{v}"' for k, v in labels.items())
        lines.extend(f"{metric}{{{text}}} {value(k)} {t}" for k, t in enumerate(times))

    nodes = [("c1", "n1"), ("c1", "n2"), ("c2", "n3")]
    for metric in PROMETHEUS_NAMES:
        if metric.startswith("DCGM_"):
            for cluster, node in nodes:
                for gpu in range(GPUS_PER_NODE):
                    gl = {"gpu": str(gpu), "UUID": f"GPU-{node}-{gpu}",
                          "pci_bus_id": f"00000000:{0x18 + gpu:02X}:00.0",
                          "device": f"nvidia{gpu}", "modelName": "NVIDIA H100 80GB HBM3",
                          "Hostname": node, "cluster": cluster}  # fmt: skip
                    if metric == "DCGM_EXP_XID_ERRORS_COUNT":
                        if (node, gpu) in (("n2", 3), ("n1", 0)):
                            xid = "79" if node == "n2" else "13"
                            series(metric, {**gl, "xid": xid, "window_size_in_ms": "300000"},
                                   lambda k: 1.0)  # fmt: skip
                        continue
                    series(metric, gl, lambda k, m=metric, n=node, g=gpu: _gpu_value(m, n, g, k))
        elif metric.startswith("telemetryd_host_"):
            for cluster, node in nodes:
                hl = {"cluster": cluster, "Hostname": node}
                extra = {"telemetryd_host_power_watts": [{"zone": "package-0"}, {"zone": "dram"}],
                         "telemetryd_host_temperature_celsius": [
                             {"chip": "coretemp", "sensor": "Package id 0"}]}  # fmt: skip
                values = {"telemetryd_host_cpu_percent": 35.0,
                          "telemetryd_host_memory_used_bytes": 6.5e11,
                          "telemetryd_host_memory_total_bytes": 2.2e12,
                          "telemetryd_host_power_watts": 210.0,
                          "telemetryd_host_temperature_celsius": 56.0}  # fmt: skip
                for more in extra.get(metric, [{}]):
                    series(metric, {**hl, **more}, lambda k, v=values[metric]: v)
        else:
            _aggregator_series(metric, series, times[0])
    return "\n".join(lines) + "\n# EOF\n"


def _aggregator_series(metric: str, series, start_s: int) -> None:
    per_step = {"telemetryd_aggregator_reports_received_total": 60.5,
                "telemetryd_aggregator_reports_accepted_total": 60.0,
                "telemetryd_aggregator_reports_duplicate_total": 0.5,
                "telemetryd_sink_reports_written_total": 60.0,
                "telemetryd_sink_lines_written_total": 1100.0,
                "telemetryd_sink_retries_total": 1.0,
                "telemetryd_sink_lines_set_aside_total": 0.25}  # fmt: skip
    sinks = ["influxdb://127.0.0.1:8086/telemetry", "sqlite:///var/lib/telemetryd/t.db"]
    if metric in per_step:
        labels = [{"sink": s} for s in sinks] if "sink" in PROMETHEUS_NAMES[metric] else [{}]
        for lb in labels:
            series(metric, lb, lambda k, r=per_step[metric]: r * k)
    elif metric == "telemetryd_aggregator_messages_rejected_total":
        for reason in ("decode", "topic"):
            series(metric, {"reason": reason}, lambda k: 0.1 * k)
    elif metric == "telemetryd_sink_write_duration_seconds_bucket":
        for sink in sinks:
            for le, share in (("0.01", 0.5), ("0.1", 0.9), ("1", 0.99), ("+Inf", 1.0)):
                series(metric, {"sink": sink, "le": le}, lambda k, s=share: 4.0 * s * k)
    elif metric in ("telemetryd_nodes", "telemetryd_gpus"):
        count = {"telemetryd_nodes": 2, "telemetryd_gpus": 8}[metric]
        for cluster in ("c1", "c2"):
            failed = int(cluster == "c1" and metric == "telemetryd_gpus")
            state = "online" if metric == "telemetryd_nodes" else "ok"
            series(metric, {"cluster": cluster, "state": state}, lambda k, n=count - failed: n)
            if failed:
                series(metric, {"cluster": cluster, "state": "failed"}, lambda k: 1)
    elif metric in ("telemetryd_node_last_report_timestamp_seconds", "telemetryd_node_up"):
        for cluster, node in (("c1", "n1"), ("c1", "n2"), ("c2", "n3")):
            up = metric == "telemetryd_node_up"
            series(
                metric,
                {"cluster": cluster, "Hostname": node},
                lambda k, u=up: 1 if u else start_s + STEP_S * k - 3,
            )
    elif metric == "telemetryd_aggregator_reports_missing":
        for cluster in ("c1", "c2"):
            series(metric, {"cluster": cluster}, lambda k: 2)
    else:
        labels = [{"sink": s} for s in sinks] if "sink" in PROMETHEUS_NAMES[metric] else [{}]
        for lb in labels:
            series(metric, lb, lambda k: 1 if metric == "telemetryd_sink_up" else 5000 + k)


@pytest.fixture
def prometheus(tmp_path):
    end_s = int(time.time())
    server = Prometheus(tmp_path, targets=()).backfill(openmetrics(end_s)).start()
    try:
        yield server, end_s
    finally:
        server.stop()


def test_every_promql_query_returns_data_from_a_real_prometheus(prometheus):
    server, end_s = prometheus
    dash = load(PROMETHEUS)
    scope = prometheus_scope()
    empty = []
    for panel, target in targets(dash):
        # a panel's min interval raises $__interval, as in Grafana
        interval = {"__interval": panel.get("interval", scope["__interval"])}
        expr = prometheus_substitute(target["expr"], {**scope, **interval})
        if target.get("instant"):
            answer = server.api("query", query=expr, time=end_s)
        else:
            answer = server.api("query_range", query=expr, start=end_s - 900, end=end_s, step=60)
        assert answer["status"] == "success", (panel["title"], expr, answer)
        if not answer["data"]["result"]:
            empty.append(f"{panel['title']!r} {target['refId']}: {expr}")
    assert not empty, "queries without data:\n" + "\n".join(empty)

    def stat(title: str) -> float:
        [expr] = [t["expr"] for p, t in targets(dash) if p["title"] == title]
        scoped = prometheus_substitute(expr, {**scope, "cluster": "c1"})
        [sample] = server.api("query", query=scoped, time=end_s)["data"]["result"]
        return float(sample["value"][1])

    assert stat("GPUs reporting") == 2 * GPUS_PER_NODE
    assert stat("GPUs throttled") == 2  # sw_power_cap and thermal; gpu_idle is not throttling
    assert stat("GPUs in error") == 1
    assert stat("GPU power now") == pytest.approx((550 + 560 + 570 + 70) * 2 / 1000)

"""/metrics: dcgm-exporter's names, labels and units from reports; host and own series; lint.

The collector is fed decoded reports and rendered with prometheus_client; what it serves
is read back with prometheus_client's own text parser, so each test checks the exposition
a Prometheus server would parse. The clock is fixed: stale removal and the XID window are
about time, and no test waits for it to pass.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from collectors.nvml_read import RECOVERY_ACTIONS as NVML_RECOVERY_ACTIONS
from exporters.dcgm_names import GPU_FIELDS, RECOVERY_ACTIONS
from exporters.fleetview import NodeStats, ServiceStats, SinkStats
from exporters.prometheus import FleetCollector, render
from telemetryd.clock_events import mask
from telemetryd.config import PrometheusConfig
from telemetryd.model import (
    AgentStats,
    DiskIO,
    DiskUsage,
    Event,
    Fan,
    Gpu,
    GpuOwner,
    Host,
    MigDevice,
    NetIO,
    PowerZone,
    Report,
    Sensor,
    decode_report,
)
from tests.integration.prometheus import promtool_check_metrics
from tests.reports import sampled

S = 1_000_000_000
T = 1_800_000_000 * S
BOOT = "0123456789abcdef0123456789abcdef"
MIB = 1 << 20
Series = dict[str, list[tuple[dict[str, str], float]]]

# Our unit -> DCGM's, written out again here (not taken from the code under test).
EXPECTED: dict[str, Callable[[Any], float]] = {
    "raw": float,
    "mib": lambda v: float(v // MIB),
    "ratio": lambda v: v / 100,
    "us": lambda v: float(v // 1000),
    "bool": lambda v: 1.0 if v else 0.0,
    "mask": lambda v: float(mask(v)),
    "recovery": lambda v: float(RECOVERY_ACTIONS[v]),
}
OWNERS = {"hpc_job", "pod", "namespace", "container"}  # dcgm-exporter's, in both styles
DCGM_LABELS = {"gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname", "cluster", *OWNERS}
SNAKE_LABELS = {"gpu", "uuid", "pci_bus_id", "device", "model_name", "hostname", "cluster", *OWNERS}


class Clock:
    """A settable nanosecond clock."""

    def __init__(self, now: int = T) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def gpu(index: int = 0, **fields: Any) -> Gpu:
    return Gpu(index=index, uuid=f"GPU-{index:08d}", pci_bus_id=f"00000000:{0x18 + index:02X}:00.0",
               name="NVIDIA H100 80GB HBM3", driver="550.90.07", **fields)  # fmt: skip


def report(
    node: str = "n1", *, time_ns: int = T, gpus: list[Gpu] | None = None,
    host: Host | None = None, events: list[Event] | None = None, cluster: str = "c1",
) -> Report:  # fmt: skip
    return Report(schema=1, cluster=cluster, node=node, boot_id=BOOT, seq=0, time_ns=time_ns,
                  interval_s=10.0, agent=AgentStats(version="0.1.0"), gpus=gpus or [],
                  host=host, events=events or [])  # fmt: skip


def xid(code: int, at: int, *, index: int | None = 0, uuid: str | None = None) -> Event:
    return Event(time_ns=at, kind="xid", message=f"XID {code}", gpu_index=index, uuid=uuid,
                 code=code)  # fmt: skip


def collector(clock: Clock | None = None, **settings: Any) -> FleetCollector:
    return FleetCollector(PrometheusConfig(**settings), clock=clock or Clock())


def scrape(c: FleetCollector) -> Series:
    """{sample name: [(labels, value)]} as Prometheus' text parser reads the exposition."""
    out: Series = {}
    for family in text_string_to_metric_families(render(c).decode()):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def value(series: Series, metric: str, /, **labels: str) -> float | None:
    """The one sample of ``metric`` whose labels include ``labels``; None when there is none."""
    found = [v for lab, v in series.get(metric, []) if labels.items() <= lab.items()]
    assert len(found) <= 1, f"{metric}{labels}: {len(found)} samples"
    return found[0] if found else None


# -- GPU series ----------------------------------------------------------------------------
def test_realistic_report_serves_every_field_it_has_under_dcgm_names() -> None:
    r = decode_report(sampled())
    c = collector()
    c.observe(r, T)
    series = scrape(c)
    served = 0
    for g in r.gpus:
        for spec in GPU_FIELDS:
            raw = getattr(g, spec.field)
            got = value(series, spec.name, gpu=str(g.index))
            if raw is None:
                assert got is None, f"{spec.name} served for absent {spec.field}"
            else:
                assert got == EXPECTED[spec.conversion](raw), (spec.name, raw, got)
                served += 1
        assert value(series, "DCGM_FI_DEV_XID_ERRORS", gpu=str(g.index)) == 0
    assert served > 8 * 40  # the simulator fills most fields
    g0 = r.gpus[0]
    assert value(series, "DCGM_FI_DEV_GPU_UTIL", gpu="0") == g0.util_gpu_pct == 96
    assert value(series, "DCGM_FI_DEV_POWER_USAGE", gpu="0") == g0.power_w == 658.159
    assert value(series, "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", gpu="0") == 1066095412
    assert value(series, "DCGM_FI_DEV_FB_USED", gpu="0") == 40289439485 // MIB == 38423
    labels = series["DCGM_FI_DEV_GPU_UTIL"][0][0]
    assert labels == {
        "gpu": "0", "UUID": g0.uuid, "pci_bus_id": "00000000:18:00.0", "device": "nvidia0",
        "modelName": "NVIDIA H100 80GB HBM3", "Hostname": "n1", "cluster": "c1",
        "hpc_job": "", "pod": "", "namespace": "", "container": "",  # no owner: empty
    }  # fmt: skip
    # The simulator's first report has no GPM sample yet, and no previous report: no rate.
    assert "DCGM_FI_PROF_GR_ENGINE_ACTIVE" not in series
    assert "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL" not in series


@pytest.mark.parametrize(
    ("field", "raw", "name", "expected"),
    [
        ("fb_used_bytes", 3 * MIB + MIB - 1, "DCGM_FI_DEV_FB_USED", 3),
        ("fb_reserved_bytes", 579862528, "DCGM_FI_DEV_FB_RESERVED", 553),
        ("gr_engine_active_pct", 42.5, "DCGM_FI_PROF_GR_ENGINE_ACTIVE", 0.425),
        ("tensor_active_pct", 100.0, "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", 1.0),
        ("throttle_power_ns", 1_234_567_999, "DCGM_FI_DEV_POWER_VIOLATION", 1_234_567),
        ("throttle_thermal_ns", 999, "DCGM_FI_DEV_THERMAL_VIOLATION", 0),
        ("remap_failure", True, "DCGM_FI_DEV_ROW_REMAP_FAILURE", 1),
        ("remap_failure", False, "DCGM_FI_DEV_ROW_REMAP_FAILURE", 0),
        ("clock_event_reasons", ["sw_power_cap", "hw_slowdown", "bit_0x800"],
         "DCGM_FI_DEV_CLOCKS_EVENT_REASONS", 0x4 | 0x8 | 0x800),
        ("clock_event_reasons", [], "DCGM_FI_DEV_CLOCKS_EVENT_REASONS", 0),
        ("recovery_action", "gpu_reset", "DCGM_FI_DEV_GPU_RECOVERY_ACTION", 1),
        ("recovery_action", "action_9", "DCGM_FI_DEV_GPU_RECOVERY_ACTION", 9),
        ("util_gpu_pct", 0, "DCGM_FI_DEV_GPU_UTIL", 0),
        ("pcie_tx_bytes_per_s", 1.5e9, "DCGM_FI_PROF_PCIE_TX_BYTES", 1.5e9),
        ("energy_mj", 2**53 + 2, "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", float(2**53 + 2)),
    ],
)  # fmt: skip
def test_units_are_converted_to_dcgms(field: str, raw: Any, name: str, expected: float) -> None:
    c = collector()
    c.observe(report(gpus=[gpu(**{field: raw})]), T)
    assert value(scrape(c), name, gpu="0") == expected


def test_absent_fields_give_no_series_never_zero() -> None:
    c = collector()
    c.observe(report(gpus=[gpu()]), T)  # identity only: a GPU that could not be read
    series = scrape(c)
    gpu_series = {n for n in series if n.startswith("DCGM_")}
    assert gpu_series == {"DCGM_FI_DEV_XID_ERRORS"}
    assert value(series, "DCGM_FI_DEV_XID_ERRORS", gpu="0") == 0


def test_recovery_action_numbers_are_nvmls() -> None:
    assert {name: n for n, name in NVML_RECOVERY_ACTIONS.items()} == RECOVERY_ACTIONS


def test_mig_instances_get_their_own_memory_series() -> None:
    instances = [
        MigDevice(uuid="MIG-a", gi_id=1, ci_id=0, name="NVIDIA A100-SXM4-40GB MIG 3g.20gb",
                  fb_total_bytes=20 * 1024 * MIB, fb_used_bytes=5 * MIB, fb_free_bytes=MIB),
        MigDevice(uuid="MIG-b", gi_id=2, ci_id=0, name="NVIDIA A100-SXM4-40GB MIG 1g.5gb",
                  fb_used_bytes=7 * MIB),
        MigDevice(uuid="MIG-c", gi_id=None, fb_used_bytes=9 * MIB),  # no instance id: no series
        MigDevice(uuid="MIG-d", gi_id=1, fb_used_bytes=11 * MIB),  # the same id twice
    ]  # fmt: skip
    c = collector()
    c.observe(report(gpus=[gpu(mig_mode=True, mig=instances, fb_used_bytes=40 * MIB)]), T)
    series = scrape(c)
    used = series["DCGM_FI_DEV_FB_USED"]
    assert [(lab.get("GPU_I_ID"), lab.get("GPU_I_PROFILE"), v) for lab, v in used] == [
        (None, None, 40.0), ("1", "3g.20gb", 5.0), ("2", "1g.5gb", 7.0),
    ]  # fmt: skip
    for labels, _ in used[1:]:  # an instance's series carry its GPU's identity
        assert labels["UUID"] == "GPU-00000000" and labels["gpu"] == "0"
    assert value(series, "DCGM_FI_DEV_FB_TOTAL", GPU_I_ID="1") == 20 * 1024
    assert value(series, "DCGM_FI_DEV_FB_FREE", GPU_I_ID="2") is None  # absent on that one
    assert value(series, "DCGM_FI_DEV_MIG_MODE", gpu="0") == 1
    assert "DCGM_FI_DEV_GPU_UTIL" not in series  # NVML gives no utilisation under MIG


def test_gpu_series_name_their_job_or_pod_like_dcgm_exporter() -> None:
    """hpc_job/pod/namespace/container on every GPU series; a MIG instance: its own owners."""
    instances = [MigDevice(uuid="MIG-a", gi_id=1, fb_used_bytes=MIB),
                 MigDevice(uuid="MIG-b", gi_id=2, fb_used_bytes=2 * MIB)]  # fmt: skip
    owners = [
        GpuOwner(source="kubelet", gi_id=1, pod="train-0", namespace="ml", container="main"),
        GpuOwner(source="kubelet", gi_id=2, pod="infer-7", namespace="web", container="srv"),
        GpuOwner(source="cgroup", job="999"),  # ignored: the kubelet's word is there
    ]
    shared = [GpuOwner(source="jobmap", job="1234"), GpuOwner(source="jobmap", job="1200")]
    guessed = [GpuOwner(source="cgroup", job="77")]  # the only word there is: it counts
    c = collector()
    c.observe(report(gpus=[gpu(0, mig=instances, fb_used_bytes=40 * MIB, owners=owners),
                           gpu(1, fb_used_bytes=MIB, owners=shared),
                           gpu(2, fb_used_bytes=MIB, owners=guessed),
                           gpu(3, fb_used_bytes=MIB)]), T)  # fmt: skip
    used = scrape(c)["DCGM_FI_DEV_FB_USED"]
    got = [(lab["gpu"], lab.get("GPU_I_ID"), *(lab[k] for k in ("hpc_job", "pod", "namespace",
            "container"))) for lab, _ in used]  # fmt: skip
    assert got == [
        ("0", None, "", "infer-7,train-0", "ml,web", "main,srv"),  # sorted, comma-joined
        ("0", "1", "", "train-0", "ml", "main"),
        ("0", "2", "", "infer-7", "web", "srv"),
        ("1", None, "1200,1234", "", "", ""),  # a shared GPU: one series, both jobs
        ("2", None, "77", "", "", ""),
        ("3", None, "", "", "", ""),
    ]
    # A job that moves on changes the labels with the next report.
    c.observe(report(time_ns=T + S, gpus=[gpu(1, fb_used_bytes=MIB)]), T + S)
    assert [lab["hpc_job"] for lab, _ in scrape(c)["DCGM_FI_DEV_FB_USED"]] == [""]


def test_xid_last_code_and_count_inside_the_window() -> None:
    clock = Clock()
    c = collector(clock, stale_after=3600, xid_window=300)
    g0, g1 = gpu(0), gpu(1)
    c.observe(report(gpus=[g0, g1], events=[
        xid(79, T - 10 * S, index=0),
        xid(48, T - 400 * S, index=0),  # before the window: not counted
        xid(13, T - 100 * S, index=None, uuid=g1.uuid),
        xid(13, T - 50 * S, index=None, uuid=g1.uuid),
        xid(31, T - 20 * S, index=1),
    ]), T)  # fmt: skip
    series = scrape(c)
    assert value(series, "DCGM_FI_DEV_XID_ERRORS", gpu="0") == 79
    assert value(series, "DCGM_FI_DEV_XID_ERRORS", gpu="1") == 31  # the newest of the GPU's
    counts = {(lab["gpu"], lab["xid"]): v for lab, v in series["DCGM_EXP_XID_ERRORS_COUNT"]}
    assert counts == {("0", "79"): 1, ("1", "13"): 2, ("1", "31"): 1}
    assert {lab["window_size_in_ms"] for lab, _ in series["DCGM_EXP_XID_ERRORS_COUNT"]} == {
        "300000"
    }
    # A late report (older than the one held) changes no live value, but its XIDs count.
    c.observe(report(time_ns=T - 60 * S, gpus=[gpu(0, util_gpu_pct=99), g1],
                     events=[xid(94, T - 5 * S, index=0)]), T)  # fmt: skip
    series = scrape(c)
    assert value(series, "DCGM_FI_DEV_GPU_UTIL", gpu="0") is None
    assert value(series, "DCGM_FI_DEV_XID_ERRORS", gpu="0") == 94
    assert value(series, "DCGM_EXP_XID_ERRORS_COUNT", gpu="0", xid="94") == 1
    clock.now = T + 296 * S  # the window starts at T-4s now: every XID is out of it
    series = scrape(c)
    assert value(series, "DCGM_FI_DEV_XID_ERRORS", gpu="0") == 0
    assert value(series, "DCGM_FI_DEV_XID_ERRORS", gpu="1") == 0
    assert "DCGM_EXP_XID_ERRORS_COUNT" not in series
    c.view.expire()
    assert c.view.snapshot(clock.now)[1] == {}


def test_stale_node_disappears_and_is_released() -> None:
    clock = Clock(T + 301 * S)
    c = collector(clock, stale_after=300)
    host = Host(cpu_pct=12.5)
    c.observe(report("old", gpus=[gpu()], host=host), T)
    c.observe(report("new", gpus=[gpu()], host=host), T + 200 * S)
    series = scrape(c)
    assert {lab["Hostname"] for lab, _ in series["DCGM_FI_DEV_XID_ERRORS"]} == {"new"}
    assert {lab["Hostname"] for lab, _ in series["telemetryd_host_cpu_percent"]} == {"new"}
    assert len(c.view) == 2
    assert c.view.expire() == 1
    assert len(c.view) == 1


def test_late_report_neither_changes_values_nor_keeps_a_node_alive() -> None:
    clock = Clock(T + 10 * S)
    c = collector(clock, stale_after=300)
    c.observe(report(time_ns=T + 10 * S, gpus=[gpu(util_gpu_pct=50)]), T + 10 * S)
    c.observe(report(time_ns=T, gpus=[gpu(util_gpu_pct=99)]), T + 200 * S)  # from a spool
    assert value(scrape(c), "DCGM_FI_DEV_GPU_UTIL", gpu="0") == 50
    clock.now = T + 311 * S  # 301 s after the newest report was received
    assert "DCGM_FI_DEV_GPU_UTIL" not in scrape(c)


@pytest.mark.parametrize("style", ["dcgm", "snake"])
def test_label_names_dcgm_or_snake(style: str) -> None:
    c = collector(labels=style)
    c.observe(report(gpus=[gpu(pcie_replay_total=3)], host=Host(cpu_pct=1.0)), T)
    c.update(stats())
    series = scrape(c)
    expected = DCGM_LABELS if style == "dcgm" else SNAKE_LABELS
    host = "Hostname" if style == "dcgm" else "hostname"
    assert set(series["DCGM_FI_DEV_XID_ERRORS"][0][0]) == expected
    assert set(series["telemetryd_host_cpu_percent"][0][0]) == {host, "cluster"}
    assert set(series["telemetryd_node_up"][0][0]) == {host, "cluster"}
    # The one legacy DCGM name promtool refuses is served under DCGM's canonical name.
    replay = (
        "DCGM_FI_DEV_PCIE_REPLAY_COUNTER" if style == "dcgm" else "DCGM_FI_DEV_PCIE_REPLAY_TOTAL"
    )
    assert value(series, replay, gpu="0") == 3


def test_nvlink_bandwidth_is_a_rate_between_the_two_newest_reports() -> None:
    c = collector()
    gib = 1 << 30
    c.observe(report(gpus=[gpu(nvlink_tx_bytes=gib, nvlink_rx_bytes=gib)]), T)
    assert "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL" not in scrape(c)  # one report: no rate
    c.observe(
        report(
            time_ns=T + 10 * S,
            gpus=[gpu(nvlink_tx_bytes=gib + 10 * MIB, nvlink_rx_bytes=gib + 10 * MIB)],
        ),
        T + 10 * S,
    )
    assert value(scrape(c), "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", gpu="0") == 2048  # KiB/s
    c.observe(report(time_ns=T + 20 * S, gpus=[gpu(nvlink_tx_bytes=0, nvlink_rx_bytes=0)]),
              T + 20 * S)  # a driver reload reset the counters  # fmt: skip
    assert "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL" not in scrape(c)


def test_duplicate_gpu_index_is_served_once() -> None:
    c = collector()
    c.observe(report(gpus=[gpu(0, util_gpu_pct=1), gpu(0, util_gpu_pct=2)]), T)
    assert [v for _, v in scrape(c)["DCGM_FI_DEV_GPU_UTIL"]] == [1.0]


# -- host series ---------------------------------------------------------------------------
def full_host() -> Host:
    return Host(
        cpu_pct=37.5, cpu_count=64, load_1=1.5, load_5=2.0, load_15=3.25,
        mem_total_bytes=512 * 1024 * MIB, mem_available_bytes=400 * 1024 * MIB,
        mem_used_bytes=100 * 1024 * MIB, swap_total_bytes=8 * 1024 * MIB, swap_used_bytes=0,
        uptime_s=86400.5,
        disks=[DiskUsage(mount="/", total_bytes=1000, used_bytes=600, free_bytes=400),
               DiskUsage(mount="/", total_bytes=1, used_bytes=1, free_bytes=0)],  # twice
        disk_io=[DiskIO(device="nvme0n1", read_bytes=10, write_bytes=20, reads=1, writes=2)],
        net=[NetIO(iface="eth0", rx_bytes=1, tx_bytes=2, rx_packets=3, tx_packets=4,
                   rx_errors=5, tx_errors=6, rx_drops=7, tx_drops=8)],
        power=[PowerZone(zone="intel-rapl:0", name="package-0", energy_uj=5_000_000,
                         power_w=120.5),
               PowerZone(zone="intel-rapl:1", name="package-1", energy_uj=1)],
        sensors=[Sensor(chip="coretemp-1", label="Core 0", temp_c=55.0)],
        fans=[Fan(chip="nct6775", label="fan1", rpm=1200)],
    )  # fmt: skip


def test_host_series_in_base_units() -> None:
    c = collector()
    c.observe(report(host=full_host()), T)
    s = scrape(c)
    h = {"Hostname": "n1", "cluster": "c1"}
    assert value(s, "telemetryd_host_cpu_percent", **h) == 37.5
    assert value(s, "telemetryd_host_load1") == 1.5
    assert value(s, "telemetryd_host_load5") == 2.0
    assert value(s, "telemetryd_host_load15") == 3.25
    assert value(s, "telemetryd_host_memory_total_bytes") == 512 * 1024 * MIB
    assert value(s, "telemetryd_host_memory_available_bytes") == 400 * 1024 * MIB
    assert value(s, "telemetryd_host_memory_used_bytes") == 100 * 1024 * MIB
    assert value(s, "telemetryd_host_swap_total_bytes") == 8 * 1024 * MIB
    assert value(s, "telemetryd_host_swap_used_bytes") == 0
    assert value(s, "telemetryd_host_uptime_seconds") == 86400.5
    assert value(s, "telemetryd_host_filesystem_size_bytes", mount="/") == 1000
    assert value(s, "telemetryd_host_filesystem_used_bytes", mount="/") == 600
    assert value(s, "telemetryd_host_filesystem_free_bytes", mount="/") == 400
    assert value(s, "telemetryd_host_disk_read_bytes_total", device="nvme0n1") == 10
    assert value(s, "telemetryd_host_disk_write_bytes_total", device="nvme0n1") == 20
    for name, v in [
        ("receive_bytes", 1),
        ("transmit_bytes", 2),
        ("receive_errors", 5),
        ("transmit_errors", 6),
        ("receive_drops", 7),
        ("transmit_drops", 8),
    ]:
        assert value(s, f"telemetryd_host_network_{name}_total", iface="eth0") == v
    assert value(s, "telemetryd_host_power_watts", zone="intel-rapl:0", name="package-0") == 120.5
    assert value(s, "telemetryd_host_power_watts", zone="intel-rapl:1") is None
    assert value(s, "telemetryd_host_energy_joules_total", zone="intel-rapl:0") == 5.0
    assert value(s, "telemetryd_host_temperature_celsius", chip="coretemp-1",
                 sensor="Core 0") == 55.0  # fmt: skip
    assert value(s, "telemetryd_host_fan_rpm", chip="nct6775", sensor="fan1") == 1200
    labels = s["telemetryd_host_disk_read_bytes_total"][0][0]
    assert labels == {"Hostname": "n1", "cluster": "c1", "device": "nvme0n1"}


def test_host_series_can_be_turned_off() -> None:
    c = collector(host=False)
    c.observe(report(host=full_host()), T)
    assert not [n for n in scrape(c) if n.startswith("telemetryd_host_")]


# -- the aggregator's own series -----------------------------------------------------------
def stats() -> ServiceStats:
    durations = ((0.001, 1), (0.01, 3), (float("inf"), 4))
    return ServiceStats(
        received=120, accepted=100, duplicates=7, rejected={"schema": 2, "too_old": 1},
        missing={"c1": 3}, nodes={("c1", "online"): 1, ("c1", "offline"): 0},
        gpus={("c1", "ok"): 7, ("c1", "failed"): 1}, wal_bytes=4096, broker_dropped=5,
        sinks=(
            SinkStats("sqlite:///var/t.db", True, 0, 0, 100, 0, 0, 0, None, durations, 0.5),
            SinkStats("influxdb://db:8086/t", False, 12, 3456, 88, 4, 1, 2,
                      {"written": 900, "retried": 30, "set_aside": 2, "fields_dropped": 1},
                      (), 0.0),
        ),
        node_list=(NodeStats("c1", "n1", True, 1_800_000_000.25),
                   NodeStats("c1", "n2", False, None)),
    )  # fmt: skip


def test_service_series_names_and_values() -> None:
    c = collector()
    c.update(stats())
    s = scrape(c)
    assert value(s, "telemetryd_aggregator_reports_received_total") == 120
    assert value(s, "telemetryd_aggregator_reports_accepted_total") == 100
    assert value(s, "telemetryd_aggregator_reports_duplicate_total") == 7
    assert value(s, "telemetryd_aggregator_messages_rejected_total", reason="schema") == 2
    assert value(s, "telemetryd_aggregator_messages_rejected_total", reason="too_old") == 1
    assert value(s, "telemetryd_aggregator_reports_missing", cluster="c1") == 3
    assert value(s, "telemetryd_nodes", cluster="c1", state="online") == 1
    assert value(s, "telemetryd_nodes", cluster="c1", state="offline") == 0
    assert value(s, "telemetryd_gpus", cluster="c1", state="ok") == 7
    assert value(s, "telemetryd_gpus", cluster="c1", state="failed") == 1
    assert value(s, "telemetryd_wal_bytes") == 4096
    assert value(s, "telemetryd_broker_dropped_messages") == 5
    sq, fx = {"sink": "sqlite:///var/t.db"}, {"sink": "influxdb://db:8086/t"}
    assert value(s, "telemetryd_sink_up", **sq) == 1
    assert value(s, "telemetryd_sink_up", **fx) == 0
    assert value(s, "telemetryd_sink_queue_reports", **fx) == 12
    assert value(s, "telemetryd_sink_queue_bytes", **fx) == 3456
    assert value(s, "telemetryd_sink_reports_written_total", **fx) == 88
    assert value(s, "telemetryd_sink_retries_total", **fx) == 4
    assert value(s, "telemetryd_sink_reports_rejected_total", **fx) == 1
    assert value(s, "telemetryd_sink_reports_skipped_total", **fx) == 2
    assert value(s, "telemetryd_sink_lines_written_total", **fx) == 900
    assert value(s, "telemetryd_sink_lines_retried_total", **fx) == 30
    assert value(s, "telemetryd_sink_lines_set_aside_total", **fx) == 2
    assert value(s, "telemetryd_sink_fields_dropped_total", **fx) == 1
    assert value(s, "telemetryd_sink_lines_written_total", **sq) is None  # no lines there
    buckets = {lab["le"]: v for lab, v in s["telemetryd_sink_write_duration_seconds_bucket"]
               if lab["sink"] == sq["sink"]}  # fmt: skip
    assert buckets == {"0.001": 1, "0.01": 3, "+Inf": 4}
    assert value(s, "telemetryd_sink_write_duration_seconds_count", **sq) == 4
    assert value(s, "telemetryd_sink_write_duration_seconds_sum", **sq) == 0.5
    assert value(s, "telemetryd_node_up", Hostname="n1", cluster="c1") == 1
    assert value(s, "telemetryd_node_up", Hostname="n2") == 0
    assert value(s, "telemetryd_node_last_report_timestamp_seconds", Hostname="n1") == (
        1_800_000_000.25
    )
    assert value(s, "telemetryd_node_last_report_timestamp_seconds", Hostname="n2") is None


def test_broker_dropped_absent_until_the_broker_says() -> None:
    c = collector()
    c.update(ServiceStats(0, 0, 0, {}, {}, {}, {}, 0, None, (), ()))
    assert "telemetryd_broker_dropped_messages" not in scrape(c)


# -- promtool ------------------------------------------------------------------------------
def everything(style: str) -> bytes:
    """An exposition with every kind of series: GPUs, MIG, XIDs, host, own numbers."""
    c = collector(labels=style)
    c.observe(decode_report(sampled()), T)
    mig = [MigDevice(uuid="MIG-a", gi_id=1, name="A100 MIG 1g.5gb", fb_used_bytes=MIB)]
    c.observe(report("n2", gpus=[gpu(0, mig=mig, gr_engine_active_pct=1.0)], host=full_host(),
                     events=[xid(79, T - S)]), T)  # fmt: skip
    c.observe(report("n2", time_ns=T + S, gpus=[gpu(0, mig=mig, nvlink_tx_bytes=1,
              nvlink_rx_bytes=1)], host=full_host()), T + S)  # fmt: skip
    odd = Gpu(index=0, uuid="GPU-odd", pci_bus_id="x", name='Odd "GPU" \\ line\nbreak',
              driver="1", util_gpu_pct=5)  # fmt: skip
    c.observe(report("n3", gpus=[odd], host=Host(disks=[DiskUsage(
        mount='/mnt/"a b"\\c', total_bytes=1, used_bytes=0, free_bytes=1)])), T)  # fmt: skip
    c.update(stats())
    text = render(c)
    assert text == generate_latest(c)  # our faster writer, byte for byte
    return text


def test_promtool_accepts_snake_labels() -> None:
    code, findings = promtool_check_metrics(everything("snake"))
    assert (code, findings) == (0, [])


def test_promtool_with_dcgm_labels_finds_only_dcgm_exporters_own_names() -> None:
    """dcgm-exporter's ``modelName`` label and its ``..._REPLAY_COUNTER`` name fail the lint.

    Both are kept on purpose (existing dashboards and rules use them); nothing else may.
    """
    text = everything("dcgm")
    code, findings = promtool_check_metrics(text)
    gpu_families = {
        line.split("{", 1)[0]
        for line in text.decode().splitlines()
        if line.startswith("DCGM_") and "modelName=" in line
    }
    camel = {f"{name} label names should be written in 'snake_case' not 'camelCase'"
             for name in gpu_families}  # fmt: skip
    replay = "DCGM_FI_DEV_PCIE_REPLAY_COUNTER metric name should not include type 'counter'"
    assert code == 3  # promtool: lint problems
    assert set(findings) == camel | {replay}


def test_label_values_are_escaped() -> None:
    text = everything("snake").decode()
    assert 'model_name="Odd \\"GPU\\" \\\\ line\\nbreak"' in text
    assert 'mount="/mnt/\\"a b\\"\\\\c"' in text
    series = {f.name: f for f in text_string_to_metric_families(text)}
    (sample,) = [s for s in series["DCGM_FI_DEV_GPU_UTIL"].samples if s.labels["uuid"] == "GPU-odd"]
    assert sample.labels["model_name"] == 'Odd "GPU" \\ line\nbreak'


def test_every_dcgm_name_is_unique_and_documented() -> None:
    names = [f.name for f in GPU_FIELDS]
    assert len(names) == len(set(names))
    fields = [f.field for f in GPU_FIELDS]
    assert len(fields) == len(set(fields))
    assert all(hasattr(Gpu, f.field) for f in GPU_FIELDS)
    doc = (Path(__file__).parents[2] / "docs" / "metrics.md").read_text()
    missing = [f.name for f in GPU_FIELDS if f"`{f.name}`" not in doc]
    assert not missing, f"not in docs/metrics.md: {missing}"


def test_alert_series() -> None:
    import dataclasses

    from exporters.fleetview import AlertStats, ReceiverCounts

    alerts = AlertStats(
        alerts={("firing", "critical"): 2, ("pending", "warning"): 1},
        evaluations=1234,
        receivers=(ReceiverCounts("oncall", sent=5, retries=3, failed=1, superseded=0, queued=2),),
    )
    c = collector()
    c.update(dataclasses.replace(stats(), alerts=alerts))
    s = scrape(c)
    assert value(s, "telemetryd_alerts", state="firing", severity="critical") == 2
    assert value(s, "telemetryd_alerts", state="pending", severity="warning") == 1
    assert value(s, "telemetryd_alert_evaluations_total") == 1234
    assert value(s, "telemetryd_alert_notifications_total", receiver="oncall") == 5
    assert value(s, "telemetryd_alert_notification_retries_total", receiver="oncall") == 3
    assert value(s, "telemetryd_alert_notifications_failed_total", receiver="oncall") == 1
    assert value(s, "telemetryd_alert_notifications_queued", receiver="oncall") == 2
    c.update(stats())  # the engine turned off: no alert series at all
    assert "telemetryd_alerts" not in scrape(c)

"""Shared by the SQLite tests: a report that uses every part of the model, a clock, helpers."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from exporters.sqlite import SqliteSink
from telemetryd.model import (
    AgentStats,
    DiskIO,
    DiskUsage,
    Event,
    Fan,
    Gpu,
    GpuError,
    GpuProcess,
    Host,
    MigDevice,
    NetIO,
    PowerZone,
    Report,
    Sensor,
    SourceError,
    decode_report,
    encode_report,
)

MINUTE_NS = 60 * 10**9
DAY_NS = 86400 * 10**9


class Clock:
    """The sink's wall clock, moved by the test."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now


def copy(report: Report, **changes) -> Report:
    """A deep copy (through the wire encoding) with some top-level fields changed."""
    new = decode_report(encode_report(report))
    for key, value in changes.items():
        setattr(new, key, value)
    return new


async def write_all(path: Path, *batches, **kwargs) -> SqliteSink:
    sink = SqliteSink(path, **kwargs)
    await sink.open()
    try:
        for batch in batches:
            await sink.write(batch)
    finally:
        await sink.close()
    return sink


def raw(path: Path, sql: str, args=()) -> list[tuple]:
    con = sqlite3.connect(path)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def run(coro):
    return asyncio.run(coro)


def full_report(time_ns: int, *, seq: int = 41, node: str = "node-a") -> Report:
    """A hand-made report exercising every kind of field the model has.

    MIG, processes (and an empty list, which is not "unknown"), a GPU in error, the three
    states of clock_event_reasons, events out of key order, every host list, ``extra``,
    source errors and ``absent``, an empty ``absent`` being distinct from none.
    """
    a100 = Gpu(
        index=0,
        uuid="GPU-0a0a0a0a-0000-1111-2222-333333333333",
        pci_bus_id="00000000:07:00.0",
        name="NVIDIA A100-SXM4-40GB",
        driver="550.90.07",
        cuda_driver="12.4",
        serial="1320121012345",
        vbios="92.00.45.00.05",
        arch="ampere",
        mig_mode=True,
        mig_mode_pending=False,
        mig=[
            MigDevice(
                uuid="MIG-11111111-2222-3333-4444-555555555555",
                gi_id=1,
                ci_id=0,
                name="3g.20gb",
                fb_total_bytes=20_937_965_568,
                fb_used_bytes=13_631_488,
                fb_free_bytes=20_924_334_080,
            ),
            MigDevice(uuid="MIG-66666666-7777-8888-9999-000000000000"),
        ],
        sm_clock_mhz=1410,
        mem_clock_mhz=1215,
        clock_event_reasons=["sw_power_cap", "hw_slowdown"],
        throttle_power_ns=123_456_789,
        pstate=0,
        temp_c=41.5,
        temp_slowdown_c=90.0,
        power_w=87.25,
        power_limit_w=400.0,
        energy_mj=98_765_432_101,
        util_gpu_pct=None,  # a MIG GPU has no whole-GPU utilisation
        sm_active_pct=12.125,
        fb_total_bytes=42_949_672_960,
        fb_used_bytes=1_048_576,
        pcie_gen=4,
        pcie_width=16,
        pcie_tx_bytes_per_s=1.5e9,
        nvlink_tx_bytes=2**62,
        ecc_enabled=True,
        ecc_dbe_aggregate=0,
        remap_pending=False,
        remap_failure=False,
        retired_pages_pending=None,
        recovery_action="none",
        processes=[
            GpuProcess(pid=4242, type="compute", used_memory_bytes=8_388_608, gi_id=1, ci_id=0),
            GpuProcess(pid=7, type="graphics"),
        ],
    )
    lost = Gpu(
        index=1,
        uuid="GPU-1b1b1b1b-0000-1111-2222-333333333333",
        pci_bus_id="00000000:0F:00.0",
        name="NVIDIA A100-SXM4-40GB",
        driver="550.90.07",
        error=GpuError(code="gpu_lost", message="GPU has fallen off the bus, 'really'"),
    )
    idle = Gpu(
        index=2,
        uuid="GPU-2c2c2c2c-0000-1111-2222-333333333333",
        pci_bus_id="00000000:47:00.0",
        name="NVIDIA RTX A6000",
        driver="550.90.07",
        mig_mode=False,
        clock_event_reasons=[],
        fan_pct=0,
        power_w=0.0,
        util_gpu_pct=0,
        ecc_enabled=False,
        remap_pending=False,
        processes=[],
    )
    host = Host(
        cpu_pct=37.5,
        cpu_core_pct=[12.5, 0.0, 100.0, 37.5],
        cpu_count=4,
        load_1=1.25,
        load_5=0.5,
        load_15=0.0,
        mem_total_bytes=270_000_000_000,
        mem_available_bytes=200_000_000_000,
        mem_used_bytes=70_000_000_000,
        swap_total_bytes=0,
        swap_used_bytes=0,
        uptime_s=86_400.5,
        disks=[
            DiskUsage(mount="/", total_bytes=100, used_bytes=40, free_bytes=60, fstype="ext4"),
            DiskUsage(mount="/scratch space", total_bytes=10, used_bytes=0, free_bytes=10),
        ],
        disk_io=[
            DiskIO(device="nvme0n1", read_bytes=1, write_bytes=2, reads=3, writes=4, busy_ms=5),
        ],
        net=[
            NetIO(
                iface="ib0",
                rx_bytes=10,
                tx_bytes=20,
                rx_packets=1,
                tx_packets=2,
                rx_errors=0,
                tx_errors=0,
                rx_drops=3,
                tx_drops=0,
            )
        ],
        power=[PowerZone(zone="intel-rapl:0", name="package-0", energy_uj=5, power_w=95.5)],
        sensors=[Sensor(chip="coretemp-isa-0000", label="Package id 0", temp_c=55.0, crit_c=100.0)],
        fans=[Fan(chip="nct6798-isa-0290", label="fan1", rpm=1200)],
        extra={"ipmi": {"inlet_c": 22.5, "psu1_w": 410.0}, "empty": {}},
    )
    events = [
        Event(
            time_ns=time_ns - 5,
            kind="xid",
            message="Graphics Engine Exception",
            gpu_index=0,
            uuid=a100.uuid,
            code=13,
            name="GR_EXCEPTION",
            action="Restart the application",
            severity="warning",
            gi_id=1,
            ci_id=0,
        ),
        Event(
            time_ns=time_ns - 9,  # older than the first: the list is not in key order
            kind="gpu_lost",
            message="GPU has fallen off the bus",
            gpu_index=1,
            uuid=lost.uuid,
            severity="critical",
        ),
        Event(time_ns=time_ns - 9, kind="recovery_action", message="reboot", code=2, name="reboot"),
    ]
    return Report(
        schema=1,
        cluster="c-1",
        node=node,
        boot_id="ab" * 16,
        seq=seq,
        time_ns=time_ns,
        interval_s=10.0,
        agent=AgentStats(
            version="0.4.0",
            sample_duration_s=0.125,
            gpu_duration_s=0.0625,
            overruns=1,
            spool_reports=3,
            spool_bytes=4096,
            published=100,
            dropped=2,
            reconnects=1,
            spool_errors=0,
            events_dropped=0,
        ),
        gpus=[a100, lost, idle],
        host=host,
        events=events,
        errors=[SourceError(source="rapl", message="permission denied: /sys/class/powercap")],
        absent={"fan_pct": "SXM board", "util_gpu_pct": "MIG mode"},
    )

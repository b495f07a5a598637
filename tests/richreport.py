"""A hand-made report that exercises every part of the wire model, awkward text included.

The simulator never produces MIG, processes on MIG instances, GPU errors, events of every
kind, every host part or names full of spaces, commas, quotes and non-ASCII; stores must
handle all of them, so tests that check a store's round trip use this report.
"""

from __future__ import annotations

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
)

T0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
ODD = 'NVIDIA "H100", 80GB=HBM3 \\ ñ'  # space, comma, equals, quote, backslash, non-ASCII


def rich(seq: int = 0, *, node: str = "rich-01", time_ns: int = T0) -> Report:
    """One report of a two-GPU node: one GPU in MIG mode, one that failed to read."""
    mig_gpu = Gpu(
        index=0, uuid="GPU-aaaaaaaa-0000-4000-8000-000000000001", pci_bus_id="00000000:07:00.0",
        name=ODD, driver="550.90.07", cuda_driver="12.4", arch="ampere",
        mig_mode=True, mig_mode_pending=False,
        mig=[
            MigDevice(uuid="MIG-aaaa-0001", gi_id=1, ci_id=0, name="3g.20gb",
                      fb_total_bytes=20 << 30, fb_used_bytes=5 << 30, fb_free_bytes=15 << 30),
            MigDevice(uuid="MIG-aaaa-0002", gi_id=2, ci_id=0, name="3g.20gb",
                      fb_total_bytes=20 << 30, fb_used_bytes=0, fb_free_bytes=20 << 30),
        ],
        sm_clock_mhz=1410, mem_clock_mhz=1215, clock_event_reasons=["sw_power_cap", "hw_slowdown"],
        throttle_power_ns=123_456_789, throttle_thermal_ns=0, pstate=0,
        temp_c=71.5, mem_temp_c=80.0, power_w=312.25, power_limit_w=400.0,
        energy_mj=9_876_543_210, fb_total_bytes=40 << 30, fb_used_bytes=5 << 30,
        fb_free_bytes=35 << 30, fb_reserved_bytes=512 << 20,
        pcie_gen=4, pcie_width=16, pcie_tx_bytes_per_s=1.5e9, pcie_rx_bytes_per_s=0.0,
        pcie_replay_total=3, nvlink_tx_bytes=(1 << 62) + 1, ecc_enabled=True,
        ecc_sbe_volatile=2, ecc_dbe_volatile=0, ecc_sbe_aggregate=(1 << 64) - 1,
        remap_correctable_rows=1,
        remap_uncorrectable_rows=0, remap_pending=True, remap_failure=False,
        recovery_action="none",
        processes=[
            GpuProcess(pid=4242, type="compute", used_memory_bytes=5 << 30, gi_id=1, ci_id=0),
            GpuProcess(pid=77, type="compute", used_memory_bytes=1 << 20, gi_id=1, ci_id=0),
        ],
    )  # fmt: skip
    failed_gpu = Gpu(
        index=1, uuid="GPU-bbbbbbbb-0000-4000-8000-000000000002", pci_bus_id="00000000:08:00.0",
        name="NVIDIA A100-SXM4-40GB", driver="550.90.07",
        error=GpuError(code="gpu_lost", message='GPU has fallen off the bus: "Xid 79"\nsee dmesg'),
    )  # fmt: skip
    host = Host(
        cpu_pct=12.5, cpu_core_pct=[10.0, 15.0], cpu_count=2, load_1=0.5, load_5=0.25,
        load_15=0.125, mem_total_bytes=64 << 30, mem_available_bytes=32 << 30,
        mem_used_bytes=30 << 30, swap_total_bytes=0, swap_used_bytes=0, uptime_s=1234.5,
        disks=[DiskUsage(mount="/var/lib/my data", total_bytes=100, used_bytes=40,
                         free_bytes=60, fstype="ext4")],
        disk_io=[DiskIO(device="nvme0n1", read_bytes=1, write_bytes=2, reads=3, writes=4,
                        read_ms=5, write_ms=6, busy_ms=7)],
        net=[NetIO(iface="eth0", rx_bytes=10, tx_bytes=20, rx_packets=1, tx_packets=2,
                   rx_errors=0, tx_errors=0, rx_drops=0, tx_drops=1)],
        power=[PowerZone(zone="intel-rapl:0", name="package-0", energy_uj=5_000_000, power_w=95.5)],
        sensors=[Sensor(chip="coretemp-isa-0000", label="Package id 0", temp_c=55.0,
                        high_c=80.0, crit_c=100.0)],
        fans=[Fan(chip="nct6775-isa-0290", label="fan1", rpm=1200)],
        extra={"ipmi": {"inlet_temp_c": 24.0, "time": 1.0, "_hidden": 2.0}},
    )  # fmt: skip
    events = [
        Event(time_ns=time_ns - 1_000, kind="xid", message="GPU has fallen off the bus",
              gpu_index=1, uuid=failed_gpu.uuid, code=79, name="GPU_HAS_FALLEN_OFF_THE_BUS",
              action="Drain the node and reset the GPU", severity="critical"),
        Event(time_ns=time_ns - 500, kind="ecc_sbe", message="single-bit ECC error, corrected",
              gpu_index=0, uuid=mig_gpu.uuid, severity="info", gi_id=1, ci_id=0),
    ]  # fmt: skip
    return Report(
        schema=1, cluster="site-a", node=node, boot_id="0123456789abcdef0123456789abcdef",
        seq=seq, time_ns=time_ns, interval_s=10.0,
        agent=AgentStats(version="0.1.0", sample_duration_s=0.012, overruns=0, dropped=0),
        gpus=[mig_gpu, failed_gpu], host=host, events=events,
        errors=[SourceError(source="hwmon", message="nct6775: read timed out")],
        absent={"gpus[*].fan_pct": "not supported on SXM boards"},
    )  # fmt: skip

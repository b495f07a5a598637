"""The psutil host collector against this machine's real psutil (no mocks)."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from collectors.host import HostPsutilCollector, _percent, create
from telemetryd.codec import encode_json, json_decoder
from telemetryd.config import AgentConfig, HostConfig
from telemetryd.model import Host

MISSING_MOUNT = "/nonexistent/telemetryd-test-mount"


def make(**host: object) -> HostPsutilCollector:
    c = create(AgentConfig(host=HostConfig(**host)))  # type: ignore[arg-type]
    assert isinstance(c, HostPsutilCollector)
    return c


def collect(c: HostPsutilCollector) -> Host:
    host = Host()
    c.collect(host)
    assert json_decoder(Host)(encode_json(host)) == host
    return host


def opened(**host: object) -> HostPsutilCollector:
    c = make(**host)
    c.open()
    # A real interval is >= 0.1 s; give the CPU counters (10 ms ticks) time to move.
    time.sleep(0.1)
    return c


def test_whole_host_on_this_machine() -> None:
    c = opened()
    assert c.name == "host"
    h = collect(c)
    assert h.mem_total_bytes is not None
    assert h.mem_total_bytes > 0
    assert h.mem_available_bytes is not None
    assert 0 < h.mem_available_bytes <= h.mem_total_bytes
    assert h.mem_used_bytes is not None
    assert h.mem_used_bytes <= h.mem_total_bytes
    assert h.swap_total_bytes is not None
    assert h.swap_used_bytes is not None
    assert h.swap_used_bytes <= h.swap_total_bytes
    assert h.cpu_pct is not None
    assert 0.0 <= h.cpu_pct <= 100.0
    assert h.cpu_count is not None
    assert h.cpu_count >= 1
    assert h.cpu_core_pct is not None
    assert len(h.cpu_core_pct) == h.cpu_count
    assert all(0.0 <= p <= 100.0 for p in h.cpu_core_pct)
    assert h.load_1 is not None
    assert h.load_1 >= 0.0
    assert h.load_5 is not None
    assert h.load_15 is not None
    assert h.uptime_s is not None
    assert h.uptime_s > 0
    assert h.disks is not None
    root = [d for d in h.disks if d.mount == "/"]
    assert len(root) == 1
    assert root[0].total_bytes > 0
    assert root[0].used_bytes + root[0].free_bytes <= root[0].total_bytes
    assert root[0].fstype
    assert h.disk_io is not None
    assert h.net is not None
    c.close()


def test_cpu_busy_shows_even_when_collected_on_another_thread() -> None:
    # psutil.cpu_percent() keeps its baseline per thread; the sampler's worker thread may
    # change between intervals. A busy core must still show on the first collect.
    c = opened(per_core=False)
    end = time.monotonic() + 0.3
    while time.monotonic() < end:
        pass
    result: list[Host] = []
    worker = threading.Thread(target=lambda: result.append(collect(c)))
    worker.start()
    worker.join()
    assert result[0].cpu_pct is not None
    assert result[0].cpu_pct > 0.0


def test_per_core_off_leaves_the_list_absent() -> None:
    h = collect(opened(per_core=False))
    assert h.cpu_core_pct is None
    assert h.cpu_pct is not None
    assert b"cpu_core_pct" not in encode_json(h)


def test_loopback_excluded_by_default_and_included_on_request() -> None:
    default = collect(opened()).net
    assert default is not None
    assert "lo" not in [n.iface for n in default]
    only_lo = collect(opened(interfaces=["lo"])).net
    assert only_lo is not None
    assert [n.iface for n in only_lo] == ["lo"]


def test_default_disks_skip_loop_ram_zram_and_a_list_selects() -> None:
    all_io = collect(opened()).disk_io
    assert all_io is not None
    assert not [d for d in all_io if d.device.startswith(("loop", "ram", "zram"))]
    if not all_io:
        pytest.skip("this machine has no block device besides loop/ram/zram")
    first = all_io[0].device
    chosen = collect(opened(disks=[first])).disk_io
    assert chosen is not None
    assert [d.device for d in chosen] == [first]
    assert chosen[0].busy_ms is not None  # Linux has busy_time


def test_missing_mount_is_skipped_and_warned_once(caplog: pytest.LogCaptureFixture) -> None:
    c = opened(mounts=["/", MISSING_MOUNT])
    with caplog.at_level(logging.WARNING, logger="collectors.host"):
        first = collect(c)
        second = collect(c)
    for h in (first, second):
        assert h.disks is not None
        assert [d.mount for d in h.disks] == ["/"]
    warnings = [r for r in caplog.records if MISSING_MOUNT in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING


def test_directory_that_is_not_a_mount_point_is_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    c = opened(mounts=["/usr/share"])  # exists, but it is a directory of /
    with caplog.at_level(logging.WARNING, logger="collectors.host"):
        h = collect(c)
    assert h.disks == []
    assert "/usr/share" in caplog.text


def test_unknown_interface_and_disk_warn_once(caplog: pytest.LogCaptureFixture) -> None:
    c = opened(interfaces=["nosuchnic9"], disks=["nosuchdisk9"])
    with caplog.at_level(logging.WARNING, logger="collectors.host"):
        h1, h2 = collect(c), collect(c)
    assert h1.net == h2.net == []
    assert h1.disk_io == h2.disk_io == []
    assert caplog.text.count("nosuchnic9") == 1
    assert caplog.text.count("nosuchdisk9") == 1


def test_close_without_open_is_safe() -> None:
    make().close()


def test_percent_arithmetic() -> None:
    # (busy, total) seconds since boot.
    assert _percent((10.0, 100.0), (15.0, 110.0)) == 50.0
    assert _percent((10.0, 100.0), (10.0, 100.0)) is None  # no tick passed: no number
    assert _percent((10.0, 100.0), (9.0, 110.0)) == 0.0  # a counter stepping back
    assert _percent((0.0, 0.0), (30.0, 20.0)) == 100.0

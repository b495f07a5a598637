"""The NVML backend over a fake pynvml that replays recorded cards.

Covers what a GPU node depends on: every field converted from NVML's units, "not
supported" staying absent, a lost or broken GPU reported with its error while the others
carry on, a hung call bounded by the timeout, XIDs delivered once, NVML initialised once.
"""

from __future__ import annotations

import logging
import time

import pytest

from collectors.fakenvml import ERROR_CODES, FakeNvml
from collectors.nvml import NvmlBackend
from telemetryd.codec import encode_json, json_decoder
from telemetryd.config import NvmlConfig
from telemetryd.errors import SourceUnavailable
from telemetryd.model import Gpu
from telemetryd.xid import XIDS, describe
from tests.nvmlfakes import RECORDINGS, backend, recording, sample, sample_until

NOT_SUPPORTED = ERROR_CODES["NVML_ERROR_NOT_SUPPORTED"]
decode_gpu = json_decoder(Gpu)


@pytest.mark.parametrize("card", sorted(RECORDINGS))
def test_every_recording_covers_every_call_and_decodes(card):
    lib = FakeNvml(recording(card))
    b = backend(lib)
    try:
        for _ in range(2):  # the second sample has GPM
            for gpu in sample(b).gpus:
                assert gpu.error is None
                assert decode_gpu(encode_json(gpu)) == gpu
    finally:
        b.close()
    assert lib.unrecorded == set(), f"{card} recording lacks answers to {lib.unrecorded}"


def test_h100_fields_are_converted_to_base_units():
    rec = recording("h100")
    dev = rec["devices"][0]
    b = backend(FakeNvml(rec))
    sample(b)
    gpu = sample(b).gpus[0]
    b.close()
    assert gpu.name == "NVIDIA H100 80GB HBM3"
    assert gpu.arch == "hopper"
    assert gpu.cuda_driver == "12.4"
    assert gpu.driver == "550.90.07"
    assert gpu.power_w == dev["nvmlDeviceGetPowerUsage"] / 1000
    assert gpu.power_limit_w == 700.0
    assert gpu.power_min_limit_w == 200.0
    assert gpu.energy_mj == dev["field:83"]["value"]
    assert gpu.nvlink_tx_bytes == dev["field:138@4294967295"]["value"] * 1024
    memory = dev["nvmlDeviceGetMemoryInfo(33554472)"]
    assert (gpu.fb_total_bytes, gpu.fb_reserved_bytes) == (memory["total"], memory["reserved"])
    assert gpu.fb_free_bytes == memory["free"]
    assert gpu.mem_temp_c == dev["field:82"]["value"]
    assert gpu.clock_event_reasons == ["gpu_idle"]
    assert gpu.pcie_tx_bytes_per_s == pytest.approx(dev["gpm:20"] * 2**20)  # GPM, MiB/s
    assert gpu.sm_active_pct == dev["gpm:2"]
    assert gpu.ecc_enabled is True and gpu.ecc_dbe_volatile == 0
    assert gpu.remap_pending is False and gpu.remap_failure is False
    assert gpu.recovery_action == "none"
    assert gpu.fan_pct is None  # SXM: no fan; absent, never 0
    assert gpu.temp_slowdown_c == 90 and gpu.temp_shutdown_c == 92
    assert gpu.processes == []


def test_pcie_card_without_ecc_gpm_or_new_driver_functions():
    rec = recording("a6000")
    b = backend(FakeNvml(rec))
    gpu = sample(b).gpus[0]
    b.close()
    assert gpu.fan_pct == 30
    assert gpu.ecc_enabled is False
    assert gpu.ecc_sbe_volatile is None and gpu.remap_pending is None  # unsupported: absent
    assert gpu.nvlink_tx_bytes is None
    assert gpu.mem_temp_c is None  # NVML reports 0 when there is no memory sensor
    assert gpu.sm_active_pct is None  # no GPM before Hopper
    assert gpu.pcie_tx_bytes_per_s == rec["devices"][0]["nvmlDeviceGetPcieThroughput(0)"] * 1024
    # r535 has no nvmlDeviceGetCurrentClocksEventReasons: the older name answers instead
    assert gpu.clock_event_reasons == ["gpu_idle"]
    assert gpu.mig_mode is None
    assert [p.type for p in gpu.processes] == ["graphics"]


def test_clock_events_fallback_is_quiet(caplog):
    b = backend(FakeNvml(recording("a6000")))
    with caplog.at_level(logging.WARNING):
        sample(b)
        sample(b)
    b.close()
    assert not [r for r in caplog.records if "ClocksEventReasons" in r.getMessage()]


def test_mig_gpu_reports_instances_and_their_processes():
    b = backend(FakeNvml(recording("a100-mig")))
    gpu = sample(b).gpus[0]
    b.close()
    assert gpu.mig_mode is True
    assert [(m.gi_id, m.name) for m in gpu.mig] == [
        (1, "NVIDIA A100-SXM4-40GB MIG 3g.20gb"),
        (2, "NVIDIA A100-SXM4-40GB MIG 3g.20gb"),
    ]
    assert gpu.util_gpu_pct is None  # NVML has no utilisation on a MIG GPU
    assert sorted((p.pid, p.gi_id) for p in gpu.processes) == [(40211, 1), (40377, 2)]


def test_not_supported_call_makes_only_its_field_absent():
    lib = FakeNvml(recording("h100"))
    lib.fail(0, "nvmlDeviceGetPowerUsage", NOT_SUPPORTED)
    b = backend(lib)
    gpu = sample(b).gpus[0]
    b.close()
    assert gpu.error is None
    assert gpu.power_w is None
    assert gpu.temp_c == 31 and gpu.power_limit_w == 700.0


def test_function_not_found_is_logged_once_with_a_hint(caplog):
    lib = FakeNvml(recording("h100"))
    lib.fail(0, "nvmlDeviceGetEnforcedPowerLimit", ERROR_CODES["NVML_ERROR_FUNCTION_NOT_FOUND"])
    b = backend(lib)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert sample(b).gpus[0].power_enforced_limit_w is None
    b.close()
    warnings = [r for r in caplog.records if "nvmlDeviceGetEnforcedPowerLimit" in r.getMessage()]
    assert len(warnings) == 1
    assert "driver" in warnings[0].getMessage()


def test_lost_gpu_is_reported_while_the_others_carry_on():
    lib = FakeNvml(recording("h100", gpus=3))
    b = backend(lib)
    sample(b)
    lib.lose(1)
    first = sample(b)
    second = sample(b)
    lib.lose(1, lost=False)
    back = sample(b)
    b.close()
    lost = first.gpus[1]
    assert lost.error is not None and lost.error.code == "gpu_lost"
    assert "XID 79" in lost.error.message
    assert lost.uuid.endswith("01")  # identity survives the loss
    assert [g.error for g in first.gpus if g.index != 1] == [None, None]
    assert first.gpus[0].power_w is not None
    assert [(e.kind, e.gpu_index) for e in first.events] == [("gpu_lost", 1)]
    assert second.events == []  # an event, not a sticky state
    assert [(e.kind, e.gpu_index) for e in back.events] == [("gpu_recovered", 1)]
    assert back.gpus[1].error is None and back.gpus[1].power_w is not None


def test_unknown_error_marks_the_gpu_and_not_the_field():
    lib = FakeNvml(recording("h100", gpus=2))
    lib.fail(0, "nvmlDeviceGetTemperature", ERROR_CODES["NVML_ERROR_UNKNOWN"])
    b = backend(lib)
    s = sample(b)
    b.close()
    assert s.gpus[0].error is not None and s.gpus[0].error.code == "unknown"
    assert "nvmlDeviceGetTemperature" in s.gpus[0].error.message
    assert s.gpus[1].error is None
    assert [e.kind for e in s.events] == ["gpu_error"]


def test_hung_call_costs_one_gpu_a_timeout_never_the_agent():
    lib = FakeNvml(recording("h100", gpus=2))
    b = backend(lib, timeout=0.3)
    lib.hang(1, "nvmlDeviceGetPowerUsage")
    started = time.monotonic()
    first = sample(b)
    elapsed = time.monotonic() - started
    second = sample(b)  # the worker is still stuck: answered at once, not queued behind it
    lib.release(1)
    time.sleep(0.1)
    third = sample(b)
    b.close()
    assert elapsed < 2.0
    assert first.gpus[1].error is not None and first.gpus[1].error.code == "timeout"
    assert "nvmlDeviceGetPowerUsage" in first.gpus[1].error.message
    assert first.gpus[0].error is None and first.gpus[0].power_w is not None
    assert second.gpus[1].error is not None and second.gpus[1].error.code == "hung"
    assert "has not returned" in second.gpus[1].error.message
    assert third.gpus[1].error is None
    assert [e.kind for e in third.events] == ["gpu_recovered"]


def test_nvml_is_initialised_once_and_handles_are_kept():
    lib = FakeNvml(recording("h100", gpus=4))
    b = backend(lib)
    for _ in range(5):
        sample(b)
    b.close()
    assert lib.initialised == 1
    assert lib.calls["nvmlDeviceGetHandleByIndex"] == 4
    assert lib.calls["nvmlDeviceGetName"] == 4  # identity read once, not per sample
    assert lib.calls["nvmlShutdown"] == 1


def test_nvml_that_does_not_load_is_unavailable_with_the_reason():
    class Broken(FakeNvml):
        def nvmlInit(self):
            raise self.NVMLError(ERROR_CODES["NVML_ERROR_LIBRARY_NOT_FOUND"])

    b = NvmlBackend(lambda: Broken(recording("h100")), NvmlConfig())
    with pytest.raises(SourceUnavailable, match="NVML is not available"):
        b.open()
    b.close()


def test_gpu_lost_before_start_gets_its_identity_when_it_returns():
    lib = FakeNvml(recording("h100", gpus=2))
    lib.lose(0)
    b = backend(lib)
    s = sample(b)
    assert s.gpus[0].error is not None and s.gpus[0].error.code == "gpu_lost"
    lib.lose(0, lost=False)
    gpu = sample(b).gpus[0]
    b.close()
    assert gpu.error is None and gpu.name == "NVIDIA H100 80GB HBM3"


def test_xid_is_delivered_once_with_meaning_and_action():
    lib = FakeNvml(recording("h100", gpus=2))
    b = backend(lib)
    lib.inject_event(1, 0x8, 79)
    s = sample_until(b, lambda s: bool(s.events))
    later = sample(b)
    b.close()
    (event,) = s.events
    assert (event.kind, event.code, event.gpu_index) == ("xid", 79, 1)
    assert event.name == "RC_GPU_HAS_FALLEN_OFF_THE_BUS"
    assert event.severity == "critical"
    assert "fallen off the bus" in event.message
    assert event.action and "restart" in event.action
    assert event.uuid == s.gpus[1].uuid
    assert later.events == []


def test_ecc_and_remap_events():
    lib = FakeNvml(recording("h100"))
    b = backend(lib)
    lib.inject_event(0, 0x2)
    lib.inject_event(0, 0x800)
    s = sample_until(b, lambda s: len(s.events) == 2)
    b.close()
    assert [(e.kind, e.severity) for e in s.events] == [
        ("ecc_dbe", "critical"),
        ("remap_failure", "critical"),
    ]


def test_events_not_registered_for_unsupported_types():
    lib = FakeNvml(recording("a6000"))  # ECC off: no ECC events offered
    b = backend(lib)
    lib.inject_event(0, 0x2)  # not registered, so never delivered
    lib.inject_event(0, 0x8, 13)
    s = sample_until(b, lambda s: bool(s.events))
    b.close()
    assert [(e.kind, e.code) for e in s.events] == [("xid", 13)]


def test_gpu_without_xid_events_is_reported():
    rec = recording("h100")
    rec["devices"][0]["nvmlDeviceGetSupportedEventTypes"] = 0
    b = backend(FakeNvml(rec))
    b.close()
    assert "XID" in b.unsupported_events[0]


def test_event_thread_stops_on_close():
    import threading

    b = backend(FakeNvml(recording("h100")))
    assert any(t.name == "telemetryd-nvml-events" for t in threading.enumerate())
    b.close()
    time.sleep(0.05)
    assert not any(t.name == "telemetryd-nvml-events" for t in threading.enumerate())


def test_events_can_be_switched_off():
    lib = FakeNvml(recording("h100"))
    b = backend(lib, events=False)
    b.close()
    assert lib.calls["nvmlDeviceRegisterEvents"] == 0


def test_processes_can_be_switched_off():
    b = backend(FakeNvml(recording("a6000")), processes=False)
    gpu = sample(b).gpus[0]
    b.close()
    assert gpu.processes is None


def test_xid_table_documents_the_codes_operators_page_on():
    required = {13, 31, 43, 45, 48, 61, 62, 63, 64, 68, 69, 74, 79, 92, 94, 95, 119, 120}
    assert required <= set(XIDS)
    for code in required:
        xid = describe(code)
        assert xid.meaning and xid.action and xid.severity in ("critical", "warning", "info")
    assert describe(79).severity == "critical" and describe(43).severity == "info"
    unknown = describe(4242)
    assert "not in telemetryd's table" in unknown.meaning and "dmesg" in unknown.action

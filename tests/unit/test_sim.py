"""The simulator: physics that moves like a real card, and faults that act where real ones do."""

from __future__ import annotations

import asyncio

import pytest

from collectors.cards import card_path
from collectors.fakenvml import load_recording
from collectors.nvml import NvmlBackend
from collectors.scenario import Fault, ScenarioError, load_scenario
from collectors.sim import SimNvml, create
from collectors.simphysics import HW_POWER_BRAKE, SW_POWER_CAP, SW_THERMAL, CardSpec, GpuPhysics
from telemetryd.config import AgentConfig, NvmlConfig, SimConfig
from telemetryd.errors import SourceUnavailable
from tests.nvmlfakes import sample, sample_until

H100 = load_recording(card_path("h100-sxm5-80gb"))
SPEC = CardSpec.from_recording(H100["devices"][0])


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def physics(workload: str = "training", seed: int = 7) -> GpuPhysics:
    return GpuPhysics(SPEC, workload, seed=seed, start_energy_mj=5e9)


def test_card_spec_comes_from_the_recording():
    assert SPEC.tdp_w == 700 and SPEC.idle_w == pytest.approx(71.432)
    assert SPEC.sm_max_mhz == 1980 and SPEC.slowdown_c == 90 and SPEC.nvlink


def test_energy_integrates_power_exactly_and_never_goes_back():
    p = physics()
    previous = p.state.energy_mj
    for step in range(1, 2401):  # 20 minutes
        before_power = p.state.energy_mj
        p.advance(step * 0.5)
        assert p.state.energy_mj >= previous
        assert p.state.energy_mj - before_power == pytest.approx(p.state.power_w * 0.5 * 1000)
        previous = p.state.energy_mj


def test_power_stays_between_idle_and_the_limit_and_follows_utilisation():
    p = physics()
    busy, idle = [], []
    for step in range(1, 3601):
        p.advance(step * 0.5)
        s = p.state
        assert SPEC.idle_w * 0.9 <= s.power_w <= p.power_limit_w
        (busy if s.util > 80 else idle if s.util == 0 else []).append(s.power_w)
    assert busy and idle
    assert min(busy) > max(idle) + 300


def test_temperature_lags_power():
    p = physics("idle")
    p.advance(600)
    cold = p.state.temp_c
    p.workload.kind = "training"
    p.workload._phases = [(0, 1e9, True, 98.0)]
    p.advance(608)  # utilisation (and so power) follows within seconds
    assert p.state.power_w > 400
    early = p.state.temp_c
    p.advance(660)
    minute = p.state.temp_c
    p.advance(1500)
    final = p.state.temp_c
    # temperature does not: a 30 s time constant, still climbing a minute later
    assert early - cold < 0.35 * (final - cold)
    assert early < minute < final
    assert final < SPEC.slowdown_c - 3  # healthy cooling keeps it below slowdown


def test_power_cap_lowers_clocks_and_sets_the_reason():
    p = physics()
    p.workload._phases = [(0, 1e9, True, 99.0)]
    p.power_limit_w = 350
    p.advance(120)
    assert p.state.power_w <= 350
    assert p.state.reasons & SW_POWER_CAP
    assert p.state.sm_mhz < SPEC.sm_max_mhz


def test_cooling_failure_throttles_thermally():
    p = physics()
    p.workload._phases = [(0, 1e9, True, 99.0)]
    p.cooling_loss = 1.0
    p.advance(600)
    assert p.state.temp_c >= SPEC.slowdown_c - 3
    assert p.state.reasons & SW_THERMAL
    assert p.state.sm_mhz < SPEC.sm_max_mhz * 0.9
    assert p.state.violation_thermal_ns > 0


def test_readings_depend_on_time_not_on_how_often_they_are_read():
    a, b = physics(seed=3), physics(seed=3)
    a.advance(900)
    for step in range(1, 901):
        b.advance(step * 1.0)
    assert a.state == b.state


def test_jobs_come_and_go():
    p = physics()
    pids = set()
    for step in range(1, 7201):
        p.advance(step * 1.0)
        pids |= {pid for pid, _ in p.state.processes}
        assert sum(b for _, b in p.state.processes) <= SPEC.fb_total_bytes - SPEC.fb_reserved_bytes
    assert len(pids) >= 3


def sim_backend(faults, gpus=2, clock=None, node="sim-01", timeout=2.0):
    clock = clock or Clock()
    lib = SimNvml(H100, gpus=gpus, node=node, faults=faults, clock=clock)
    b = NvmlBackend(lambda: lib, NvmlConfig(timeout=timeout))
    b.open()
    return b, lib, clock


def test_xid_79_takes_the_gpu_off_the_bus_then_it_returns():
    b, _, clock = sim_backend([Fault(at=5, gpu=1, kind="xid", code=79, duration=20)])
    assert sample(b).gpus[1].error is None
    clock.t += 6
    s = sample_until(b, lambda s: any(e.kind == "xid" for e in s.events))
    xid = next(e for e in s.events if e.kind == "xid")
    assert (xid.code, xid.gpu_index, xid.severity) == (79, 1, "critical")
    assert s.gpus[1].error is not None and s.gpus[1].error.code == "gpu_lost"
    assert s.gpus[0].error is None
    clock.t += 20
    back = sample(b)
    b.close()
    assert back.gpus[1].error is None
    assert [e.kind for e in back.events] == ["gpu_recovered"]


def test_gpu_lost_without_xid():
    b, _, clock = sim_backend([Fault(at=1, gpu=0, kind="gpu_lost")])
    clock.t += 2
    s = sample(b)
    b.close()
    assert s.gpus[0].error is not None and s.gpus[0].error.code == "gpu_lost"
    assert [e.kind for e in s.events] == ["gpu_lost"]


def test_thermal_fault_shows_in_clock_event_reasons():
    b, lib, clock = sim_backend([Fault(at=0, gpu=0, kind="thermal", duration=600)], gpus=1)
    lib.physics[0].workload._phases = [(0, 1e9, True, 99.0)]
    sample(b)
    clock.t += 400
    hot = sample(b).gpus[0]
    clock.t += 600
    cool = sample(b).gpus[0]
    b.close()
    assert "sw_thermal" in hot.clock_event_reasons
    assert hot.temp_c >= 87
    assert hot.throttle_thermal_ns > 0
    assert "sw_thermal" not in cool.clock_event_reasons


def test_power_brake_and_power_cap():
    faults = [
        Fault(at=0, gpu=0, kind="power_brake", duration=100),
        Fault(at=0, gpu=1, kind="power_cap", limit_w=300),
    ]
    b, lib, clock = sim_backend(faults)
    for p in lib.physics:
        p.workload._phases = [(0, 1e9, True, 99.0)]
    sample(b)
    clock.t += 60
    s = sample(b)
    b.close()
    assert "hw_power_brake" in s.gpus[0].clock_event_reasons
    assert s.gpus[1].power_limit_w == 300 and s.gpus[1].power_w <= 300
    assert "sw_power_cap" in s.gpus[1].clock_event_reasons
    assert lib.physics[0].state.reasons & HW_POWER_BRAKE


def test_ecc_dbe_counts_pends_a_remap_and_raises_events():
    b, _, clock = sim_backend([Fault(at=1, gpu=1, kind="ecc_dbe")])
    clock.t += 2
    s = sample_until(b, lambda s: len(s.events) >= 3)
    b.close()
    gpu = s.gpus[1]
    assert gpu.ecc_dbe_volatile == 1 and gpu.ecc_dbe_aggregate == 1
    assert gpu.remap_pending is True and gpu.remap_uncorrectable_rows == 1
    assert sorted((e.kind, e.code) for e in s.events) == [
        ("ecc_dbe", None),
        ("remap", None),
        ("xid", 48),
    ]


def test_remap_failure():
    b, _, clock = sim_backend([Fault(at=1, gpu=0, kind="remap_failure")])
    clock.t += 2
    s = sample_until(b, lambda s: len(s.events) >= 2)
    b.close()
    assert s.gpus[0].remap_failure is True
    assert {(e.kind, e.code) for e in s.events} == {("remap_failure", None), ("xid", 64)}


def test_hanging_nvml_call_becomes_a_timeout():
    faults = [Fault(at=1, gpu=1, kind="hang", call="nvmlDeviceGetPowerUsage", duration=30)]
    b, _, clock = sim_backend(faults, timeout=0.3)
    clock.t += 2
    s = sample(b)
    b.close()
    assert s.gpus[1].error is not None and s.gpus[1].error.code == "timeout"
    assert s.gpus[0].error is None


def test_faults_for_another_node_do_not_apply():
    b, _, clock = sim_backend([Fault(at=0, gpu=0, kind="gpu_lost", node="sim-99")])
    clock.t += 5
    s = sample(b)
    b.close()
    assert s.gpus[0].error is None


def test_simulated_gpus_are_unique_across_nodes():
    a = SimNvml(H100, gpus=8, node="a", clock=Clock())
    b = SimNvml(H100, gpus=8, node="b", clock=Clock())
    uuids = [d["nvmlDeviceGetUUID"] for d in a.devices + b.devices]
    buses = [d["nvmlDeviceGetPciInfo"]["busId"] for d in a.devices]
    assert len(set(uuids)) == 16 and len(set(buses)) == 8


def test_fault_on_a_gpu_the_node_does_not_have(tmp_path):
    scenario = tmp_path / "s.toml"
    scenario.write_text("[[fault]]\nat = 1\ngpu = 9\nkind = 'gpu_lost'\n")
    backend = create(AgentConfig(node="n", sim=SimConfig(gpus=8, scenario=str(scenario))))
    with pytest.raises(SourceUnavailable, match="GPU 9, but the node has 8"):
        backend.open()
    backend.close()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[fault]]\nat = 1\ngpu = 0\nkind = 'xid'\n", r"fault\[0\]\.code: an xid fault needs"),
        ("[[fault]]\nat = 1\ngpu = 0\nkind = 'meteor'\n", r"fault\[0\]\.kind"),
        ("[[fault]]\nat = -1\ngpu = 0\nkind = 'thermal'\n", r"fault\[0\]\.at: expected"),
        (
            "[[fault]]\nat = 1\ngpu = 0\nkind = 'thermal'\ncolour = 1\n",
            r"fault\[0\]\.colour: unknown",
        ),
        ("[[fault]]\nat = 1\ngpu = 0\nkind = 'power_cap'\n", "needs limit_w"),
        ("[[fault]]\nat = 1\ngpu = 0\nkind = 'hang'\ncall = 'rm -rf'\n", "NVML function name"),
        ("[[fault]\n", "invalid TOML"),
    ],
)
def test_scenario_errors_name_file_fault_and_key(tmp_path, text, message):
    path = tmp_path / "scenario.toml"
    path.write_text(text)
    with pytest.raises(ScenarioError, match=message) as info:
        load_scenario(str(path))
    assert str(path) in str(info.value)


def test_sim_backend_from_configuration_moves():
    cfg = AgentConfig(node="sim-01", sim=SimConfig(gpus=8, seed=1))
    b = create(cfg)
    b.open()
    s = asyncio.run(b.sample())
    b.close()
    assert len(s.gpus) == 8
    assert any(g.util_gpu_pct and g.util_gpu_pct > 50 for g in s.gpus)  # warmed up: a busy fleet
    assert len({g.uuid for g in s.gpus}) == 8

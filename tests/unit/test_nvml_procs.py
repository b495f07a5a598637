"""NVML process utilisation (collectors/nvml_procs.py) over recorded cards and the simulator."""

from __future__ import annotations

from typing import Any

from collectors.cards import card_path
from collectors.fakenvml import ERROR_CODES, PROCESS_UTILIZATION, FakeNvml, load_recording
from collectors.sim import SimNvml
from telemetryd.model import Gpu
from tests.nvmlfakes import backend, recording, sample

NOT_FOUND = ERROR_CODES["NVML_ERROR_NOT_FOUND"]
NOT_SUPPORTED = ERROR_CODES["NVML_ERROR_NOT_SUPPORTED"]


def _gpu(lib: FakeNvml, samples: int = 1) -> Gpu:
    b = backend(lib)
    try:
        for _ in range(samples - 1):
            sample(b)
        return sample(b).gpus[0]
    finally:
        b.close()


class Stamped(FakeNvml):
    """Answers a fixed ring of samples, as a driver would if nothing new came in."""

    def __init__(self, samples: list[dict[str, int]]) -> None:
        super().__init__(recording("a6000"))
        self.ring = samples
        self.asked: list[int] = []

    def process_samples(self, dev: int, mig: int | None, since_us: int) -> list[dict[str, int]]:
        self.asked.append(since_us)
        return list(self.ring)


def _s(pid: int, stamp: int, sm: int, mem: int = 0, enc: int = 0, dec: int = 0) -> dict[str, int]:
    return {"pid": pid, "timeStamp": stamp, "smUtil": sm, "memUtil": mem, "encUtil": enc,
            "decUtil": dec}  # fmt: skip


def test_highest_sample_per_pid_over_the_interval() -> None:
    gpu = _gpu(FakeNvml(recording("a6000")))
    assert gpu.processes is not None
    (proc,) = gpu.processes
    assert (proc.pid, proc.type) == (2211, "graphics")
    # recorded samples: sm 4/7/5, mem 2/3/2, dec 0/0/1
    assert (proc.sm_util_pct, proc.mem_util_pct, proc.enc_util_pct, proc.dec_util_pct) == (
        7,
        3,
        0,
        1,
    )


def test_last_seen_timestamp_is_kept_and_old_samples_are_not_counted_twice() -> None:
    lib = Stamped([_s(2211, 1_000_000, 40), _s(2211, 1_166_667, 60)])
    b = backend(lib)
    try:
        first = sample(b).gpus[0].processes
        second = sample(b).gpus[0].processes
        lib.ring = [_s(2211, 1_166_667, 60), _s(2211, 1_333_333, 20)]
        third = sample(b).gpus[0].processes
    finally:
        b.close()
    assert lib.asked == [0, 1_166_667, 1_166_667, 1_333_333][: len(lib.asked)]
    assert first is not None and first[0].sm_util_pct == 60
    assert second is not None and second[0].sm_util_pct is None  # nothing newer: absent
    assert third is not None and third[0].sm_util_pct == 20  # 60 was already counted


def test_values_are_clamped_and_other_pids_ignored() -> None:
    lib = Stamped([_s(2211, 5, 250, 101), _s(999, 6, 80)])
    proc = _gpu(lib).processes[0]  # type: ignore[index]
    assert (proc.sm_util_pct, proc.mem_util_pct) == (100, 100)


def test_not_found_is_absent_and_asked_again() -> None:
    lib = FakeNvml(recording("a6000"))
    lib.fail(0, PROCESS_UTILIZATION, NOT_FOUND)
    gpu = _gpu(lib, samples=3)
    assert gpu.processes is not None and gpu.processes[0].sm_util_pct is None
    assert lib.calls[PROCESS_UTILIZATION] == 3


def test_not_supported_is_absent_and_never_asked_again() -> None:
    lib = FakeNvml(recording("a6000"))
    lib.fail(0, PROCESS_UTILIZATION, NOT_SUPPORTED)
    gpu = _gpu(lib, samples=3)
    assert gpu.processes is not None and gpu.processes[0].sm_util_pct is None
    assert gpu.processes[0].used_memory_bytes == 1342177280
    assert lib.calls[PROCESS_UTILIZATION] == 1


def test_mig_instances_are_asked_once_each_then_left_alone() -> None:
    lib = FakeNvml(recording("a100-mig"))
    gpu = _gpu(lib, samples=3)
    assert gpu.processes is not None
    assert [(p.pid, p.gi_id) for p in gpu.processes] == [(40211, 1), (40377, 2)]
    assert all(p.sm_util_pct is None for p in gpu.processes)
    assert lib.calls[PROCESS_UTILIZATION] == 2


def test_no_process_no_call() -> None:
    lib = FakeNvml(recording("h100"))
    _gpu(lib, samples=2)
    assert lib.calls[PROCESS_UTILIZATION] == 0


def test_simulated_processes_carry_utilisation_that_follows_the_load() -> None:
    card: dict[str, Any] = load_recording(card_path("h100-sxm5-80gb"))
    lib = SimNvml(card, gpus=8, node="n1", seed=3, workload="training")
    b = backend(lib)
    try:
        gpus = sample(b).gpus
    finally:
        b.close()
    busy = [g for g in gpus if g.processes]
    assert busy, "a training node has jobs running"
    for gpu in busy:
        assert gpu.processes is not None and gpu.util_gpu_pct is not None
        proc = gpu.processes[0]
        assert proc.sm_util_pct is not None and proc.mem_util_pct is not None
        assert abs(proc.sm_util_pct - gpu.util_gpu_pct) <= 12
        assert proc.mem_util_pct < proc.sm_util_pct or proc.sm_util_pct == 0
        assert (proc.enc_util_pct, proc.dec_util_pct) == (0, 0)


def test_a_recording_keyed_by_the_recorder_replays() -> None:
    """``collect --record`` keys the call by its timestamp argument (0 on the first read)."""
    rec = recording("a6000")
    device = rec["devices"][0]
    device["nvmlDeviceGetProcessUtilization(0)"] = device.pop(PROCESS_UTILIZATION)
    lib = FakeNvml(rec)
    proc = _gpu(lib).processes[0]  # type: ignore[index]
    assert proc.sm_util_pct == 7
    assert not lib.unrecorded

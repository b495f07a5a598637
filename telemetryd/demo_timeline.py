"""The demo's story in time: the simulator's faults and the silent node, as announced steps.

The GPU faults live in ``demo_data/scenario.toml``, which the simulated agents read
themselves (the same file works with ``telemetryd agent --gpu-backend sim``). The silent
node is not a GPU fault, so it is defined here. Both become one list of steps, so the
headless demo can say what happens when it happens, and the docs can be checked against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources.abc import Traversable
from typing import Literal

from collectors.scenario import Fault, load_scenario


@dataclass(frozen=True, slots=True)
class Silence:
    """A node whose link to the broker freezes at ``at`` for ``duration`` seconds."""

    node: str
    at: float
    duration: float


SILENCE = Silence(node="sim-03", at=12.0, duration=20.0)


@dataclass(frozen=True, slots=True)
class Step:
    """Something the scenario does, ``at`` seconds after the agents start."""

    at: float
    what: str
    action: Literal["say", "freeze", "thaw"] = "say"


_STARTS = {
    "thermal": "{where}: cooling fails",
    "xid": "{where}: XID {code}",
    "gpu_lost": "{where}: falls off the bus",
    "power_brake": "{where}: power brake asserted",
    "power_cap": "{where}: power capped",
    "ecc_dbe": "{where}: double-bit ECC error",
    "remap_failure": "{where}: row remap failure",
    "hang": "{where}: NVML calls hang",
}
_ENDS = {
    "thermal": "{where}: cooling restored",
    "xid": "{where}: back on the bus",
    "gpu_lost": "{where}: back on the bus",
    "power_brake": "{where}: power brake released",
    "power_cap": "{where}: power cap lifted",
    "hang": "{where}: NVML answers again",
}


def _fault_steps(fault: Fault) -> list[Step]:
    where = f"{fault.node or 'every node'} GPU {fault.gpu}"
    start = _STARTS[fault.kind].format(where=where, code=fault.code)
    if fault.kind == "xid" and fault.code == 79:
        start += ", the GPU falls off the bus"
    if fault.duration is not None:
        start += f" (for {fault.duration:g} s)"
    steps = [Step(fault.at, start)]
    if fault.duration is not None and fault.kind in _ENDS:
        steps.append(Step(fault.at + fault.duration, _ENDS[fault.kind].format(where=where)))
    return steps


def timeline(scenario: Traversable, *, silence: bool = True) -> list[Step]:
    """Every step of the demo in time order (the silent node only when ``silence``)."""
    steps = [step for fault in load_scenario(str(scenario)).fault for step in _fault_steps(fault)]
    if silence:
        s = SILENCE
        steps += [
            Step(s.at, f"{s.node}: link to the broker stalls, the node goes silent "
                       f"(for {s.duration:g} s)", "freeze"),
            Step(s.at + s.duration, f"{s.node}: link restored, held reports delivered", "thaw"),
        ]  # fmt: skip
    return sorted(steps, key=lambda step: step.at)

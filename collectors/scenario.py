"""Fault scenarios for the simulator: what goes wrong, on which GPU, when, for how long.

A scenario is a TOML file of ``[[fault]]`` tables, timed in seconds from the agent's
start, optionally restricted to one node so several simulated nodes can share a file::

    [[fault]]
    at = 30          # seconds after start
    gpu = 5
    kind = "xid"     # thermal | power_brake | power_cap | xid | gpu_lost | ecc_dbe
                     # | remap_failure | hang
    code = 79        # xid: 79 also takes the GPU off the bus
    duration = 60    # seconds; absent = until the agent stops
    node = "sim-02"  # absent = every node
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

from telemetryd.codec import DecodeError, Meta, Struct, convert, field

Kind = Literal[
    "thermal", "power_brake", "power_cap", "xid", "gpu_lost", "ecc_dbe", "remap_failure", "hang"
]


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message names file, fault and key."""


class Fault(Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """One injected fault."""

    at: Annotated[float, Meta(ge=0)]
    gpu: Annotated[int, Meta(ge=0, le=63)]
    kind: Kind
    duration: Annotated[float, Meta(gt=0)] | None = None
    node: str | None = None
    code: Annotated[int, Meta(ge=1, le=10_000)] | None = None
    call: str = "*"
    limit_w: Annotated[float, Meta(gt=0)] | None = None


class Scenario(Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """A scenario file: a list of faults."""

    fault: list[Fault] = field(default_factory=list)


def load_scenario(path: str) -> Scenario:
    """Read and check a scenario; ScenarioError names the file, the fault and the key."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: invalid TOML: {exc}") from None
    try:
        scenario: Scenario = convert(raw, Scenario)
    except DecodeError as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    for i, fault in enumerate(scenario.fault):
        if fault.kind == "xid" and fault.code is None:
            raise ScenarioError(f"{path}: fault[{i}].code: an xid fault needs its code")
        if fault.kind == "power_cap" and fault.limit_w is None:
            raise ScenarioError(f"{path}: fault[{i}].limit_w: a power_cap fault needs limit_w")
        if fault.call != "*" and not fault.call.startswith("nvml"):
            raise ScenarioError(
                f"{path}: fault[{i}].call: expected an NVML function name such as "
                f"nvmlDeviceGetPowerUsage, or '*' (got {fault.call!r})"
            )
    return scenario

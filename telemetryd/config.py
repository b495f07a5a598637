"""The configuration schema: every key, its type, its range, its default and its meaning.

The description of each key lives here, beside its type, so that ``config sample`` and
docs are generated from the one place the loader validates against and cannot drift.
Durations are seconds, sizes bytes. Secrets are never values here: ``*_file`` keys name a
file (or a systemd credential) that holds them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from telemetryd.codec import Meta, Struct, field


def _doc(text: str, **constraints: Any) -> Meta:
    return Meta(description=text, **constraints)


class _Section(Struct, forbid_unknown_fields=True, kw_only=True):
    """A TOML table; unknown keys are errors, every key has a default."""


class TlsConfig(_Section):
    """TLS material for an ``mqtts://`` broker: CA, and a client certificate for mTLS."""

    ca_file: Annotated[
        str, _doc("CA bundle that signed the broker's certificate (PEM). Empty: the system store.")
    ] = ""
    cert_file: Annotated[
        str, _doc("Client certificate for mutual TLS (PEM). Empty: no client certificate.")
    ] = ""
    key_file: Annotated[str, _doc("Private key of cert_file (PEM).")] = ""


class NvmlConfig(_Section):
    """How GPUs are read through NVML (also used by the simulator, which imitates NVML)."""

    timeout: Annotated[
        float,
        _doc(
            "Seconds one GPU may take to answer a sample before it is reported as timed out.",
            gt=0,
            le=120,
        ),
    ] = 5.0
    events: Annotated[
        bool, _doc("Listen for XID, ECC and row-remap events through an NVML event set.")
    ] = True
    processes: Annotated[bool, _doc("Report the processes running on each GPU.")] = True
    pcie_throughput: Annotated[
        Literal["auto", "gpm", "nvml", "off"],
        _doc(
            "Source of PCIe TX/RX rates: 'auto' (GPM where supported, else NVML's"
            " 20 ms sampler), 'gpm', 'nvml' or 'off'."
        ),
    ] = "auto"


class SimConfig(_Section):
    """The simulated node used by ``gpu_backend = "sim"``: NVML imitated, physics included."""

    gpus: Annotated[int, _doc("Number of simulated GPUs.", ge=1, le=64)] = 8
    card: Annotated[
        str,
        _doc(
            "Card the simulated GPUs are shaped after: a recording name shipped "
            "with telemetryd (h100-sxm5-80gb) or a path to a recording made by "
            "'collect --record'."
        ),
    ] = "h100-sxm5-80gb"
    workload: Annotated[
        Literal["training", "inference", "idle", "mixed"],
        _doc(
            "Load pattern: 'training' (long busy phases), 'inference' (bursty), "
            "'idle' or 'mixed' (GPUs differ)."
        ),
    ] = "mixed"
    scenario: Annotated[
        str,
        _doc("TOML file of faults to inject (XID, GPU lost, throttling, ECC, hangs). Empty: none."),
    ] = ""
    seed: Annotated[
        int, _doc("Random seed; the same seed and node name give the same readings.", ge=0)
    ] = 0


class HostConfig(_Section):
    """The psutil host collector."""

    mounts: Annotated[list[str], _doc("Mount points whose space is reported.")] = field(
        default_factory=lambda: ["/"]
    )
    interfaces: Annotated[
        list[str], _doc("Network interfaces reported. Empty: all except loopback.")
    ] = field(default_factory=list)
    disks: Annotated[
        list[str],
        _doc("Block devices whose IO is reported. Empty: all except loop, ram and zram devices."),
    ] = field(default_factory=list)
    per_core: Annotated[
        bool, _doc("Report utilisation of every CPU core as well as the total.")
    ] = True


class _BrokerSection(_Section):
    """Keys every MQTT client role shares: where the broker is and how to log in."""

    broker: Annotated[
        str,
        _doc(
            "MQTT broker URL: mqtt://[user@]host[:1883] or "
            "mqtts://[user@]host[:8883]. No password in the URL."
        ),
    ] = "mqtt://localhost:1883"
    password_file: Annotated[
        str,
        _doc(
            "File holding the MQTT password. Empty: $CREDENTIALS_DIRECTORY/mqtt-"
            "password when present."
        ),
    ] = ""
    tls: TlsConfig = field(default_factory=TlsConfig)


class AgentConfig(_BrokerSection):
    """``[agent]``: what runs on every GPU node."""

    node: Annotated[
        str, _doc("This node's name in topics and the store. Empty: the host name's first label.")
    ] = ""
    cluster: Annotated[str, _doc("Cluster (site, partition) this node belongs to.")] = "default"
    interval: Annotated[
        float,
        _doc(
            "Seconds between reports; samples are aligned to multiples of it on the wall clock.",
            ge=0.1,
            le=3600,
        ),
    ] = 10.0
    gpu_backend: Annotated[
        str, _doc("GPU source: 'auto' (NVML if it loads, else none), 'nvml', 'sim' or 'none'.")
    ] = "auto"
    collectors: Annotated[
        list[str],
        _doc(
            "Host collector plugins to run: built in 'host' (psutil), 'rapl' "
            "(CPU/DRAM energy), 'hwmon' (temperatures, fans), or any registered "
            "under the 'telemetryd.collectors' entry point."
        ),
    ] = field(default_factory=lambda: ["host", "rapl", "hwmon"])
    state_dir: Annotated[
        str,
        _doc(
            "Directory for the spool and state. Empty: $STATE_DIRECTORY under "
            "systemd, else /var/lib/telemetryd."
        ),
    ] = ""
    collector_timeout: Annotated[
        float,
        _doc(
            "Seconds a host collector may take before it is reported as timed out"
            " (a stale NFS mount, a wedged sysfs file).",
            gt=0,
            le=120,
        ),
    ] = 5.0
    sysfs: Annotated[
        str, _doc("Root of sysfs, for RAPL and hwmon (a container may mount the host's elsewhere).")
    ] = "/sys"
    nvml: NvmlConfig = field(default_factory=NvmlConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    host: HostConfig = field(default_factory=HostConfig)
    plugins: Annotated[
        dict[str, dict[str, Any]],
        _doc("Options of third-party collector plugins, one table per plugin name."),
    ] = field(default_factory=dict)


class AggregatorConfig(_BrokerSection):
    """``[aggregator]``: what runs at the centre."""

    clusters: Annotated[list[str], _doc("Clusters to consume; '+' is every cluster.")] = field(
        default_factory=lambda: ["+"]
    )
    sinks: Annotated[
        list[str],
        _doc(
            "Where accepted reports are written: sqlite:///PATH, "
            "influxdb2://host:8086?org=O&bucket=B, influxdb://host:8086/DB. "
            "Empty: SQLite in the state directory."
        ),
    ] = field(default_factory=list)
    listen: Annotated[
        str, _doc("HOST:PORT serving /metrics, /healthz and /readyz. Empty: not served.")
    ] = ""
    state_dir: Annotated[
        str,
        _doc(
            "Directory for the write-ahead log, dead letters and alert state. "
            "Empty: $STATE_DIRECTORY under systemd, else /var/lib/telemetryd."
        ),
    ] = ""


class Config(_Section):
    """A whole configuration file: one table per role."""

    agent: AgentConfig = field(default_factory=AgentConfig)
    aggregator: AggregatorConfig = field(default_factory=AggregatorConfig)


ROLES = ("agent", "aggregator")

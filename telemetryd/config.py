"""The configuration schema: every key, its type, its range, its default and its meaning.

The description of each key lives here, beside its type, so that ``config sample`` and
docs are generated from the one place the loader validates against and cannot drift.
Durations are seconds, sizes bytes. Secrets are never values here: ``*_file`` keys name a
file (or a systemd credential) that holds them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from telemetryd.codec import field
from telemetryd.config_alerts import AlertsConfig
from telemetryd.config_outputs import InfluxConfig, PrometheusConfig
from telemetryd.configbase import Section as _Section
from telemetryd.configbase import doc as _doc

__all__ = [
    "ROLES",
    "AgentConfig",
    "AggregatorConfig",
    "AlertsConfig",
    "AttributionConfig",
    "BrokerConfig",
    "Config",
    "HostConfig",
    "InfluxConfig",
    "NvmlConfig",
    "PrometheusConfig",
    "SimConfig",
    "TlsConfig",
    "TopConfig",
]


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
    jobs: Annotated[
        bool,
        _doc(
            "Act as the node's scheduler: each simulated job (a GPU's busy phase) is written"
            " to [agent.attribution] job_map_dir while it runs, as a Slurm prolog would."
        ),
    ] = False


class AttributionConfig(_Section):
    """Who uses the GPUs: processes, jobs, pods, and energy per job (docs/attribution.md)."""

    host_processes: Annotated[
        bool,
        _doc("Add each GPU process's user, command line, CPU and RSS (psutil)."),
    ] = True
    command: Annotated[
        Literal["full", "name", "off"],
        _doc(
            "Command line of GPU processes: 'full' (with arguments), 'name' (the program"
            " only: arguments may hold secrets) or 'off'."
        ),
    ] = "full"
    command_max: Annotated[
        int, _doc("Characters of a command line kept; the rest is cut.", ge=8, le=256)
    ] = 128
    proc_root: Annotated[
        str, _doc("Root of procfs (a container may mount the host's elsewhere).")
    ] = "/proc"
    job_map_dir: Annotated[
        str,
        _doc(
            "Job mapping directory (dcgm-exporter's --hpc-job-mapping-dir): one file per GPU"
            " index, or <gpu>.<gi> for a MIG instance, listing the job ids on it; written by"
            " a Slurm prolog (examples/slurm/). Empty: not read."
        ),
    ] = ""
    kubelet_socket: Annotated[
        str,
        _doc(
            "The kubelet's pod-resources socket, for pod, namespace and container by GPU"
            " (needs the 'k8s' extra). Empty: not asked;"
            " usually /var/lib/kubelet/pod-resources/kubelet.sock."
        ),
    ] = ""
    kubelet_timeout: Annotated[
        float, _doc("Seconds one pod-resources request may take.", gt=0, le=30)
    ] = 2.0
    jobs: Annotated[
        bool,
        _doc("Account energy and utilisation per job and publish job records in reports."),
    ] = True


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
    mqtt_version: Annotated[
        Literal["5", "3.1.1"],
        _doc("MQTT protocol version. 5 falls back to 3.1.1 once if the broker refuses it."),
    ] = "5"
    keepalive: Annotated[
        int,
        _doc(
            "Seconds between MQTT keepalives; the broker declares a silent client gone "
            "(and publishes its Last Will) after 1.5 times this.",
            ge=2,
            le=3600,
        ),
    ] = 30
    reconnect_max: Annotated[
        float,
        _doc(
            "Longest wait in seconds between reconnection attempts (the wait doubles from "
            "0.5 s up to this, with jitter so a fleet does not reconnect in step).",
            ge=0.5,
            le=600,
        ),
    ] = 15.0
    client_id: Annotated[
        str,
        _doc(
            "MQTT client id. Empty: telemetryd-<role>-<cluster>-<node> for an agent, "
            "telemetryd-aggregator-<host> for an aggregator. It must be stable: the "
            "aggregator's queued messages wait at the broker under it."
        ),
    ] = ""


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
    attribution: AttributionConfig = field(default_factory=AttributionConfig)
    spool_max_bytes: Annotated[
        int,
        _doc(
            "Bytes of unacknowledged reports kept on disk while the broker is unreachable; "
            "beyond that the oldest are dropped and counted.",
            ge=1 << 16,
        ),
    ] = 256 << 20
    spool_max_age: Annotated[
        float,
        _doc("Seconds an unacknowledged report is kept before it is dropped and counted.", gt=0),
    ] = 3 * 86400.0
    backlog_rate: Annotated[
        float,
        _doc(
            "Reports per second sent from the spool after a reconnect, oldest first, "
            "while new reports keep flowing at once.",
            gt=0,
        ),
    ] = 50.0
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
            "Where accepted reports are written: sqlite:///PATH[?retention_days=N&raw_days=N], "
            "influxdb2://host:8086?org=O&bucket=B (influxdb2s:// for https), "
            "influxdb://[USER@]host:8086/DB[?rp=RP] (influxdbs:// for https). "
            "Empty: SQLite in the state directory."
        ),
    ] = field(default_factory=list)
    shared_group: Annotated[
        str,
        _doc(
            "Share the load with other aggregators through $share/<group>/... (MQTT 5). "
            "Empty: this aggregator consumes every message."
        ),
    ] = ""
    members: Annotated[
        int,
        _doc(
            "How many aggregators share shared_group. Above 1, each node is owned by one "
            "member (a stable hash) and reports of other nodes are forwarded to their "
            "owner, so alert state never splits (docs/sharing.md).",
            ge=1,
        ),
    ] = 1
    member: Annotated[
        int,
        _doc("This aggregator's index among the members: 0 .. members-1.", ge=0),
    ] = 0
    session_expiry: Annotated[
        int,
        _doc(
            "Seconds the broker keeps this aggregator's session (and queues its messages) "
            "while it is down.",
            ge=60,
        ),
    ] = 7 * 86400
    max_payload_bytes: Annotated[
        int, _doc("Largest report accepted; bigger ones are dead-lettered.", ge=1024)
    ] = 4 << 20
    max_clock_skew: Annotated[
        float,
        _doc("Seconds a report's time may lie in the future before it is refused.", gt=0),
    ] = 300.0
    max_report_age: Annotated[
        float,
        _doc(
            "Seconds a report may be old before it is refused (spooled reports arrive late "
            "after an outage; keep this above the agents' spool_max_age).",
            gt=0,
        ),
    ] = 30 * 86400.0
    wal_max_bytes: Annotated[
        int,
        _doc(
            "Bytes of write-ahead log kept for sinks that lag or are down; when full, "
            "messages stay unacknowledged at the broker.",
            ge=1 << 20,
        ),
    ] = 1 << 30
    deadletter_max_bytes: Annotated[
        int,
        _doc("Bytes of the dead-letter file before it rotates (one old file is kept).", ge=4096),
    ] = 64 << 20
    batch_size: Annotated[
        int, _doc("Messages synced and acknowledged together, at most.", ge=1, le=100_000)
    ] = 1000
    sink_retry_max: Annotated[
        float,
        _doc(
            "Longest wait in seconds between two attempts of a sink that fails (the wait "
            "doubles from 0.5 s up to this, with jitter; a store's Retry-After may ask for more).",
            ge=0.5,
            le=3600,
        ),
    ] = 60.0
    batch_wait: Annotated[
        float,
        _doc("Seconds a message may wait for its batch to fill before it is synced.", gt=0, le=10),
    ] = 0.05
    fleet_interval: Annotated[
        float,
        _doc("Seconds between publications of the retained fleet summary.", gt=0),
    ] = 5.0
    rollup_interval: Annotated[
        float,
        _doc(
            "Seconds between the retained per-node rollups on telemetry/v1/<cluster>/_rollup/"
            "<node> that a site bridges to a national broker (docs/federation.md); 0: none. "
            "Not below fleet_interval.",
            ge=0,
        ),
    ] = 60.0
    silent_after: Annotated[
        float,
        _doc("A node without a report for this many of its intervals is 'silent'.", gt=1),
    ] = 3.0
    state_dir: Annotated[
        str,
        _doc(
            "Directory for the write-ahead log, dead letters and alert state. "
            "Empty: $STATE_DIRECTORY under systemd, else /var/lib/telemetryd."
        ),
    ] = ""
    listen: Annotated[
        str,
        _doc("HOST:PORT serving /metrics (Prometheus), /healthz and /readyz. Empty: not served."),
    ] = ""
    influxdb: InfluxConfig = field(default_factory=InfluxConfig)
    prometheus: PrometheusConfig = field(default_factory=PrometheusConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)


class BrokerConfig(_Section):
    """``[broker]``: the embedded MQTT broker (amqtt), for one machine and small sites."""

    listen: Annotated[
        str,
        _doc(
            "HOST:PORT to listen on. Anything but loopback needs cert_file/key_file and "
            "password_file: an open broker would let anyone write telemetry."
        ),
    ] = "127.0.0.1:1883"
    cert_file: Annotated[str, _doc("Server certificate (PEM) for MQTT over TLS.")] = ""
    key_file: Annotated[str, _doc("Private key of cert_file (PEM).")] = ""
    password_file: Annotated[
        str,
        _doc(
            "User file (one 'user:hash' line each; make lines with 'telemetryd broker passwd "
            "USER') for password authentication. Empty: anonymous clients (loopback only)."
        ),
    ] = ""


class TopConfig(_BrokerSection):
    """``[top]``: the operator's views (``telemetryd top`` and ``telemetryd status``)."""

    mqtt_version: Annotated[
        Literal["5", "3.1.1"],
        _doc(
            "MQTT protocol version. 3.1.1 by default for a viewer: it uses no MQTT 5 feature, "
            "and the client library decodes MQTT 5 properties on every message (measured "
            "~15% of top's CPU at 1,000 reports/s). top's silence requests still go over "
            "MQTT 5, so the broker can say when its ACL refuses them."
        ),
    ] = "3.1.1"

    cluster: Annotated[str, _doc("Cluster to watch; '+' watches every cluster on the broker.")] = (
        "+"
    )
    refresh: Annotated[
        float,
        _doc(
            "Seconds between redraws of top. Updates arriving in between are coalesced, so "
            "a large fleet costs the same number of redraws as a small one.",
            ge=0.1,
            le=60,
        ),
    ] = 1.0
    history: Annotated[
        int,
        _doc("Samples kept per GPU and metric for sparklines (one ring buffer each).", ge=10),
    ] = 180
    silent_after: Annotated[
        float,
        _doc("A node without a report for this many of its intervals is shown 'silent'.", gt=1),
    ] = 3.0
    allow_silence: Annotated[
        bool,
        _doc(
            "Let top add silences (published to the aggregator, which must also accept them: "
            "[aggregator.alerts] mqtt_silences). Off: top is read-only."
        ),
    ] = False
    silence_duration: Annotated[
        str, _doc("Default length of a silence added from top (30m, 2h, 1d).")
    ] = "2h"
    metric: Annotated[
        Literal["util", "temp", "power", "mem"],
        _doc("Metric the fleet heatmap is coloured by at start (m cycles it)."),
    ] = "util"
    wait: Annotated[
        float,
        _doc(
            "status: longest wait in seconds for retained state and one report per node "
            "before it answers with what it has.",
            gt=0,
            le=120,
        ),
    ] = 5.0


class Config(_Section):
    """A whole configuration file: one table per role."""

    agent: AgentConfig = field(default_factory=AgentConfig)
    aggregator: AggregatorConfig = field(default_factory=AggregatorConfig)
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    top: TopConfig = field(default_factory=TopConfig)


ROLES = ("agent", "aggregator", "broker", "top")

"""Checks that need more than a type: names, URLs, plugins, files.

These run after every key has its type, so each message can be about meaning: a node
name that would escape its MQTT topic, a collector nobody registered, a key file that
cannot be read. Each problem is one line naming where the key came from.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from telemetryd import registry
from telemetryd.config import AgentConfig, AggregatorConfig, BrokerConfig, Config, TlsConfig
from telemetryd.config_alerts import AlertsConfig
from telemetryd.errors import ConfigError
from telemetryd.names import name_problem
from telemetryd.secrets import secret_path, unreadable
from telemetryd.urls import SinkUrl, UrlError, parse_broker_url, parse_listen, parse_sink_url

Where = Callable[[str], str]


def _broker(url: str, tls: TlsConfig, password_file: str, key: str, where: Where) -> list[str]:
    problems: list[str] = []
    try:
        broker = parse_broker_url(url)
    except UrlError as exc:
        return [f"{where(key + '.broker')}: {key}.broker: {exc}"]
    for name in ("ca_file", "cert_file", "key_file"):
        value = getattr(tls, name)
        dotted = f"{key}.tls.{name}"
        if value and not broker.tls:
            problems.append(f"{where(dotted)}: {dotted}: set, but broker {url!r} is not mqtts://")
        elif value and (reason := unreadable(value)):
            problems.append(f"{where(dotted)}: {dotted}: {reason}")
    if bool(tls.cert_file) != bool(tls.key_file):
        given, missing = ("cert_file", "key_file") if tls.cert_file else ("key_file", "cert_file")
        dotted = f"{key}.tls.{missing}"
        problems.append(
            f"{where(f'{key}.tls.{given}')}: {dotted}: missing; cert_file and key_file go together"
        )
    if password_file and (reason := unreadable(password_file)):
        problems.append(f"{where(key + '.password_file')}: {key}.password_file: {reason}")
    return problems


def _absolute(value: str, dotted: str, where: Where) -> list[str]:
    if value and not Path(value).is_absolute():
        return [f"{where(dotted)}: {dotted}: expected an absolute path (got {value!r})"]
    return []


def _agent(cfg: AgentConfig, where: Where) -> list[str]:
    problems: list[str] = []
    for key in ("node", "cluster"):
        value = getattr(cfg, key)
        if (value or key == "cluster") and (problem := name_problem(value)):
            problems.append(f"{where('agent.' + key)}: agent.{key}: {problem}")
    backends = registry.gpu_backend_names()
    if cfg.gpu_backend not in ("auto", "none", *backends):
        choices = ", ".join(repr(b) for b in ("auto", "none", *backends))
        problems.append(
            f"{where('agent.gpu_backend')}: agent.gpu_backend: expected one of {choices} "
            f"(got {cfg.gpu_backend!r})"
        )
    known = registry.collector_names()
    seen: set[str] = set()
    for name in cfg.collectors:
        if name not in known:
            problems.append(
                f"{where('agent.collectors')}: agent.collectors: no collector named {name!r}; "
                f"registered: {', '.join(known)}"
            )
        elif name in seen:
            problems.append(f"{where('agent.collectors')}: agent.collectors: {name!r} listed twice")
        seen.add(name)
    problems += _broker(cfg.broker, cfg.tls, cfg.password_file, "agent", where)
    problems += _absolute(cfg.state_dir, "agent.state_dir", where)
    problems += _absolute(cfg.sysfs, "agent.sysfs", where)
    for mount in cfg.host.mounts:
        problems += _absolute(mount, "agent.host.mounts", where)
    if cfg.sim.scenario:
        from collectors.scenario import ScenarioError, load_scenario

        try:
            load_scenario(cfg.sim.scenario)
        except ScenarioError as exc:
            problems.append(f"{where('agent.sim.scenario')}: agent.sim.scenario: {exc}")
    if cfg.sim.jobs and cfg.gpu_backend == "sim" and not cfg.attribution.job_map_dir:
        from collectors.simjobs import SIM_JOBS_NEED_DIR

        problems.append(f"{where('agent.sim.jobs')}: agent.sim.jobs: {SIM_JOBS_NEED_DIR}")
    att = cfg.attribution
    if att.kubelet_socket and att.kubelet_timeout >= cfg.collector_timeout:
        problems.append(
            f"{where('agent.attribution.kubelet_timeout')}: agent.attribution.kubelet_timeout: "
            f"expected less than agent.collector_timeout ({cfg.collector_timeout:g} s): a slow "
            f"kubelet would cost the whole attribution stage (got {att.kubelet_timeout:g})"
        )
    for key in ("proc_root", "job_map_dir", "kubelet_socket"):
        problems += _absolute(getattr(att, key), f"agent.attribution.{key}", where)
    from collectors.cards import CardError, card_path

    try:
        card_path(cfg.sim.card)
    except CardError as exc:
        problems.append(f"{where('agent.sim.card')}: agent.sim.card: {exc}")
    return problems


def _aggregator(cfg: AggregatorConfig, where: Where, env: Mapping[str, str]) -> list[str]:
    problems = _broker(cfg.broker, cfg.tls, cfg.password_file, "aggregator", where)
    for cluster in cfg.clusters:
        if cluster != "+" and (problem := name_problem(cluster)):
            problems.append(f"{where('aggregator.clusters')}: aggregator.clusters: {problem}")
    kinds = registry.sink_kinds()
    for sink in cfg.sinks:
        try:
            url = parse_sink_url(sink)
        except UrlError as exc:
            problems.append(f"{where('aggregator.sinks')}: aggregator.sinks: {exc}")
            continue
        if url.kind not in kinds:
            problems.append(
                f"{where('aggregator.sinks')}: aggregator.sinks: {url.kind} sinks are not "
                f"available in this version; available: {', '.join(kinds)}"
            )
            continue
        try:  # the sink's own options (retention_days=...): factories do no I/O
            registry.sink_factory(url.kind)(url, cfg)
        except UrlError as exc:
            problems.append(f"{where('aggregator.sinks')}: aggregator.sinks: {exc}")
        problems += _influx_secrets(cfg, url, where, env)
    if cfg.shared_group and (problem := name_problem(cfg.shared_group)):
        problems.append(f"{where('aggregator.shared_group')}: aggregator.shared_group: {problem}")
    problems += _members(cfg, where)
    problems += _absolute(cfg.state_dir, "aggregator.state_dir", where)
    if 0 < cfg.rollup_interval < cfg.fleet_interval:
        problems.append(f"{where('aggregator.rollup_interval')}: aggregator.rollup_interval: "
                        f"{cfg.rollup_interval:g} is below fleet_interval "
                        f"({cfg.fleet_interval:g}); expected 0 (off) or at least that")  # fmt: skip
    if cfg.listen:
        try:
            parse_listen(cfg.listen)
        except UrlError as exc:
            problems.append(f"{where('aggregator.listen')}: aggregator.listen: {exc}")
    return problems + _alerts(cfg.alerts, where)


def _members(cfg: AggregatorConfig, where: Where) -> list[str]:
    """Sharing: an index inside the group, and a group to share (docs/sharing.md)."""
    from telemetryd.shard import membership_problem

    problem = membership_problem(cfg)
    return [f"{where(problem[0])}: {problem[0]}: {problem[1]}"] if problem else []


def _alerts(cfg: AlertsConfig, where: Where) -> list[str]:
    """Rules and routing the aggregator would refuse at start, each problem on its line.

    The shipped pack alone is not re-read (it is checked when it is built); with a
    rules_dir it is loaded too, since a site rule may reuse one of its names. Receivers'
    secrets are read when the aggregator builds the hooks, not here.
    """
    if not cfg.enabled:
        return []
    problems: list[str] = []
    checks: list[tuple[str, Callable[[], object]]] = []
    if cfg.rules_dir:
        from telemetryd.alerting.service import configured_rules

        checks.append(("aggregator.alerts.rules_dir", lambda: configured_rules(cfg)))
    if cfg.routing_file:
        from telemetryd.alerting.routing import load_routing

        checks.append(("aggregator.alerts.routing_file", lambda: load_routing(cfg.routing_file)))
    for dotted, check in checks:
        try:
            check()
        except ConfigError as exc:
            problems += [f"{where(dotted)}: {dotted}: {problem}" for problem in exc.problems]
    return problems


def _influx_secrets(
    cfg: AggregatorConfig, url: SinkUrl, where: Where, env: Mapping[str, str]
) -> list[str]:
    """An InfluxDB sink that cannot log in is a configuration error, found before start."""
    if url.kind == "influxdb2":
        key, credential, need = "token_file", "influxdb-token", True
    elif url.kind == "influxdb":
        key, credential, need = "password_file", "influxdb-password", bool(url.username)
    else:
        return []
    dotted = f"aggregator.influxdb.{key}"
    configured = getattr(cfg.influxdb, key)
    path = secret_path(configured, credential, env)
    if path is None:
        if not need:
            return []
        what = "an InfluxDB 2 sink" if url.kind == "influxdb2" else f"user {url.username!r}"
        return [
            f"{where(dotted)}: {dotted}: empty, and no systemd credential {credential}; "
            f"{what} needs one"
        ]
    if reason := unreadable(path):
        return [f"{where(dotted)}: {dotted}: {reason}"]
    return []


def _broker_section(cfg: BrokerConfig, where: Where) -> list[str]:
    problems: list[str] = []
    try:
        host, _ = parse_listen(cfg.listen)
    except UrlError as exc:
        return [f"{where('broker.listen')}: broker.listen: {exc}"]
    for key in ("cert_file", "key_file", "password_file"):
        value = getattr(cfg, key)
        if value and (reason := unreadable(value)):
            problems.append(f"{where('broker.' + key)}: broker.{key}: {reason}")
    if bool(cfg.cert_file) != bool(cfg.key_file):
        problems.append(f"{where('broker.cert_file')}: broker.cert_file: goes with key_file")
    if not is_loopback(host) and not (cfg.cert_file and cfg.password_file):
        problems.append(
            f"{where('broker.listen')}: broker.listen: {cfg.listen!r} is not loopback; "
            "expected TLS (cert_file, key_file) and authentication (password_file) with it"
        )
    return problems


def is_loopback(host: str) -> bool:
    """Whether a listen host only accepts connections from this machine."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def semantic_problems(cfg: Config, where: Where, env: Mapping[str, str]) -> list[str]:
    """Every meaning-level problem of a typed configuration, one line each."""
    problems = _agent(cfg.agent, where) + _aggregator(cfg.aggregator, where, env)
    problems += _broker_section(cfg.broker, where)
    if not (cfg.agent.password_file and cfg.aggregator.password_file):
        path = secret_path("", "mqtt-password", env)
        if path and (reason := unreadable(path)):
            problems.append(f"systemd credential mqtt-password (password_file empty): {reason}")
    return problems

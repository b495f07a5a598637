"""Configuration: schema errors, precedence, semantic checks, secrets and samples.

Every error is one line "<origin>: <dotted.key>: <problem>", where origin is FILE:LINE,
"environment VAR" or "option --x"; these tests pin the exact lines so a change of wording
or a lost line number shows up here. Every load passes an explicit ``env`` so variables of
the machine running the tests cannot leak in.
"""

from __future__ import annotations

import operator
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetryd import registry
from telemetryd.config import AgentConfig, AggregatorConfig, Config
from telemetryd.configload import ENV_PREFIX, env_name, field_types, leaf_keys, load
from telemetryd.configrender import render
from telemetryd.errors import ConfigError, TelemetrydError
from telemetryd.names import NAME_PATTERN, name_problem
from telemetryd.secrets import Secret, read_secret, secret_path, unreadable
from telemetryd.urls import parse_sink_url, redact
from tests.conftest import SECRET

RULE = (
    "expected letters, digits, '.', '-' and '_', starting with a letter or digit, "
    "at most 64 characters"
)
# "<origin>: <dotted.key>: <problem>"; the origin is a path, a variable or an option.
LINE = re.compile(r"^(?P<origin>.+?): (?P<key>[a-z_]+(?:\.[a-z_]+)*): (?P<problem>\S.*)$")


def write(tmp_path: Path, text: str, name: str = "telemetryd.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def toml_str(value: str) -> str:
    """A TOML basic string for any text (control characters and DEL escaped)."""
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def problems(
    path: str | None = None,
    *,
    env: dict[str, str] | None = None,
    overrides: dict[str, tuple[str, Any]] | None = None,
) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(path, env={} if env is None else env, overrides=overrides)
    exc = info.value
    assert isinstance(exc, TelemetrydError)
    assert str(exc).splitlines() == exc.problems, "each problem is exactly one line"
    return exc.problems


def only(found: list[str]) -> str:
    assert len(found) == 1, found
    return found[0]


def backends() -> str:
    return ", ".join(repr(b) for b in ("auto", "none", *registry.gpu_backend_names()))


# --- schema errors, one line each ------------------------------------------------------


def test_defaults_load_without_file_or_environment() -> None:
    loaded = load(None, env={})
    assert loaded.config == Config()
    assert loaded.sections == ("agent", "aggregator", "broker", "top")
    assert loaded.config.agent.cluster == "default"
    assert loaded.config.agent.sim.gpus == 8


def test_unknown_key_suggests_the_close_one(tmp_path: Path) -> None:
    path = write(tmp_path, '[agent]\nnode = "n1"\nnodee = "x"\n')
    assert only(problems(path)) == f"{path}:3: agent.nodee: unknown key; did you mean 'node'?"


def test_unknown_nested_key_suggests(tmp_path: Path) -> None:
    path = write(tmp_path, "[agent.nvml]\ntimeout = 1\ntimeuot = 2\n")
    assert (
        only(problems(path))
        == f"{path}:3: agent.nvml.timeuot: unknown key; did you mean 'timeout'?"
    )


def test_unknown_key_without_close_match_lists_the_known(tmp_path: Path) -> None:
    path = write(tmp_path, "[aggregator]\nzzzzzz = 1\n")
    assert only(problems(path)) == (
        f"{path}:2: aggregator.zzzzzz: unknown key; expected one of: "
        + ", ".join(field_types(AggregatorConfig))
    )


def test_unknown_table_suggests_the_role(tmp_path: Path) -> None:
    path = write(tmp_path, '[agnet]\nnode = "x"\n')
    assert only(problems(path)) == f"{path}:1: agnet: unknown key; did you mean 'agent'?"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('[agent]\ninterval = "fast"\n', "2: agent.interval: expected float, got str (got 'fast')"),
        ("[agent.sim]\ngpus = true\n", "2: agent.sim.gpus: expected int, got bool (got True)"),
        ("[agent.sim]\ngpus = 2.5\n", "2: agent.sim.gpus: expected int, got float (got 2.5)"),
        (
            '[agent.host]\nper_core = "yes"\n',
            "2: agent.host.per_core: expected bool, got str (got 'yes')",
        ),
        (
            '[agent]\ncollectors = "host"\n',
            "2: agent.collectors: expected array, got str (got 'host')",
        ),
        (
            '[agent.host]\ninterfaces = [1, "eth0"]\n',
            "2: agent.host.interfaces: expected str, got int at [0]",
        ),
        ("agent.node = 5\n", "1: agent.node: expected str, got int (got 5)"),
    ],
)
def test_wrong_type(tmp_path: Path, text: str, line: str) -> None:
    path = write(tmp_path, text)
    assert only(problems(path)) == f"{path}:{line}"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("[agent.sim]\ngpus = 100\n", "2: agent.sim.gpus: expected int <= 64 (got 100)"),
        ("[agent.sim]\ngpus = 0\n", "2: agent.sim.gpus: expected int >= 1 (got 0)"),
        ("[agent.sim]\nseed = -1\n", "2: agent.sim.seed: expected int >= 0 (got -1)"),
        ("[agent]\ninterval = 0.05\n", "2: agent.interval: expected float >= 0.1 (got 0.05)"),
        ("[agent]\ninterval = 3601\n", "2: agent.interval: expected float <= 3600.0 (got 3601)"),
        ("[agent]\ninterval = inf\n", "2: agent.interval: expected float <= 3600.0 (got inf)"),
        ("[agent.nvml]\ntimeout = 0\n", "2: agent.nvml.timeout: expected float > 0.0 (got 0)"),
        (
            "[agent]\ncollector_timeout = 121\n",
            "2: agent.collector_timeout: expected float <= 120.0 (got 121)",
        ),
    ],
)
def test_out_of_range(tmp_path: Path, text: str, line: str) -> None:
    path = write(tmp_path, text)
    assert only(problems(path)) == f"{path}:{line}"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (
            '[agent.nvml]\npcie_throughput = "sometimes"\n',
            "2: agent.nvml.pcie_throughput: expected one of 'auto', 'gpm', 'nvml', 'off' "
            "(got 'sometimes')",
        ),
        (
            "[agent.sim]\nworkload = 3\n",
            "2: agent.sim.workload: expected one of 'training', 'inference', 'idle', 'mixed' "
            "(got 3)",
        ),
    ],
)
def test_bad_enum_lists_the_allowed_values(tmp_path: Path, text: str, line: str) -> None:
    path = write(tmp_path, text)
    assert only(problems(path)) == f"{path}:{line}"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("[agent]\nnode = { x = 1 }\n", "2: agent.node: expected str, got table"),
        ("[agent.node]\nx = 1\n", "1: agent.node: expected str, got table"),
        ("[agent]\ninterval = [1, 2]\n", "2: agent.interval: expected float, got array"),
    ],
)
def test_table_where_a_scalar_is_expected(tmp_path: Path, text: str, line: str) -> None:
    path = write(tmp_path, text)
    assert only(problems(path)) == f"{path}:{line}"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("agent = 3\n", "1: agent: expected a table [agent]"),
        ("[agent]\nnvml = true\n", "2: agent.nvml: expected a table [agent.nvml]"),
        ('[aggregator]\ntls = "yes"\n', "2: aggregator.tls: expected a table [aggregator.tls]"),
    ],
)
def test_scalar_where_a_table_is_expected(tmp_path: Path, text: str, line: str) -> None:
    path = write(tmp_path, text)
    assert only(problems(path)) == f"{path}:{line}"


def test_inline_table_error_points_at_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[agent]\nnode = "n"\nnvml = { timeout = 0 }\n')
    assert only(problems(path)) == f"{path}:3: agent.nvml.timeout: expected float > 0.0 (got 0)"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('[agent]\nnode = "a"\nx = = 1\n', "3:5"),
        ('[agent]\nnode = "unterminated\n', "2:21"),
        ('[agent]\nnode = "a"\nnode = "b"\n', "3:"),
    ],
)
def test_invalid_toml_names_line_and_column(tmp_path: Path, text: str, where: str) -> None:
    path = write(tmp_path, text)
    line = only(problems(path))
    assert line.startswith(f"{path}:{where}"), line
    assert re.fullmatch(re.escape(path) + r":\d+:\d+: invalid TOML: \S.*", line), line


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.toml")
    assert only(problems(path)) == f"{path}: cannot read: No such file or directory"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert only(problems(str(tmp_path))) == f"{tmp_path}: cannot read: Is a directory"


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[agent]\nnode = "caf\xe9"\n')
    assert only(problems(str(path))) == f"{path}: not UTF-8 text; expected a TOML file"


def test_wrong_type_and_unknown_key_are_both_reported(tmp_path: Path) -> None:
    """The issue's acceptance test: one run names every broken key."""
    path = write(tmp_path, '[agent]\ninterval = "fast"\nnodee = "x"\n')
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    assert info.value.problems == [
        f"{path}:2: agent.interval: expected float, got str (got 'fast')",
        f"{path}:3: agent.nodee: unknown key; did you mean 'node'?",
    ]
    assert "agent.interval" in str(info.value)
    assert "agent.nodee" in str(info.value)


def test_every_problem_of_a_file_is_reported_in_file_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[agent]\n"
        'interval = "fast"\n'
        'nodee = "x"\n'
        "[agent.nvml]\n"
        'pcie_throughput = "sometimes"\n'
        "timeout = 0\n"
        "[agent.sim]\n"
        "gpus = 100\n"
        "[agent.host]\n"
        'mounts = "/"\n'
        "[aggregator]\n"
        "tls = 3\n",
    )
    found = problems(path)
    assert [LINE.match(p).group("origin", "key") for p in found] == [  # type: ignore[union-attr]
        (f"{path}:2", "agent.interval"),
        (f"{path}:3", "agent.nodee"),
        (f"{path}:5", "agent.nvml.pcie_throughput"),
        (f"{path}:6", "agent.nvml.timeout"),
        (f"{path}:8", "agent.sim.gpus"),
        (f"{path}:10", "agent.host.mounts"),
        (f"{path}:12", "aggregator.tls"),
    ]


def test_file_and_environment_problems_are_reported_together(tmp_path: Path) -> None:
    path = write(tmp_path, '[agent]\ninterval = "fast"\n')
    assert problems(path, env={"TELEMETRYD_AGENT_SIM_GPUS": "many"}) == [
        f"{path}:2: agent.interval: expected float, got str (got 'fast')",
        "environment TELEMETRYD_AGENT_SIM_GPUS: agent.sim.gpus: expected int, got str (got 'many')",
    ]


# --- precedence: defaults < file < environment < command line ---------------------------


def test_precedence_on_one_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[agent]\ncluster = "c-file"\n')
    env = {"TELEMETRYD_AGENT_CLUSTER": "c-env"}
    cli = {"agent.cluster": ("--cluster", "c-cli")}
    assert load(None, env={}).config.agent.cluster == "default"
    assert load(path, env={}).config.agent.cluster == "c-file"
    assert load(path, env=env).config.agent.cluster == "c-env"
    assert load(None, env=env).config.agent.cluster == "c-env"
    assert load(path, env=env, overrides=cli).config.agent.cluster == "c-cli"
    assert load(path, env={}, overrides=cli).config.agent.cluster == "c-cli"


def test_layers_merge_key_by_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[agent]\nnode = "n-file"\n[agent.sim]\ngpus = 2\n')
    cfg = load(
        path,
        env={"TELEMETRYD_AGENT_SIM_SEED": "7"},
        overrides={"agent.interval": ("--interval", 3.0)},
    ).config
    assert (cfg.agent.node, cfg.agent.sim.gpus, cfg.agent.sim.seed) == ("n-file", 2, 7)
    assert cfg.agent.interval == 3.0
    assert cfg.agent.sim.workload == "mixed"  # untouched default beside them


@pytest.mark.parametrize(
    ("layers", "origin"),
    [
        ({"file"}, "{path}:2"),
        ({"file", "env"}, "environment TELEMETRYD_AGENT_NODE"),
        ({"file", "env", "option"}, "option --node"),
        ({"option"}, "option --node"),
    ],
)
def test_problem_names_the_layer_that_set_the_value(
    tmp_path: Path, layers: set[str], origin: str
) -> None:
    path = write(tmp_path, '[agent]\nnode = "a/file"\n') if "file" in layers else None
    env = {"TELEMETRYD_AGENT_NODE": "a/env"} if "env" in layers else {}
    cli = {"agent.node": ("--node", "a/cli")} if "option" in layers else None
    line = only(problems(path, env=env, overrides=cli))
    assert line.startswith(f"{origin.format(path=path)}: agent.node: contains '/'"), line


@pytest.mark.parametrize(
    ("var", "raw", "attr", "expected"),
    [
        ("TELEMETRYD_AGENT_SIM_GPUS", "3", "agent.sim.gpus", 3),
        ("TELEMETRYD_AGENT_SIM_SEED", "42", "agent.sim.seed", 42),
        ("TELEMETRYD_AGENT_INTERVAL", "2.5", "agent.interval", 2.5),
        ("TELEMETRYD_AGENT_INTERVAL", "7", "agent.interval", 7.0),
        ("TELEMETRYD_AGENT_INTERVAL", "1e1", "agent.interval", 10.0),
        ("TELEMETRYD_AGENT_NVML_EVENTS", "false", "agent.nvml.events", False),
        ("TELEMETRYD_AGENT_NVML_EVENTS", "0", "agent.nvml.events", False),
        ("TELEMETRYD_AGENT_NVML_PROCESSES", "true", "agent.nvml.processes", True),
        ("TELEMETRYD_AGENT_HOST_PER_CORE", "1", "agent.host.per_core", True),
        ("TELEMETRYD_AGENT_COLLECTORS", "host, rapl", "agent.collectors", ["host", "rapl"]),
        ("TELEMETRYD_AGENT_COLLECTORS", "host,,hwmon,", "agent.collectors", ["host", "hwmon"]),
        ("TELEMETRYD_AGENT_COLLECTORS", "", "agent.collectors", []),
        ("TELEMETRYD_AGENT_HOST_MOUNTS", "/,/data", "agent.host.mounts", ["/", "/data"]),
        ("TELEMETRYD_AGGREGATOR_CLUSTERS", "dc1,dc2", "aggregator.clusters", ["dc1", "dc2"]),
        ("TELEMETRYD_AGENT_NVML_PCIE_THROUGHPUT", "gpm", "agent.nvml.pcie_throughput", "gpm"),
        ("TELEMETRYD_AGENT_BROKER", "mqtts://h:8883", "agent.broker", "mqtts://h:8883"),
    ],
)
def test_environment_conversions(var: str, raw: str, attr: str, expected: Any) -> None:
    value = operator.attrgetter(attr)(load(None, env={var: raw}).config)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("var", "raw", "line"),
    [
        ("TELEMETRYD_AGENT_SIM_GPUS", "many", "agent.sim.gpus: expected int, got str (got 'many')"),
        ("TELEMETRYD_AGENT_SIM_GPUS", "1.5", "agent.sim.gpus: expected int, got str (got '1.5')"),
        ("TELEMETRYD_AGENT_SIM_GPUS", "0", "agent.sim.gpus: expected int >= 1 (got 0)"),
        ("TELEMETRYD_AGENT_INTERVAL", "nan", "agent.interval: expected float >= 0.1 (got nan)"),
        (
            "TELEMETRYD_AGENT_NVML_EVENTS",
            "yes",
            "agent.nvml.events: expected bool, got str (got 'yes')",
        ),
        (
            "TELEMETRYD_AGENT_SIM_WORKLOAD",
            "heavy",
            "agent.sim.workload: expected one of 'training', 'inference', 'idle', 'mixed' "
            "(got 'heavy')",
        ),
    ],
)
def test_bad_environment_value_names_the_variable(var: str, raw: str, line: str) -> None:
    assert only(problems(env={var: raw})) == f"environment {var}: {line}"


def test_unknown_environment_variable_is_reported_with_suggestion() -> None:
    assert only(problems(env={"TELEMETRYD_AGENT_NODEE": "x"})) == (
        "environment TELEMETRYD_AGENT_NODEE: unknown setting; did you mean TELEMETRYD_AGENT_NODE?"
    )


def test_foreign_and_non_key_variables_are_ignored() -> None:
    env = {
        "TELEMETRYD_LOG_LEVEL": "debug",
        "TELEMETRYD_DEBUG": "1",
        "TELEMETRY_AGENT_NODE": "x/y",
        "HOME": "/root",
    }
    assert load(None, env=env).config == Config()


def test_plugins_cannot_be_set_from_the_environment() -> None:
    line = only(problems(env={"TELEMETRYD_AGENT_PLUGINS": "x"}))
    assert line.startswith("environment TELEMETRYD_AGENT_PLUGINS: agent.plugins")
    assert "cannot be set from the environment" in line


def test_every_scalar_and_list_key_is_settable_from_the_environment() -> None:
    """Each leaf key accepts its own default spelled as an environment value."""
    defaults = Config()
    for dotted, _ in leaf_keys():
        value = operator.attrgetter(dotted)(defaults)
        if isinstance(value, dict):
            continue  # plugins: tables only (see test above)
        if isinstance(value, bool):
            raw = "true" if value else "false"
        elif isinstance(value, list):
            raw = ",".join(value)
        else:
            raw = str(value)
        loaded = load(None, env={env_name(dotted): raw})
        assert loaded.config == defaults, dotted
        assert loaded.origin.of(dotted) == f"environment {env_name(dotted)}"


def test_environment_names_are_unique_and_prefixed() -> None:
    names = [env_name(dotted) for dotted, _ in leaf_keys()]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    assert all(n.startswith(ENV_PREFIX) and n == n.upper() for n in names)
    # The two variables of ours that are not keys must not shadow one.
    assert not {"TELEMETRYD_LOG_LEVEL", "TELEMETRYD_DEBUG"} & set(names)
    assert env_name("agent.tls.ca_file") == "TELEMETRYD_AGENT_TLS_CA_FILE"


def test_option_problem_names_the_option() -> None:
    line = only(problems(overrides={"agent.sim.gpus": ("--gpus", 0)}))
    assert line.startswith("option --gpus: ")
    assert "expected int >= 1 (got 0)" in line


def test_option_problem_names_the_dotted_key() -> None:
    line = only(problems(overrides={"agent.sim.gpus": ("--gpus", 0)}))
    assert line == "option --gpus: agent.sim.gpus: expected int >= 1 (got 0)"


# --- semantic checks -------------------------------------------------------------------


BAD_NAMES = [
    ("a/b", "contains '/', which MQTT reserves in topics"),
    ("a+b", "contains '+', which MQTT reserves in topics"),
    ("rack#1", "contains '#', which MQTT reserves in topics"),
    ("a\x01b", "contains a control character"),
    ("a\tb", "contains a control character"),
    ("a\x7fb", "contains a control character"),
    ("_fleet", "starts with '_', reserved for system topics"),
    ("$SYS", "starts with '$', reserved for system topics"),
    ("n" * 65, "is 65 characters long"),
    ("-node", "'-node' is not a valid name"),
    ("a b", "'a b' is not a valid name"),
]


@pytest.mark.parametrize(("value", "reason"), BAD_NAMES)
@pytest.mark.parametrize("key", ["node", "cluster"])
def test_invalid_name_from_file(tmp_path: Path, key: str, value: str, reason: str) -> None:
    path = write(tmp_path, f"[agent]\n{key} = {toml_str(value)}\n")
    assert only(problems(path)) == f"{path}:2: agent.{key}: {reason}; {RULE}"
    assert name_problem(value) == f"{reason}; {RULE}"


@pytest.mark.parametrize(("value", "reason"), BAD_NAMES[:4])
def test_invalid_node_from_environment(value: str, reason: str) -> None:
    line = only(problems(env={"TELEMETRYD_AGENT_NODE": value}))
    assert line == f"environment TELEMETRYD_AGENT_NODE: agent.node: {reason}; {RULE}"


@pytest.mark.parametrize("value", ["n" * 64, "gpu-node-01.dc1", "A_b.c-1", "0abc", "x"])
def test_valid_names(value: str) -> None:
    env = {"TELEMETRYD_AGENT_NODE": value, "TELEMETRYD_AGENT_CLUSTER": value}
    cfg = load(None, env=env).config
    assert (cfg.agent.node, cfg.agent.cluster) == (value, value)


def test_empty_node_means_host_name_but_empty_cluster_is_refused() -> None:
    assert load(None, env={"TELEMETRYD_AGENT_NODE": ""}).config.agent.node == ""
    assert only(problems(env={"TELEMETRYD_AGENT_CLUSTER": ""})) == (
        f"environment TELEMETRYD_AGENT_CLUSTER: agent.cluster: is empty; {RULE}"
    )


def test_aggregator_clusters_allow_plus_only_as_wildcard(tmp_path: Path) -> None:
    ok = write(tmp_path, '[aggregator]\nclusters = ["+", "dc1"]\n', "ok.toml")
    assert load(ok, env={}).config.aggregator.clusters == ["+", "dc1"]
    bad = write(tmp_path, '[aggregator]\nclusters = ["dc+1"]\n', "bad.toml")
    assert only(problems(bad)) == (
        f"{bad}:2: aggregator.clusters: contains '+', which MQTT reserves in topics; {RULE}"
    )


@pytest.mark.parametrize("role", ["agent", "aggregator"])
def test_broker_password_refused(tmp_path: Path, role: str) -> None:
    path = write(tmp_path, f'[{role}]\nbroker = "mqtt://user:s3cr3t@broker:1883"\n')
    line = only(problems(path))
    assert line.startswith(f"{path}:2: {role}.broker: ")
    assert "contains a password; secrets never go in URLs" in line
    assert "password_file" in line


def test_broker_password_refusal_does_not_echo_the_password(tmp_path: Path) -> None:
    path = write(tmp_path, '[agent]\nbroker = "mqtt://user:s3cr3t@broker:1883"\n')
    assert "s3cr3t" not in only(problems(path))


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://broker", "'http://broker': scheme must be mqtt or mqtts; expected mqtt://"),
        ("mqtt://", "'mqtt://': no host; expected mqtt://"),
        ("mqtt://h/topic", "'mqtt://h/topic': unexpected path or query; expected mqtt://"),
        ("mqtt://h?x=1", "'mqtt://h?x=1': unexpected path or query"),
        ("mqtt://h:99999", "'mqtt://h:99999': the port is not a number from 1 to 65535"),
        ("mqtt://h:abc", "'mqtt://h:abc': the port is not a number from 1 to 65535"),
    ],
)
def test_bad_broker_urls(url: str, reason: str) -> None:
    line = only(problems(env={"TELEMETRYD_AGENT_BROKER": url}))
    assert line.startswith(f"environment TELEMETRYD_AGENT_BROKER: agent.broker: {reason}"), line


@pytest.mark.parametrize(
    "url", ["mqtt://h", "mqtts://agent@broker.example:8883", "mqtt://[::1]:1883", "mqtt://h/"]
)
def test_good_broker_urls(url: str) -> None:
    assert load(None, env={"TELEMETRYD_AGGREGATOR_BROKER": url}).config.aggregator.broker == url


def test_malformed_broker_url_is_a_config_error() -> None:
    line = only(problems(env={"TELEMETRYD_AGENT_BROKER": "mqtt://[::1:1883"}))
    assert "agent.broker" in line


def test_broker_port_zero_is_refused() -> None:
    try:
        cfg = load(None, env={"TELEMETRYD_AGENT_BROKER": "mqtt://h:0"}).config
    except ConfigError as exc:
        found = exc.problems
    else:
        raise AssertionError(f"accepted {cfg.agent.broker!r}")
    assert "port" in only(found)


def test_tls_keys_need_an_mqtts_broker(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("pem\n")
    path = write(tmp_path, f'[agent]\nbroker = "mqtt://h"\n[agent.tls]\nca_file = "{ca}"\n')
    assert only(problems(path)) == (
        f"{path}:4: agent.tls.ca_file: set, but broker 'mqtt://h' is not mqtts://"
    )


@pytest.mark.parametrize(
    ("given", "missing"), [("cert_file", "key_file"), ("key_file", "cert_file")]
)
def test_cert_and_key_go_together(tmp_path: Path, given: str, missing: str) -> None:
    pem = tmp_path / "x.pem"
    pem.write_text("pem\n")
    path = write(
        tmp_path, f'[aggregator]\nbroker = "mqtts://h"\n[aggregator.tls]\n{given} = "{pem}"\n'
    )
    # The missing key is not in the file: the line is that of the key that was given.
    assert only(problems(path)) == (
        f"{path}:4: aggregator.tls.{missing}: missing; cert_file and key_file go together"
    )


def test_complete_mtls_material_is_accepted(tmp_path: Path) -> None:
    for name in ("ca", "cert", "key"):
        (tmp_path / f"{name}.pem").write_text("pem\n")
    path = write(
        tmp_path,
        '[agent]\nbroker = "mqtts://agent@h"\n[agent.tls]\n'
        + "".join(f'{n}_file = "{tmp_path / n}.pem"\n' for n in ("ca", "cert", "key")),
    )
    assert load(path, env={}).config.agent.tls.key_file == f"{tmp_path}/key.pem"


def test_unreadable_ca_file(tmp_path: Path) -> None:
    missing = tmp_path / "ca.pem"
    path = write(tmp_path, f'[agent]\nbroker = "mqtts://h"\n[agent.tls]\nca_file = "{missing}"\n')
    assert only(problems(path)) == (
        f"{path}:4: agent.tls.ca_file: cannot read {missing}: No such file or directory"
    )


def test_problem_origin_is_never_none_without_a_file(tmp_path: Path) -> None:
    pem = tmp_path / "cert.pem"
    pem.write_text("pem\n")
    env = {"TELEMETRYD_AGENT_BROKER": "mqtts://h", "TELEMETRYD_AGENT_TLS_CERT_FILE": str(pem)}
    line = only(problems(env=env))
    assert not line.startswith("None:"), line


@pytest.mark.parametrize("role", ["agent", "aggregator"])
@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("directory", "Is a directory"),
        ("below_file", "Not a directory"),
        ("missing", "No such file or directory"),
    ],
)
def test_unreadable_password_file_names_the_path_not_the_content(
    tmp_path: Path, secret_file: Path, role: str, how: str, reason: str
) -> None:
    bad = {
        "directory": secret_file.parent,
        "below_file": secret_file / "x",
        "missing": secret_file.with_name("mqtt-pasword"),
    }[how]
    path = write(tmp_path, f'[{role}]\nbroker = "mqtt://h"\npassword_file = "{bad}"\n')
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    assert info.value.problems == [f"{path}:3: {role}.password_file: cannot read {bad}: {reason}"]
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value)


def test_readable_password_file_is_never_echoed(tmp_path: Path, secret_file: Path) -> None:
    path = write(tmp_path, f'[agent]\nnode = "n1"\npassword_file = "{secret_file}"\n')
    loaded = load(path, env={})
    assert loaded.config.agent.password_file == str(secret_file)
    effective = render(loaded.config, loaded.sections)
    assert str(secret_file) in effective
    assert SECRET not in effective
    # Nor in the problems of a file that also has errors.
    broken = write(
        tmp_path, f'[agent]\nnode = "a/b"\npassword_file = "{secret_file}"\n', "broken.toml"
    )
    assert SECRET not in "\n".join(problems(broken))


# --- systemd credentials and Secret ------------------------------------------------------


def test_secret_path_finds_the_systemd_credential(secret_file: Path) -> None:
    env = {"CREDENTIALS_DIRECTORY": str(secret_file.parent)}
    assert secret_path("", "mqtt-password", env) == str(secret_file)
    assert read_secret(secret_path("", "mqtt-password", env) or "").reveal() == SECRET


def test_explicit_secret_path_wins(secret_file: Path) -> None:
    env = {"CREDENTIALS_DIRECTORY": str(secret_file.parent)}
    assert secret_path("/etc/telemetryd/pw", "mqtt-password", env) == "/etc/telemetryd/pw"


def test_secret_path_without_credential(tmp_path: Path) -> None:
    assert secret_path("", "mqtt-password", {}) is None
    assert secret_path("", "mqtt-password", {"CREDENTIALS_DIRECTORY": str(tmp_path)}) is None
    (tmp_path / "mqtt-password").mkdir()  # a directory is not a credential
    assert secret_path("", "mqtt-password", {"CREDENTIALS_DIRECTORY": str(tmp_path)}) is None


def test_readable_credential_passes_the_check(secret_file: Path) -> None:
    assert load(None, env={"CREDENTIALS_DIRECTORY": str(secret_file.parent)}).config == Config()


@pytest.fixture
def unreadable_credential(tmp_path: Path) -> Path:
    """A credential that is a file but fails to read, even for root (Linux only)."""
    mem = Path("/proc/self/mem")
    if not mem.exists():
        pytest.skip("needs /proc/self/mem for a file that cannot be read")
    link = tmp_path / "mqtt-password"
    link.symlink_to(mem)
    if unreadable(str(link)) is None:
        pytest.skip("/proc/self/mem is readable at offset 0 here")
    return link


def test_unreadable_credential_is_reported(unreadable_credential: Path) -> None:
    found = problems(env={"CREDENTIALS_DIRECTORY": str(unreadable_credential.parent)})
    assert found
    assert all(
        p.startswith(
            "systemd credential mqtt-password (password_file empty): "
            f"cannot read {unreadable_credential}: "
        )
        for p in found
    )


def test_unreadable_credential_is_reported_once(unreadable_credential: Path) -> None:
    found = problems(env={"CREDENTIALS_DIRECTORY": str(unreadable_credential.parent)})
    assert len(found) == 1, found


def test_secret_never_shows_its_value(secret_file: Path) -> None:
    secret = read_secret(str(secret_file))
    assert secret.reveal() == SECRET  # one trailing newline stripped
    for shown in (repr(secret), str(secret), f"{secret}", f"{secret!r}", repr([secret])):
        assert SECRET not in shown
        assert "***" in shown
    assert repr(Secret("x")) == "Secret('***')"
    assert not hasattr(secret, "__dict__")


def test_read_secret_strips_only_one_newline(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text("pw\n\n")
    assert read_secret(str(path)).reveal() == "pw\n"


def test_unreadable_never_reveals_content(secret_file: Path) -> None:
    assert unreadable(str(secret_file)) is None
    reason = unreadable(str(secret_file.parent))
    assert reason == f"cannot read {secret_file.parent}: Is a directory"


# --- plugins, backends, sinks, listen, paths --------------------------------------------


def test_unknown_collector_lists_the_registered(tmp_path: Path) -> None:
    path = write(tmp_path, '[agent]\ncollectors = ["host", "nope"]\n')
    registered = ", ".join(registry.collector_names())
    assert {"host", "rapl", "hwmon"} <= set(registry.collector_names())
    assert only(problems(path)) == (
        f"{path}:2: agent.collectors: no collector named 'nope'; registered: {registered}"
    )


def test_collector_listed_twice(tmp_path: Path) -> None:
    path = write(tmp_path, '[agent]\ncollectors = ["host", "host"]\n')
    assert only(problems(path)) == f"{path}:2: agent.collectors: 'host' listed twice"


def test_unknown_gpu_backend(tmp_path: Path) -> None:
    path = write(tmp_path, '[agent]\ngpu_backend = "cuda"\n')
    assert {"nvml", "sim"} <= set(registry.gpu_backend_names())
    assert only(problems(path)) == (
        f"{path}:2: agent.gpu_backend: expected one of {backends()} (got 'cuda')"
    )


@pytest.mark.parametrize(
    "sink",
    [
        "sqlite:///var/lib/telemetryd/reports.db",
        "influxdb2://influx:8086?org=o&bucket=b",
        "influxdb2s://influx?org=o&bucket=b",
        "influxdb://influx:8086/telemetry?rp=week",
    ],
)
def test_good_sinks(sink: str, secret_file: Path) -> None:
    url = parse_sink_url(sink)
    env = {"TELEMETRYD_AGGREGATOR_SINKS": sink,
           "TELEMETRYD_AGGREGATOR_INFLUXDB_TOKEN_FILE": str(secret_file)}  # fmt: skip
    if url.kind in registry.sink_kinds():
        assert load(None, env=env).config.aggregator.sinks == [sink]
    else:  # a well-formed URL of a store this version cannot write yet: said so, not crashed
        line = only(problems(env={"TELEMETRYD_AGGREGATOR_SINKS": sink}))
        assert f"{url.kind} sinks are not available in this version" in line


@pytest.mark.parametrize(
    ("sink", "reason"),
    [
        ("sqlite://rel.db", "expected sqlite:///ABSOLUTE/PATH (three slashes)"),
        ("sqlite:rel.db", "expected sqlite:///ABSOLUTE/PATH (three slashes)"),
        ("sqlite:///", "expected sqlite:///ABSOLUTE/PATH (three slashes)"),
        ("influxdb2://influx:8086?org=o", "missing bucket; expected ?org=O&bucket=B"),
        ("influxdb2://influx:8086", "missing org and bucket; expected ?org=O&bucket=B"),
        (
            "influxdb2://influx?org=o&bucket=b&token=T0KEN",
            "contains a secret; secrets never go in URLs",
        ),
        ("influxdb://user:pw@influx/db", "contains a secret; secrets never go in URLs"),
        ("influxdb://influx:8086", "expected influxdb://host:8086/DB[?rp=RP]"),
        ("bogus://x", "unknown sink scheme 'bogus'; expected sqlite:///ABSOLUTE/PATH"),
    ],
)
def test_bad_sinks(tmp_path: Path, sink: str, reason: str) -> None:
    path = write(tmp_path, f'[aggregator]\nsinks = ["sqlite:///ok.db", "{sink}"]\n')
    line = only(problems(path))
    shown = redact(sink)  # a secret in a refused URL is never echoed back
    assert line.startswith(f"{path}:2: aggregator.sinks: {shown!r}: {reason}"), line


def test_an_influxdb2_sink_needs_a_token() -> None:
    line = only(problems(env={"TELEMETRYD_AGGREGATOR_SINKS": "influxdb2://h?org=o&bucket=b"}))
    assert line == (
        "defaults: aggregator.influxdb.token_file: empty, and no systemd credential "
        "influxdb-token; an InfluxDB 2 sink needs one"
    )


def test_the_influxdb_token_may_come_from_a_systemd_credential(secret_file: Path) -> None:
    creds = secret_file.parent
    (creds / "influxdb-token").write_text("tok\n")
    env = {"TELEMETRYD_AGGREGATOR_SINKS": "influxdb2://h?org=o&bucket=b",
           "CREDENTIALS_DIRECTORY": str(creds)}  # fmt: skip
    assert load(None, env=env).config.aggregator.sinks


def test_an_influxdb_1x_user_needs_a_readable_password_file(tmp_path: Path) -> None:
    sink = "influxdb://writer@h:8086/telemetry"
    assert "user 'writer' needs one" in only(problems(env={"TELEMETRYD_AGGREGATOR_SINKS": sink}))
    missing = tmp_path / "nope"
    env = {"TELEMETRYD_AGGREGATOR_SINKS": sink,
           "TELEMETRYD_AGGREGATOR_INFLUXDB_PASSWORD_FILE": str(missing)}  # fmt: skip
    assert only(problems(env=env)) == (
        "environment TELEMETRYD_AGGREGATOR_INFLUXDB_PASSWORD_FILE: "
        f"aggregator.influxdb.password_file: cannot read {missing}: No such file or directory"
    )
    anonymous = "influxdb://h:8086/telemetry"  # no user: InfluxDB without authentication
    assert load(None, env={"TELEMETRYD_AGGREGATOR_SINKS": anonymous}).config.aggregator.sinks


@pytest.mark.parametrize(
    ("sink", "reason"),
    [
        ("influxdb://h/db?retention=7d", "unknown option(s) retention; known: rp, tls"),
        ("influxdb2://h?org=o&bucket=b&precision=s", "unknown option(s) precision; known: org"),
        ("influxdb://h/db?tls=yes", "tls='yes'; expected 1 or 0"),
        ("influxdb2://me@h?org=o&bucket=b", "InfluxDB 2 logs in with a token, not a user"),
    ],
)
def test_influxdb_url_options_are_checked(sink: str, reason: str) -> None:
    assert reason in only(problems(env={"TELEMETRYD_AGGREGATOR_SINKS": sink}))


def test_sink_token_refusal_does_not_echo_the_token() -> None:
    line = only(
        problems(env={"TELEMETRYD_AGGREGATOR_SINKS": "influxdb2://h?org=o&bucket=b&token=T0KEN"})
    )
    assert "T0KEN" not in line


def test_malformed_sink_url_is_a_config_error() -> None:
    line = only(problems(env={"TELEMETRYD_AGGREGATOR_SINKS": "influxdb2://[h?org=o&bucket=b"}))
    assert "aggregator.sinks" in line


@pytest.mark.parametrize("listen", ["127.0.0.1:9400", "[::1]:9400", "localhost:1"])
def test_good_listen(listen: str) -> None:
    env = {"TELEMETRYD_BROKER_LISTEN": listen}
    assert load(None, env=env).config.broker.listen == listen


def test_broker_beyond_loopback_needs_tls_and_passwords() -> None:
    line = only(problems(env={"TELEMETRYD_BROKER_LISTEN": "0.0.0.0:1883"}))
    assert "broker.listen: '0.0.0.0:1883' is not loopback" in line


@pytest.mark.parametrize(
    ("listen", "reason"),
    [
        ("9400", "expected HOST:PORT, e.g. 127.0.0.1:9400 or [::]:9400"),
        ("localhost", "expected HOST:PORT"),
        ("h:0", "expected HOST:PORT"),
        ("h:65536", "expected HOST:PORT"),
        ("h:abc", "expected HOST:PORT"),
        (":9400", "no host; expected HOST:PORT, e.g. 0.0.0.0:9400"),
        ("[]:9400", "no host; expected HOST:PORT"),
    ],
)
def test_bad_listen(listen: str, reason: str) -> None:
    line = only(problems(env={"TELEMETRYD_BROKER_LISTEN": listen}))
    assert line.startswith(
        f"environment TELEMETRYD_BROKER_LISTEN: broker.listen: {listen!r}: {reason}"
    ), line


def test_aggregator_listen_is_checked() -> None:
    env = {"TELEMETRYD_AGGREGATOR_LISTEN": "[::1]:9400"}
    assert load(None, env=env).config.aggregator.listen == "[::1]:9400"
    assert load(None, env={}).config.aggregator.listen == ""  # not served
    line = only(problems(env={"TELEMETRYD_AGGREGATOR_LISTEN": "0.0.0.0"}))
    assert line == (
        "environment TELEMETRYD_AGGREGATOR_LISTEN: aggregator.listen: '0.0.0.0': "
        "expected HOST:PORT, e.g. 127.0.0.1:9400 or [::]:9400"
    )


def test_aggregator_listen_in_a_file_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[aggregator]\nlisten = ":9400"\n')
    assert only(problems(path, env={})) == (
        f"{path}:2: aggregator.listen: ':9400': no host; expected HOST:PORT, e.g. 0.0.0.0:9400"
    )


def test_listen_with_unicode_digit_port_is_a_config_error() -> None:
    line = only(problems(env={"TELEMETRYD_BROKER_LISTEN": "h:²"}))
    assert "broker.listen" in line


@pytest.mark.parametrize("key", ["agent.state_dir", "aggregator.state_dir", "agent.sysfs"])
def test_relative_directories_are_refused(tmp_path: Path, key: str) -> None:
    table, name = key.split(".")
    path = write(tmp_path, f'[{table}]\n{name} = "var/lib/telemetryd"\n')
    assert only(problems(path)) == (
        f"{path}:2: {key}: expected an absolute path (got 'var/lib/telemetryd')"
    )
    ok = write(tmp_path, f'[{table}]\n{name} = "/var/lib/telemetryd"\n', "ok.toml")
    assert operator.attrgetter(key)(load(ok, env={}).config) == "/var/lib/telemetryd"


def test_relative_mount_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[agent.host]\nmounts = ["/", "data"]\n')
    assert (
        only(problems(path))
        == f"{path}:2: agent.host.mounts: expected an absolute path (got 'data')"
    )


@pytest.mark.parametrize("key", ["proc_root", "job_map_dir", "kubelet_socket"])
def test_relative_attribution_paths_are_refused(tmp_path: Path, key: str) -> None:
    path = write(tmp_path, f'[agent.attribution]\n{key} = "run/x"\n')
    assert only(problems(path)) == (
        f"{path}:2: agent.attribution.{key}: expected an absolute path (got 'run/x')"
    )


def test_kubelet_timeout_must_fit_in_the_collector_deadline(tmp_path: Path) -> None:
    text = '[agent]\ncollector_timeout = 2\n[agent.attribution]\nkubelet_socket = "/k.sock"\n'
    path = write(tmp_path, text + "kubelet_timeout = 2\n")
    line = only(problems(path))
    assert line.startswith(f"{path}:5: agent.attribution.kubelet_timeout: expected less than")
    assert "(got 2)" in line
    ok = write(tmp_path, text + "kubelet_timeout = 1.5\n", "ok.toml")
    assert load(ok, env={}).config.agent.attribution.kubelet_timeout == 1.5


def test_unknown_card_and_missing_scenario(tmp_path: Path) -> None:
    missing = tmp_path / "faults.toml"
    path = write(tmp_path, f'[agent.sim]\ncard = "b200-nope"\nscenario = "{missing}"\n')
    found = problems(path)
    assert len(found) == 2, found
    assert found[0].startswith(f"{path}:3: agent.sim.scenario: ")
    assert str(missing) in found[0]
    assert found[1].startswith(f"{path}:2: agent.sim.card: 'b200-nope' is neither a shipped card")


def test_every_semantic_problem_is_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[agent]\nnode = "a/b"\ncluster = "_x"\ngpu_backend = "cuda"\nstate_dir = "rel"\n'
        '[aggregator]\nsinks = ["sqlite://rel.db"]\n[broker]\nlisten = "x"\n',
    )
    found = problems(path)
    keys = [LINE.match(p).group("key") for p in found]  # type: ignore[union-attr]
    assert keys == [
        "agent.node",
        "agent.cluster",
        "agent.gpu_backend",
        "agent.state_dir",
        "aggregator.sinks",
        "broker.listen",
    ]


# --- samples and the effective configuration ---------------------------------------------


def sample_docs(text: str) -> dict[str, str]:
    """Dotted key -> the ``##`` documentation block just above its commented setting."""
    docs: dict[str, str] = {}
    table = ""
    block: list[str] = []
    for line in text.splitlines():
        if m := re.fullmatch(r"\[([a-z_.]+)\]", line):
            table, block = m.group(1), []
        elif line.startswith("## "):
            block.append(line[3:])
        elif m := re.fullmatch(r"# ([a-z_]+) = .*", line):
            docs[f"{table}.{m.group(1)}"], block = " ".join(block), []
        elif m := re.fullmatch(r"# \[([a-z_.]+)\.NAME\] .*", line):
            docs[m.group(1)], block = " ".join(block), []
        elif not line:
            block = []
    return docs


@pytest.mark.parametrize("sections", [("agent",), ("aggregator",), ("agent", "aggregator")])
def test_sample_is_valid_toml_that_loads_to_the_defaults(
    tmp_path: Path, sections: tuple[str, ...]
) -> None:
    text = render(Config(), sections, sample=True)
    assert set(tomllib.loads(text)) == set(sections)
    loaded = load(write(tmp_path, text), env={})
    assert loaded.config == Config()
    assert loaded.sections == sections


@pytest.mark.parametrize("role", ["agent", "aggregator"])
def test_uncommented_sample_still_loads_to_the_defaults(tmp_path: Path, role: str) -> None:
    """The values shown in the sample are the real defaults."""
    text = render(Config(), (role,), sample=True)
    settings_ = re.compile(r"^# ([a-z_]+ = .*)$", re.MULTILINE)
    uncommented = settings_.sub(r"\1", text)
    # One commented setting per key; tables of tables (agent.plugins, alerts.node_labels)
    # are shown as a table template instead.
    shown = {f"{role}.{m.split(' = ')[0]}" for m in settings_.findall(text)}
    keys = {k for k, _ in leaf_keys() if k.startswith(role + ".")} - {
        "agent.plugins",
        "aggregator.alerts.node_labels",
    }
    assert {k.rsplit(".", 1)[1] for k in keys} == {k.rsplit(".", 1)[1] for k in shown}
    assert len(settings_.findall(text)) == len(keys)
    assert load(write(tmp_path, uncommented), env={}).config == Config()


@pytest.mark.parametrize("role", ["agent", "aggregator"])
def test_sample_documents_every_key_with_its_variable(role: str) -> None:
    docs = sample_docs(render(Config(), (role,), sample=True))
    keys = [k for k, _ in leaf_keys() if k.startswith(role + ".")]
    assert sorted(docs) == sorted(keys)
    for key in keys:
        doc = docs[key]
        if key not in ("agent.plugins", "aggregator.alerts.node_labels"):  # tables of tables
            # cannot come from one variable
            assert f"Environment: {env_name(key)}." in doc, key
        assert not doc.startswith("Environment:"), f"{key} has no description"
    if role == "agent":
        assert "Range: >= 0.1, <= 3600." in docs["agent.interval"]
        assert "Range: >= 1, <= 64." in docs["agent.sim.gpus"]


def test_every_variable_the_sample_advertises_is_accepted() -> None:
    text = render(Config(), ("agent", "aggregator"), sample=True)
    advertised = set(re.findall(r"\bTELEMETRYD_[A-Z_]+[A-Z]\b", " ".join(text.split())))
    advertised -= {"TELEMETRYD_AGENT_", "TELEMETRYD_AGGREGATOR_"}
    refused = []
    for var in sorted(advertised):
        try:
            load(None, env={var: ""})
        except ConfigError as exc:
            if any("cannot be set" in p or "unknown setting" in p for p in exc.problems):
                refused.append(var)
    assert refused == []


ROUND_TRIP = """\
[agent]
node = "gpu-07"
cluster = "dc1.rack-4"
interval = 2.5
gpu_backend = "sim"
collectors = ["host"]
state_dir = "/var/lib/tele metryd"
broker = "mqtts://agent@broker.example:8883"
password_file = "{secret}"
collector_timeout = 0.5
sysfs = "/host/sys"

[agent.tls]
ca_file = "{pem}"

[agent.nvml]
timeout = 120
events = false
processes = false
pcie_throughput = "off"

[agent.sim]
gpus = 64
workload = "idle"
seed = 9223372036854775807

[agent.host]
mounts = ["/", "/data"]
interfaces = ["eth0", "ib0"]
disks = []
per_core = false

[agent.plugins.gpu-fans]
threshold = 0.5
labels = ["a", "b"]
nested = {{ deep = {{ x = 1 }} }}
"key with space" = "quote \\" backslash \\\\ newline \\n tab \\t é ✓"

[agent.plugins."my.plugin"]

[aggregator]
broker = "mqtt://h"
clusters = ["dc1", "dc2"]
sinks = ["sqlite:///var/lib/t.db", "sqlite:///var/lib/u.db?retention_days=3"]
state_dir = "/srv/agg"

[broker]
listen = "[::1]:1883"
"""


def test_effective_config_round_trips(tmp_path: Path, secret_file: Path) -> None:
    pem = tmp_path / "ca.pem"
    pem.write_text("pem\n")
    first = load(write(tmp_path, ROUND_TRIP.format(secret=secret_file, pem=pem)), env={})
    assert first.config.agent.plugins["gpu-fans"]["nested"] == {"deep": {"x": 1}}
    text = render(first.config, first.sections)
    data = tomllib.loads(text)
    assert data["agent"]["node"] == "gpu-07"
    assert data["agent"]["nvml"]["timeout"] == 120.0
    assert data["agent"]["plugins"]["gpu-fans"]["key with space"].startswith('quote " backslash')
    assert data["broker"]["listen"] == "[::1]:1883"
    assert SECRET not in text
    again = load(write(tmp_path, text, "effective.toml"), env={})
    assert again.config == first.config
    assert again.sections == first.sections
    assert render(again.config, again.sections) == text


def test_effective_config_of_one_role_has_only_that_role(tmp_path: Path) -> None:
    loaded = load(write(tmp_path, '[aggregator]\nshared_group = "g1"\n'), env={})
    assert loaded.sections == ("aggregator",)
    text = render(loaded.config, loaded.sections)
    assert set(tomllib.loads(text)) == {"aggregator"}
    assert 'shared_group = "g1"' in text.splitlines()


def test_effective_config_round_trips_a_del_character(tmp_path: Path) -> None:
    first = load(write(tmp_path, '[agent]\nstate_dir = "/var/lib/x\\u007f"\n'), env={})
    text = render(first.config, first.sections)
    assert load(write(tmp_path, text, "effective.toml"), env={}).config == first.config


def test_effective_config_round_trips_plugin_dates(tmp_path: Path) -> None:
    first = load(write(tmp_path, "[agent.plugins.p]\nsince = 2024-05-27\n"), env={})
    text = render(first.config, first.sections)
    assert load(write(tmp_path, text, "effective.toml"), env={}).config == first.config


# --- property: node names ---------------------------------------------------------------


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("names")


NAMES = st.one_of(
    st.text(max_size=70),
    st.from_regex(NAME_PATTERN, fullmatch=True),
    st.text(alphabet="ab0-._/+#$\x00\x1f\x7f é", max_size=70),
    st.sampled_from(["", "n" * 64, "n" * 65, "_x", "$x", "a/b", "a\n"]),
)


@settings(max_examples=200, deadline=None, database=None)
@given(value=NAMES, route=st.sampled_from(["file", "env", "option"]))
def test_any_node_name_is_accepted_only_if_valid(scratch: Path, value: str, route: str) -> None:
    path = None
    env: dict[str, str] = {}
    overrides = None
    if route == "file":
        path = write(scratch, f"[agent]\nnode = {toml_str(value)}\n")
    elif route == "env":
        env = {"TELEMETRYD_AGENT_NODE": value}
    else:
        overrides = {"agent.node": ("--node", value)}
    try:
        cfg = load(path, env=env, overrides=overrides).config
    except ConfigError as exc:
        found = exc.problems
    else:
        found = None
    if found is not None:
        assert found
        assert all("agent.node" in p for p in found), found
        assert value != ""
        assert name_problem(value) is not None
        return
    assert cfg.agent.node == value
    if value == "":
        return  # empty: the host name's first label is used
    assert name_problem(value) is None
    assert not set(value) & set("/+#")
    assert all(ord(ch) >= 32 and ord(ch) != 127 for ch in value)
    assert len(value) <= 64
    assert value[0] not in "_$"


def test_agent_config_default_is_what_the_loader_builds() -> None:
    assert load(None, env={}).config.agent == AgentConfig()

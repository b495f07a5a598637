"""The Grafana dashboards in dashboards/: importable JSON, and queries on names that exist.

Grafana accepts almost any JSON and shows a broken panel later, so these checks stand in
for the operator who imports a dashboard and looks at every panel: the structure Grafana
needs (unique ids, a grid position each, every query on the ``$datasource`` variable that
the import asks for), every InfluxQL query naming only measurements, fields and tags that
exporters/lineprotocol.py writes, and every PromQL expression naming only metrics and
labels that the aggregator's /metrics serves (``PROMETHEUS_NAMES``). The integration tests
(tests/integration/test_dashboards.py) run the same queries against real servers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from exporters.lineprotocol import MEASUREMENTS

DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"
INFLUX = DASHBOARDS / "telemetryd-influxdb.json"
PROMETHEUS = DASHBOARDS / "telemetryd-prometheus.json"

GPU_LABELS = ("gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname", "cluster")
HOST_LABELS = ("cluster", "Hostname")

# What the aggregator's /metrics serves (exporters/prometheus.py): metric -> its labels.
# The one place to update when a name or label there changes. GPU series carry
# dcgm-exporter's names and labels so that dashboards and alert rules written for
# dcgm-exporter work unchanged.
PROMETHEUS_NAMES: dict[str, tuple[str, ...]] = {
    **{
        name: GPU_LABELS
        for name in (
            "DCGM_FI_DEV_SM_CLOCK",
            "DCGM_FI_DEV_MEM_CLOCK",
            "DCGM_FI_DEV_MEMORY_TEMP",
            "DCGM_FI_DEV_GPU_TEMP",
            "DCGM_FI_DEV_POWER_USAGE",
            "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",  # mJ
            "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
            "DCGM_FI_DEV_GPU_UTIL",
            "DCGM_FI_DEV_MEM_COPY_UTIL",
            "DCGM_FI_DEV_ENC_UTIL",
            "DCGM_FI_DEV_DEC_UTIL",
            "DCGM_FI_DEV_XID_ERRORS",
            "DCGM_FI_DEV_FB_FREE",
            "DCGM_FI_DEV_FB_USED",
            "DCGM_FI_DEV_FB_RESERVED",
            "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL",
            "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
            "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
            "DCGM_FI_DEV_ROW_REMAP_FAILURE",
            "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
            "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
            "DCGM_FI_PROF_DRAM_ACTIVE",
            "DCGM_FI_PROF_PCIE_TX_BYTES",
            "DCGM_FI_PROF_PCIE_RX_BYTES",
            "DCGM_FI_DEV_FB_TOTAL",
            "DCGM_FI_DEV_POWER_MGMT_LIMIT",
            "DCGM_FI_DEV_THERMAL_VIOLATION",
            "DCGM_FI_DEV_POWER_VIOLATION",
            "DCGM_FI_DEV_CLOCKS_EVENT_REASONS",
            "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL",
            "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
        )
    },
    "DCGM_EXP_XID_ERRORS_COUNT": (*GPU_LABELS, "xid", "window_size_in_ms"),
    # the aggregator's own
    "telemetryd_aggregator_reports_received_total": (),
    "telemetryd_aggregator_reports_accepted_total": (),
    "telemetryd_aggregator_reports_duplicate_total": (),
    "telemetryd_aggregator_messages_rejected_total": ("reason",),
    "telemetryd_aggregator_reports_missing": ("cluster",),
    "telemetryd_nodes": ("cluster", "state"),
    "telemetryd_gpus": ("cluster", "state"),
    "telemetryd_wal_bytes": (),
    "telemetryd_broker_dropped_messages": (),
    "telemetryd_sink_up": ("sink",),
    "telemetryd_sink_queue_reports": ("sink",),
    "telemetryd_sink_queue_bytes": ("sink",),
    "telemetryd_sink_reports_written_total": ("sink",),
    "telemetryd_sink_retries_total": ("sink",),
    "telemetryd_sink_lines_written_total": ("sink",),
    "telemetryd_sink_lines_set_aside_total": ("sink",),
    "telemetryd_sink_write_duration_seconds_bucket": ("sink", "le"),
    "telemetryd_node_last_report_timestamp_seconds": ("cluster", "Hostname"),
    "telemetryd_node_up": ("cluster", "Hostname"),
    # hosts (per node, like the GPU series)
    "telemetryd_host_cpu_percent": HOST_LABELS,
    "telemetryd_host_memory_used_bytes": HOST_LABELS,
    "telemetryd_host_memory_total_bytes": HOST_LABELS,
    "telemetryd_host_power_watts": (*HOST_LABELS, "zone"),
    "telemetryd_host_temperature_celsius": (*HOST_LABELS, "chip", "sensor"),
}

PANEL_TYPES = {"timeseries", "stat", "table", "state-timeline", "bargauge"}
DATASOURCE_REF = "${datasource}"
# Variables Grafana itself defines, per datasource type, beside the dashboard's own.
BUILTIN_VARIABLES = {
    "influxdb": {"timeFilter", "__interval"},
    "prometheus": {"__interval", "__rate_interval", "__range"},
}


# -- reading the dashboards ------------------------------------------------------------------
def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, with the panels of collapsed rows."""

    def walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in panels:
            yield panel
            yield from walk(panel.get("panels", []))

    yield from walk(dashboard["panels"])


def targets(dashboard: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(panel, target) for every query of every panel."""
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            yield panel, target


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def influx_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, InfluxQL) of every panel target and query variable."""
    out = [(f"panel {p['title']!r} {t['refId']}", t["query"]) for p, t in targets(dashboard)]
    out += [(f"variable {v['name']}", v["query"]) for v in variables(dashboard).values()
            if v["type"] == "query"]  # fmt: skip
    return out


def prometheus_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target (variables use Grafana's label_values())."""
    return [(f"panel {p['title']!r} {t['refId']}", t["expr"]) for p, t in targets(dashboard)]


# -- InfluxQL: just enough of a parser to know which names a query uses ------------------------
_INFLUX_TOKEN = re.compile(
    r"""\s*(?:
      (?P<ident>"(?:[^"\\]|\\.)*")
    | (?P<string>'(?:[^'\\]|\\.)*')
    | (?P<var>\$\w+)
    | (?P<number>\d+(?:\.\d+)?(?:ns|us|ms|s|m|h|d|w)?)
    | (?P<word>[A-Za-z_]\w*)
    | (?P<op>=~|!~|!=|<>|<=|>=|[=<>+\-*/&|^(),])
    )""",
    re.VERBOSE,
)
_REGEX = re.compile(r"\s*/((?:[^/\\]|\\.)*)/")
INFLUX_WORDS = {
    # keywords
    "select", "from", "where", "and", "or", "as", "group", "by", "order", "desc", "asc",
    "limit", "fill", "none", "null", "time", "now", "show", "tag", "values", "with", "key",
    # functions
    "mean", "last", "first", "max", "min", "sum", "count", "spread", "median",
    "difference", "non_negative_difference", "derivative", "non_negative_derivative",
}  # fmt: skip


@dataclass(frozen=True)
class Tok:
    kind: str
    text: str

    @property
    def name(self) -> str:
        """An identifier's name without its quotes."""
        return self.text[1:-1].replace('\\"', '"')


def influx_tokens(query: str) -> list[Tok]:
    """Tokens; a regex literal (after =~ or !~) is one token of kind ``regex``."""
    out: list[Tok] = []
    pos = 0
    while pos < len(query):
        if not query[pos:].strip():
            break
        if out and out[-1].text in ("=~", "!~"):
            m = _REGEX.match(query, pos)
            if not m:
                raise AssertionError(f"expected a /regex/ after {out[-1].text} at {pos}: {query}")
            out.append(Tok("regex", m.group(1)))
            pos = m.end()
            continue
        m = _INFLUX_TOKEN.match(query, pos)
        if not m or m.end() == pos:
            raise AssertionError(f"cannot read InfluxQL at {pos}: {query[pos : pos + 30]!r}")
        kind = m.lastgroup or ""
        out.append(Tok(kind, m.group(kind)))
        pos = m.end()
    return out


def _split_top(tokens: list[Tok], sep: str = ",") -> list[list[Tok]]:
    parts: list[list[Tok]] = [[]]
    depth = 0
    for tok in tokens:
        depth += tok.text == "("
        depth -= tok.text == ")"
        if depth == 0 and tok.text == sep:
            parts.append([])
        else:
            parts[-1].append(tok)
    return parts


def _matching(tokens: list[Tok], start: int) -> int:
    depth = 0
    for i in range(start, len(tokens)):
        depth += tokens[i].text == "("
        depth -= tokens[i].text == ")"
        if depth == 0:
            return i
    raise AssertionError("unbalanced parentheses")


@dataclass
class Scope:
    """What one SELECT reads and produces."""

    measurement: str
    columns: set[str] = field(default_factory=set)  # output columns (aliases, function names)
    group_tags: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)


def _clauses(tokens: list[Tok]) -> dict[str, list[Tok]]:
    """Top-level clauses of a SELECT by keyword (select, from, where, group, tail)."""
    marks: dict[str, int] = {}
    depth = 0
    for i, tok in enumerate(tokens):
        depth += tok.text == "("
        depth -= tok.text == ")"
        word = tok.text.lower() if tok.kind == "word" else ""
        if depth == 0 and word in ("from", "where", "group", "fill", "order", "limit"):
            marks.setdefault("tail" if word in ("fill", "order", "limit") else word, i)
    order = sorted(marks.items(), key=lambda kv: kv[1])
    out = {"select": tokens[1 : order[0][1]] if order else tokens[1:]}
    for n, (name, start) in enumerate(order):
        end = order[n + 1][1] if n + 1 < len(order) else len(tokens)
        out[name] = tokens[start + 1 : end]
    return out


def analyze_select(tokens: list[Tok]) -> Scope:
    """Check every name a SELECT uses against the schema (or its subquery's output)."""
    assert tokens and tokens[0].text.upper() == "SELECT", "a query starts with SELECT"
    parts = _clauses(tokens)
    source = parts.get("from")
    if not source:
        return Scope("", errors=["no FROM clause"])
    if source[0].text == "(":
        end = _matching(source, 0)
        sub = analyze_select(source[1:end])
        scope = Scope(sub.measurement, errors=list(sub.errors))
        fields, tags = sub.columns, sub.group_tags
    else:
        name = source[0].name if source[0].kind == "ident" else source[0].text
        if source[0].kind != "ident" or name not in MEASUREMENTS:
            return Scope(name, errors=[f"FROM {source[0].text}: no such measurement"])
        scope = Scope(name)
        tags, fields = set(MEASUREMENTS[name][0]), set(MEASUREMENTS[name][1])
    where = f"measurement {scope.measurement!r}"
    if source[0].text == "(":
        where += " (a subquery)"

    for item in _split_top(parts["select"]):
        alias = None
        if len(item) >= 2 and item[-2].text.upper() == "AS":
            alias, item = item[-1].name, item[:-2]
        for i, tok in enumerate(item):
            if tok.kind != "ident":
                continue
            is_argument = i >= 2 and item[i - 1].text == "(" and item[i - 2].kind == "word"
            if is_argument and tok.name not in fields:
                scope.errors.append(f"SELECT {tok.text}: not a field of {where}")
            elif not is_argument and tok.name not in fields | tags:
                scope.errors.append(f"SELECT {tok.text}: not a field or tag of {where}")
        if alias:
            scope.columns.add(alias)
        elif item and item[0].kind == "word":
            scope.columns.add(item[0].text.lower())
        elif item and item[0].kind == "ident":
            scope.columns.add(item[0].name)
    for tok in parts.get("where", []):
        if tok.kind == "ident" and tok.name not in fields | tags:
            scope.errors.append(f"WHERE {tok.text}: not a field or tag of {where}")
    for tok in parts.get("group", []):
        if tok.kind == "ident":
            if tok.name in tags:
                scope.group_tags.add(tok.name)
            else:
                scope.errors.append(f"GROUP BY {tok.text}: not a tag of {where}")
    return scope


def analyze_influx(query: str) -> Scope:
    """Check one InfluxQL statement (SELECT or SHOW TAG VALUES) against the schema."""
    tokens = influx_tokens(query)
    errors = [
        f"unquoted word {t.text!r} (quote identifiers; known keywords only)"
        for t in tokens
        if t.kind == "word" and t.text.lower() not in INFLUX_WORDS
    ]
    if [t.text.upper() for t in tokens[:3]] == ["SHOW", "TAG", "VALUES"]:
        words = [t.text.upper() for t in tokens]
        measurement = tokens[4].name if words[3] == "FROM" and tokens[4].kind == "ident" else ""
        scope = Scope(measurement, errors=errors)
        if measurement not in MEASUREMENTS:
            scope.errors.append(f"SHOW TAG VALUES FROM {measurement!r}: no such measurement")
            return scope
        tags = set(MEASUREMENTS[measurement][0])
        for tok in tokens[5:]:
            if tok.kind == "ident" and tok.name not in tags:
                scope.errors.append(f"{tok.text}: not a tag of {measurement!r}")
        return scope
    scope = analyze_select(tokens)
    scope.errors[:0] = errors
    return scope


# -- PromQL: the names an expression uses --------------------------------------------------------
PROMQL_FUNCTIONS = {
    "abs", "avg", "count", "floor", "histogram_quantile", "increase", "max", "min", "rate",
    "sum", "time", "topk", "vector",
}  # fmt: skip
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "and", "or", "unless", "bool"}
AGGREGATIONS = {"sum", "avg", "count", "max", "min", "topk"}


@dataclass
class PromUse:
    metrics: list[str] = field(default_factory=list)
    labels: list[tuple[str, str]] = field(default_factory=list)  # (metric, label) in selectors
    grouping: list[str] = field(default_factory=list)  # labels in by (...)
    errors: list[str] = field(default_factory=list)


def analyze_promql(expr: str) -> PromUse:
    """Metrics, selector labels and grouping labels of a PromQL expression (no strings)."""
    use = PromUse()
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\[[^\]]*\]", "", text)  # range durations
    for m in re.finditer(r"\b(by|without|on|ignoring)\s*\(([^)]*)\)", text):
        use.grouping += [name.strip() for name in m.group(2).split(",") if name.strip()]
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", " ", text)
    for m in re.finditer(r"([A-Za-z_:][\w:]*)\s*(\{[^}]*\})?\s*(\()?", text):
        name, selector, call = m.group(1), m.group(2), m.group(3)
        if name in PROMQL_KEYWORDS:
            continue
        if call and not selector:
            if name not in PROMQL_FUNCTIONS:
                use.errors.append(f"{name}(): not a PromQL function this test knows")
            continue
        use.metrics.append(name)
        for label in re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", selector or ""):
            use.labels.append((name, label))
    return use


def promql_problems(expr: str) -> list[str]:
    """Names in ``expr`` that /metrics does not serve, as one line each."""
    use = analyze_promql(expr)
    problems = list(use.errors)
    if not use.metrics:
        problems.append(f"no metric in {expr!r}")
    problems += [f"{m} is not served by /metrics" for m in use.metrics if m not in PROMETHEUS_NAMES]
    problems += [f"{m} has no label {label!r}" for m, label in use.labels
                 if label not in PROMETHEUS_NAMES.get(m, ())]  # fmt: skip
    known = {label for m in use.metrics for label in PROMETHEUS_NAMES.get(m, ())}
    problems += [f"by ({label}) is no label of {use.metrics}"
                 for label in use.grouping if label not in known]  # fmt: skip
    return problems


def prometheus_legend_labels(target: dict[str, Any]) -> set[str]:
    return set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))


# -- the tests -----------------------------------------------------------------------------------
BOARDS = [(INFLUX, "influxdb", "DS_INFLUXDB"), (PROMETHEUS, "prometheus", "DS_PROMETHEUS")]


@pytest.fixture(params=BOARDS, ids=["influxdb", "prometheus"])
def board(request: pytest.FixtureRequest) -> tuple[dict[str, Any], str, str]:
    path, plugin, input_name = request.param
    return load(path), plugin, input_name


def test_dashboard_is_importable(board):
    dash, plugin, input_name = board
    assert dash["__inputs"] == [
        {**dash["__inputs"][0], "name": input_name, "type": "datasource", "pluginId": plugin}
    ]
    required = {(r["type"], r["id"]) for r in dash["__requires"]}
    assert ("grafana", "grafana") in required
    assert ("datasource", plugin) in required
    used = {p["type"] for p in all_panels(dash) if p["type"] != "row"}
    assert used <= {r["id"] for r in dash["__requires"] if r["type"] == "panel"}
    assert isinstance(dash["schemaVersion"], int) and dash["schemaVersion"] >= 39
    assert dash["id"] is None, "an exported dashboard has no database id"
    assert re.fullmatch(r"[a-z0-9-]{1,40}", dash["uid"])
    assert dash["title"] and isinstance(dash["refresh"], str)
    assert "time_options" not in dash.get("timepicker", {})


def test_datasource_and_template_variables(board):
    dash, plugin, input_name = board
    found = variables(dash)
    ds = found["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == plugin
    assert ds["current"]["value"] == f"${{{input_name}}}", "the import fills in the chosen one"
    for name in ("cluster", "node", "gpu"):
        var = found[name]
        assert var["type"] == "query", name
        assert var["datasource"] == {"type": plugin, "uid": DATASOURCE_REF}, name
        query = var["query"]
        if plugin == "influxdb":
            assert query.startswith(f'SHOW TAG VALUES FROM "gpu" WITH KEY = "{name}"'), query
        else:
            label = {"cluster": "cluster", "node": "Hostname", "gpu": "gpu"}[name]
            assert re.fullmatch(rf"label_values\(DCGM_FI_DEV_\w+(\{{.*\}})?, {label}\)", query)
    assert found["cluster"]["includeAll"] and found["gpu"]["includeAll"]
    assert found["node"]["multi"]


def test_panel_ids_grid_positions_and_datasources(board):
    dash, plugin, _ = board
    panels = list(all_panels(dash))
    ids = [p["id"] for p in panels]
    assert all(isinstance(i, int) for i in ids)
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    titles = [p["title"] for p in panels]
    assert len(titles) == len(set(titles)), "an operator tells panels apart by their titles"
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        pos = panel["gridPos"]
        assert {k: type(v) for k, v in pos.items()} == dict.fromkeys("hwxy", int), panel["title"]
        assert pos["h"] > 0 and pos["w"] > 0 and pos["x"] >= 0 and pos["x"] + pos["w"] <= 24
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]
        assert panel["title"], panel["id"]
        if panel["type"] == "row":
            assert pos["w"] == 24 and pos["h"] == 1
            continue
        assert panel["type"] in PANEL_TYPES, panel["type"]
        assert panel["datasource"] == {"type": plugin, "uid": DATASOURCE_REF}, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], (panel["title"], target["refId"])
            if plugin == "influxdb":
                assert target["rawQuery"] is True and target["query"].strip()
                assert target["resultFormat"] in ("time_series", "table")
            else:
                assert target["expr"].strip()
                assert target.get("format", "time_series") in ("time_series", "table")


def test_rows_cover_the_views(board):
    dash, plugin, _ = board
    rows = [p["title"].split(":")[0] for p in dash["panels"] if p["type"] == "row"]
    expected = ["Fleet overview", "GPU detail", "Power and energy", "Throttling and errors"]
    assert rows[:4] == expected
    if plugin == "prometheus":
        assert "Aggregator health" in rows


def test_queries_use_only_defined_variables(board):
    dash, plugin, _ = board
    defined = set(variables(dash)) | BUILTIN_VARIABLES[plugin]
    key = "query" if plugin == "influxdb" else "expr"
    texts = [t[key] for _, t in targets(dash)]
    texts += [v["query"] for v in variables(dash).values() if v["type"] == "query"]
    texts += [p["title"] + p.get("description", "") for p in all_panels(dash)]
    for text in texts:
        for name in re.findall(r"\$\{?(\w+)", text):
            assert name in defined, f"${name} in {text!r}"


def test_influxql_names_exist_in_the_schema():
    dash = load(INFLUX)
    problems = []
    for where, query in influx_queries(dash):
        scope = analyze_influx(query)
        problems += [f"{where}: {error}\n    {query}" for error in scope.errors]
    assert not problems, "\n".join(problems)


def test_influx_aliases_name_grouped_tags():
    """``$tag_x`` in an alias is empty unless the query groups by x."""
    for panel, target in targets(load(INFLUX)):
        wanted = set(re.findall(r"\$tag_(\w+)", target.get("alias", "")))
        scope = analyze_influx(target["query"])
        assert wanted <= scope.group_tags, (panel["title"], target["refId"], wanted)


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ('SELECT mean("util_pct") FROM "gpu" WHERE $timeFilter', 'SELECT "util_pct"'),
        ('SELECT mean("temp_c") FROM "gpus" WHERE $timeFilter', "no such measurement"),
        ('SELECT mean("temp_c") FROM "gpu" WHERE "host" = \'a\'', 'WHERE "host"'),
        ('SELECT mean("temp_c") FROM "gpu" GROUP BY "pci_bus_id"', 'GROUP BY "pci_bus_id"'),
        ('SELECT mean(temp_c) FROM "gpu"', "unquoted word 'temp_c'"),
        ('SELECT sum("x") FROM (SELECT last("power_w") AS "p" FROM "gpu" GROUP BY "node")',
         'SELECT "x": not a field of measurement \'gpu\' (a subquery)'),
        ('SELECT sum("p") FROM (SELECT last("power_w") AS "p" FROM "gpu") GROUP BY "node"',
         'GROUP BY "node"'),
        ('SHOW TAG VALUES FROM "gpu" WITH KEY = "hostname"', '"hostname": not a tag'),
    ],
)  # fmt: skip
def test_influxql_checker_catches_wrong_names(query, error):
    """The checker itself: each mistake a schema change could cause is reported."""
    errors = analyze_influx(query).errors
    assert any(error in e for e in errors), errors


def test_promql_uses_only_served_metrics_and_labels():
    dash = load(PROMETHEUS)
    problems = []
    for where, expr in prometheus_queries(dash):
        problems += [f"{where}: {problem}" for problem in promql_problems(expr)]
    for v in variables(dash).values():
        if v["type"] == "query":
            use = analyze_promql(re.sub(r"^label_values\((.*), (\w+)\)$", r"\1", v["query"]))
            label = v["query"].rsplit(", ", 1)[1].rstrip(")")
            for metric in use.metrics:
                if label not in PROMETHEUS_NAMES.get(metric, ()):
                    problems.append(f"variable {v['name']}: {metric} has no label {label!r}")
    assert not problems, "\n".join(problems)


def test_promql_legends_name_labels_the_result_has():
    for panel, target in targets(load(PROMETHEUS)):
        use = analyze_promql(target["expr"])
        outer = re.match(r"\s*(\w+)\s+by\s*\(([^)]*)\)", target["expr"])
        if outer and outer.group(1) in AGGREGATIONS:
            have = {label.strip() for label in outer.group(2).split(",")}
        else:
            have = {label for m in use.metrics for label in PROMETHEUS_NAMES[m]}
        assert prometheus_legend_labels(target) <= have, (panel["title"], target["refId"])


def test_every_served_metric_is_shown():
    """The Prometheus dashboard shows everything /metrics serves, so nothing is forgotten."""
    used = {m for _, expr in prometheus_queries(load(PROMETHEUS))
            for m in analyze_promql(expr).metrics}  # fmt: skip
    assert set(PROMETHEUS_NAMES) - used == set()


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ('DCGM_FI_DEV_GPU_UTILS{cluster=~"$cluster"}', "not served"),
        ("sum(vector(1))", "no metric"),
        ('DCGM_FI_DEV_GPU_UTIL{hostname=~"$node"}', "no label 'hostname'"),
        ("sum by (node) (DCGM_FI_DEV_POWER_USAGE)", "by (node)"),
        ("rates(DCGM_FI_DEV_POWER_VIOLATION[5m])", "rates()"),
    ],
)
def test_promql_checker_catches_wrong_names(expr, problem):
    found = promql_problems(expr)
    assert any(problem in f for f in found), found


def test_every_name_the_prometheus_dashboard_uses_is_served() -> None:
    """The names list above against what the aggregator's /metrics really renders."""
    from prometheus_client.parser import text_string_to_metric_families

    from exporters.prometheus import render
    from tests.unit import test_prometheus as tp

    c = tp.collector(labels="dcgm")
    c.observe(tp.decode_report(tp.sampled()), tp.T)
    busy = {"gr_engine_active_pct": 50.0, "tensor_active_pct": 20.0, "dram_active_pct": 30.0,
            "pcie_tx_bytes_per_s": 1e9, "pcie_rx_bytes_per_s": 2e9}  # fmt: skip
    for i in range(2):  # two reports: NVLink bandwidth is a rate
        at = tp.T + i * tp.S
        gpus = [tp.gpu(0, nvlink_tx_bytes=10**9 * (i + 1), nvlink_rx_bytes=10**9, **busy)]
        events = [tp.xid(79, at - tp.S)] if i else []
        c.observe(tp.report("n2", time_ns=at, gpus=gpus, host=tp.full_host(), events=events), at)
    c.update(tp.stats())
    served: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(render(c).decode()):
        for sample in family.samples:
            served.setdefault(sample.name, set()).update(sample.labels)
    missing = sorted(set(PROMETHEUS_NAMES) - set(served))
    assert missing == [], f"the dashboards use names /metrics does not serve: {missing}"
    for name, labels in PROMETHEUS_NAMES.items():
        assert set(labels) <= served[name], (name, set(labels) - served[name])

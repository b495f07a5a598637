"""A real Prometheus (Debian's ``prometheus`` package) and promtool for tests.

Each server gets a temporary directory holding its config, TSDB and log; it listens on
127.0.0.1:<free port> and scrapes the given targets every second. Queries go through its
real HTTP API (``/api/v1/query``). Without ``/usr/bin/prometheus`` (or ``promtool``) the
tests skip locally and fail under CI (a missing service is a failure there).
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tests.integration.mosquitto import free_port, require_binary
from tests.integration.server import ServerProcess

PROMETHEUS_BIN = "/usr/bin/prometheus"
PROMTOOL_BIN = "/usr/bin/promtool"
INSTALL_HINT = "install Debian's prometheus package (scripts/test does)"


def prometheus_binary() -> str:
    """The server binary, or skip (locally) / fail (in CI)."""
    return require_binary("prometheus", PROMETHEUS_BIN, INSTALL_HINT)


def promtool_binary() -> str:
    """promtool, or skip (locally) / fail (in CI)."""
    return require_binary("promtool", PROMTOOL_BIN, INSTALL_HINT)


def promtool_check_metrics(text: bytes) -> tuple[int, list[str]]:
    """``promtool check metrics`` on an exposition: its exit code and its findings."""
    result = subprocess.run(
        [promtool_binary(), "check", "metrics"], input=text, capture_output=True, timeout=60
    )
    output = (result.stdout + result.stderr).decode(errors="replace")
    return result.returncode, [line for line in output.splitlines() if line.strip()]


class PrometheusError(RuntimeError):
    """The server did not answer as asked."""


class Prometheus(ServerProcess):
    """One ``prometheus`` subprocess scraping ``targets`` (HOST:PORT) every second."""

    name = "prometheus"

    def __init__(self, workdir: Path, targets: Iterable[str]) -> None:
        super().__init__(workdir, "prometheus.log")
        self.port = free_port()
        self.targets = list(targets)
        self.conf_path = self.workdir / "prometheus.yml"
        self.conf_path.write_text(self._config())

    def _config(self) -> str:
        targets = ", ".join(json.dumps(t) for t in self.targets)
        return f"""global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: telemetryd
    static_configs:
      - targets: [{targets}]
"""

    @property
    def url(self) -> str:
        """The base URL of its HTTP API."""
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [prometheus_binary(), f"--config.file={self.conf_path}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}"]  # fmt: skip

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def backfill(self, openmetrics: str) -> Prometheus:
        """Load samples into its TSDB before it starts (``promtool tsdb create-blocks-from``)."""
        source = self.workdir / "samples.om"
        source.write_text(openmetrics)
        done = subprocess.run(
            [promtool_binary(), "tsdb", "create-blocks-from", "openmetrics", str(source),
             str(self.workdir / "data")], capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if done.returncode != 0:
            raise PrometheusError(f"backfill failed: {done.stdout}{done.stderr}")
        return self

    def api(self, path: str, **params: object) -> dict[str, Any]:
        """``/api/v1/<path>`` with ``params``: the decoded answer."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                return dict(json.loads(response.read()))
        except urllib.error.HTTPError as exc:
            raise PrometheusError(f"{path} {params}: {exc.code} {exc.read().decode()}") from None

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query through ``/api/v1/query``: its result vector."""
        data = self.api("query", query=promql)
        if data.get("status") != "success":
            raise PrometheusError(f"{promql!r}: {data}")
        return list(data["data"]["result"])

    def values(self, promql: str, label: str) -> dict[str, float]:
        """The result of ``promql`` as {value of ``label``: sample value}."""
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in self.query(promql)}

    def __repr__(self) -> str:
        return f"Prometheus({self.url}, dir={self.workdir})"

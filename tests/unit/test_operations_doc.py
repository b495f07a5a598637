"""docs/operations.md stays true to the code: its error lines, paths and links.

An admin greps the journal for the lines the troubleshooting section quotes, so each quoted
line must still be what the code prints: a reworded message fails here until the doc
follows. Relative links must lead to files that exist.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs/operations.md"

# (what the doc quotes, the file that prints it, the format string there).
QUOTED = [
    ("no GPUs: NVML is not available (", "telemetryd/sampler.py", '"no GPUs: %s"'),
    ("no GPUs: NVML is not available (", "collectors/nvml.py", 'f"NVML is not available ({exc})"'),
    (
        'use\n--gpu-backend sim (or gpu_backend = "sim")',
        "telemetryd/sampler.py",
        "use --gpu-backend sim",
    ),
    (
        "NVML initialised but cannot list GPUs (...)",
        "collectors/nvml.py",
        "NVML initialised but cannot list GPUs (",
    ),
    (
        "it is reported with\nthat error",
        "collectors/nvml.py",
        "no handle (%s); it is reported with that error",
    ),
    (
        "needs more privileges;\nfield absent",
        "collectors/nvml_read.py",
        "needs more privileges; field absent",
    ),
    (
        "refused us: [code:135] Not authorized;\n  retrying in",
        "exporters/mqtt.py",
        'refused us: {exc}"',
    ),
    (
        "MQTT: cannot connect to mqtt://",
        "exporters/mqtt.py",
        'f"cannot connect to {self.settings.broker}: {exc}"',
    ),
    ("MQTT: cannot connect to mqtt://", "telemetryd/agent.py", '"MQTT: %s; retrying in %.1fs"'),
    (
        "broker refused the publish to telemetry/v1/dc1/node-02/report: reason 0x87",
        "exporters/mqtt.py",
        "broker refused the publish to {topic}: reason {reason:#04x}",
    ),
    (
        "(check the broker ACL: a node may only write under its own name)",
        "exporters/mqtt.py",
        "(check the broker ACL: a node may only write under its own name)",
    ),
    ("refused MQTT 5; using MQTT 3.1.1", "exporters/mqtt.py", "refused MQTT 5; using MQTT 3.1.1"),
    (
        "401 the\ncredentials were refused; check the token or password file",
        "exporters/influx_write.py",
        "the credentials were refused; check the token or password file",
    ),
    ("does not exist;\ncreate it", "exporters/influx_write.py", "does not exist; create it"),
    (
        "no token: set aggregator.influxdb.token_file or the\nsystemd credential influxdb-token",
        "exporters/influxdb2.py",
        "no token: set aggregator.influxdb.token_file or the systemd",
    ),
    (
        "is in use by pid N; give each agent or aggregator\n  its own --state-dir",
        "telemetryd/statedir.py",
        "give each agent or aggregator its own --state-dir",
    ),
    (
        "database schema version N is newer than this telemetryd understands (M);\n"
        "upgrade telemetryd or use another file",
        "exporters/sqlite.py",
        "upgrade telemetryd or use ",
    ),
    ("no RAPL: permission denied on", "collectors/rapl.py", "no RAPL: permission denied on"),
]


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


@pytest.mark.parametrize(("quoted", "source", "fragment"), QUOTED)
def test_quoted_line_is_in_the_doc_and_in_the_code(quoted: str, source: str, fragment: str) -> None:
    assert _flat(quoted) in _flat(DOC.read_text(encoding="utf-8")), quoted
    assert fragment in (ROOT / source).read_text(encoding="utf-8"), f"{source}: {fragment}"


def test_relative_links_lead_to_files() -> None:
    links = re.findall(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)", DOC.read_text(encoding="utf-8"))
    assert links
    missing = [link for link in links if not (DOC.parent / link).exists()]
    assert not missing, missing

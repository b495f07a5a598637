"""The package a site installs: sdist and wheel built, checked, installed and run.

A source checkout hides packaging mistakes: a data file missing from ``package-data``, an
entry point naming a module the wheel lacks, an import of a dev-only library. These tests
build the sdist and wheel with ``python -m build`` (an isolated build, as a release would),
run ``twine check`` on both, install the wheel **with its dependencies** into a fresh venv
and run ``telemetryd collect --once --gpu-backend sim`` from it, outside the checkout, so
nothing of the source tree is importable. ``scripts/test`` runs the same steps in shell
before the suite, so a broken package fails CI in its first minute.

Without ``build`` or ``twine`` (the ``dev`` extra) they skip locally and fail under CI.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.integration.mosquitto import in_ci

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# Package data the code opens at run time (pyproject.toml [tool.setuptools.package-data]).
PACKAGE_DATA = [
    "telemetryd/py.typed",
    "collectors/py.typed",
    "exporters/py.typed",
    "telemetryd/top.tcss",
    "telemetryd/alerting/rules/default.toml",
    "telemetryd/demo_data/scenario.toml",
    "telemetryd/demo_data/rules/demo.toml",
    "collectors/cards/h100-sxm5-80gb.json",
]
# Files a site deploys beside the code: in the sdist at these paths, and in the wheel under
# <venv>/share/telemetryd/ ([tool.setuptools.data-files]). systemd/ is listed from the tree.
SHARED = [
    "examples/alerting.toml",
    "examples/mosquitto/mosquitto.conf",
    "examples/mosquitto/acl",
    "examples/slurm/prolog.sh",
    "dashboards/telemetryd-influxdb.json",
    "dashboards/telemetryd-prometheus.json",
]
UNIT_PATTERNS = [
    "systemd/*.service",
    "systemd/*.md",
    "systemd/drop-ins/*.conf",
    "systemd/sysusers.d/*.conf",
    "systemd/udev/*.rules",
]
# The units' Documentation= names <venv>/share/doc/telemetryd/operations.md.
DOC = ("docs/operations.md", "share/doc/telemetryd/operations.md")
BUILD_TIMEOUT_S = 300
INSTALL_TIMEOUT_S = 300


def _require(module: str) -> None:
    if importlib.util.find_spec(module) is not None:
        return
    hint = f"{module} is not installed (pip install -e '.[dev]')"
    if in_ci():
        pytest.fail(f"{hint}: the packaging check must run in CI")
    pytest.skip(hint)


def _installed_files() -> list[tuple[str, str]]:
    """(path in the sdist, path under the venv) of every file installed beside the code."""
    units = sorted(str(p.relative_to(ROOT)) for pat in UNIT_PATTERNS for p in ROOT.glob(pat))
    return [(f, f"share/telemetryd/{f}") for f in SHARED + units] + [DOC]


def _run(cmd: list[str], timeout: float, **kwargs: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(sdist, wheel), built once for the module from this checkout."""
    _require("build")
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], BUILD_TIMEOUT_S)
    (sdist,) = out.glob("telemetryd-*.tar.gz")
    (wheel,) = out.glob("telemetryd-*.whl")
    return sdist, wheel


def test_twine_check_passes_on_sdist_and_wheel(dist: tuple[Path, Path]) -> None:
    _require("twine")
    proc = _run([sys.executable, "-m", "twine", "check", "--strict", *map(str, dist)], 120)
    assert proc.stdout.count("PASSED") == 2, proc.stdout


def test_wheel_carries_package_data_and_site_files(dist: tuple[Path, Path]) -> None:
    _, wheel = dist
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [f for f in PACKAGE_DATA if f not in names]
    assert not missing, f"package data missing from {wheel.name}: {missing}"
    data = wheel.name.split("-py3")[0] + ".data/data/"
    missing = [dest for _, dest in _installed_files() if data + dest not in names]
    assert not missing, f"site files missing from {wheel.name}: {missing}"
    assert not [n for n in names if n.startswith("tests/")], "the test suite is not shipped"


def test_sdist_carries_units_examples_and_docs(dist: tuple[Path, Path]) -> None:
    sdist, _ = dist
    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        names = {n.removeprefix(top + "/") for n in tar.getnames()}
    expected = [*PACKAGE_DATA, *(src for src, _ in _installed_files()), "README.md"]
    missing = [f for f in expected if f not in names]
    assert not missing, f"missing from {sdist.name}: {missing}"


def test_wheel_installs_in_a_fresh_venv_and_collects(
    dist: tuple[Path, Path], tmp_path: Path
) -> None:
    _, wheel = dist
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], 120)
    # With its dependencies (no --no-deps): a missing or wrong requirement must fail here.
    _run([str(venv / "bin/python"), "-m", "pip", "install", "-q", str(wheel)], INSTALL_TIMEOUT_S)

    # Outside the checkout and without PYTHONPATH: only the installed package can answer.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["COLUMNS"] = "200"
    where = _run(
        [str(venv / "bin/python"), "-c", "import telemetryd; print(telemetryd.__file__)"],
        60,
        cwd=tmp_path,
        env=env,
    )
    assert where.stdout.strip().startswith(str(venv)), where.stdout

    proc = _run(
        [str(venv / "bin/telemetryd"), "collect", "--once", "--gpu-backend", "sim", "--gpus", "2"],
        120,
        cwd=tmp_path,
        env=env,
    )
    assert "2 GPU(s)" in proc.stdout, proc.stdout
    assert "H100" in proc.stdout, proc.stdout

    # The shipped rule pack loads from the installed package data.
    _run(
        [
            str(venv / "bin/telemetryd"),
            "alerts",
            "check-rules",
            str(next(venv.glob("lib/python*/site-packages/telemetryd/alerting/rules"))),
        ],
        60,
        cwd=tmp_path,
        env=env,
    )
    missing = [dest for _, dest in _installed_files() if not (venv / dest).is_file()]
    assert not missing, f"not installed under {venv}: {missing}"

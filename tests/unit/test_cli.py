"""The ``telemetryd`` command line, in process and as real processes.

In process: click's CliRunner for help, samples and checks that succeed, and
``telemetryd.cli.main`` (caught SystemExit, captured stderr) for exit codes and the
one-line error behaviour. As processes: ``python -m telemetryd`` and the installed console
script, with every ``TELEMETRYD_*`` variable of the calling environment removed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from telemetryd import __version__, registry
from telemetryd.cli import cli, main
from telemetryd.config import Config
from telemetryd.configload import load
from telemetryd.errors import ConfigError
from telemetryd.model import Report, decode_report
from tests.conftest import SECRET
from tests.nvmlfakes import nvml_loads

SCRIPT = shutil.which("telemetryd", path=str(Path(sys.executable).parent))

BAD_CHECK = '[agent]\ninterval = "fast"\nnodee = "x"\n'
GOOD_CHECK = '[agent]\nnode = "n1"\ncluster = "c1"\ngpu_backend = "sim"\n[agent.sim]\ngpus = 2\n'

GPU_FIELDS = {
    "clocks": ["sm_clock_mhz", "mem_clock_mhz"],
    "temperatures": ["temp_c", "mem_temp_c"],
    "power": ["power_w", "power_limit_w", "power_enforced_limit_w", "power_default_limit_w"],
    "energy": ["energy_mj"],
    "pcie": ["pcie_replay_total", "pcie_tx_bytes_per_s", "pcie_rx_bytes_per_s"],
    "utilisation": ["util_gpu_pct", "util_mem_pct", "util_enc_pct", "util_dec_pct"],
    "framebuffer": ["fb_free_bytes", "fb_used_bytes", "fb_reserved_bytes"],
    "nvlink": ["nvlink_tx_bytes", "nvlink_rx_bytes"],
    "remap": [
        "remap_correctable_rows",
        "remap_uncorrectable_rows",
        "remap_pending",
        "remap_failure",
    ],
    "clock_event_reasons": ["clock_event_reasons"],
    "ecc": ["ecc_sbe_volatile", "ecc_dbe_volatile", "ecc_sbe_aggregate", "ecc_dbe_aggregate"],
    "pstate": ["pstate"],
    "identity": [
        "index",
        "uuid",
        "pci_bus_id",
        "name",
        "serial",
        "vbios",
        "driver",
        "cuda_driver",
    ],
    "mig": ["mig_mode"],
    "gpm": ["sm_active_pct", "tensor_active_pct", "dram_active_pct"],
    "processes": ["processes"],
}


# --- helpers and fixtures ---------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """The calling environment without our variables, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TELEMETRYD_") and k != "CREDENTIALS_DIRECTORY"
    }
    env["COLUMNS"] = "160"  # the table must not truncate the card name
    env.update(extra)
    return env


def run(
    *args: str, script: bool = False, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run telemetryd as a process: the console script or ``python -m telemetryd``."""
    if script:
        assert SCRIPT, "the telemetryd console script is not installed next to python"
        argv = [SCRIPT, *args]
    else:
        argv = [sys.executable, "-m", "telemetryd", *args]
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env=clean_env(**env),
        cwd=cwd,
        timeout=60,
        check=False,
    )


def one_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No variables of ours from the caller; cwd in tmp; logging left as found."""
    for var in list(os.environ):
        if var.startswith("TELEMETRYD_") or var == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def call(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``main(args)`` in process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as info:
        main(args)
    out, err = capsys.readouterr()
    code = info.value.code
    assert isinstance(code, int)
    return code, out, err


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), prog_name="telemetryd")
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def write(tmp_path: Path, text: str, name: str = "telemetryd.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def report_of(proc: subprocess.CompletedProcess[str]) -> tuple[dict[str, object], Report]:
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout.count("\n") == 1, proc.stdout[:500]
    assert proc.stdout.endswith("\n")
    raw = json.loads(proc.stdout)
    assert isinstance(raw, dict)
    return raw, decode_report(proc.stdout.encode())


# --- version and help -------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_in_process(capsys: pytest.CaptureFixture[str], flag: str) -> None:
    assert call([flag], capsys) == (0, f"telemetryd, version {__version__}\n", "")


@pytest.mark.parametrize("script", [False, True], ids=["python-m", "console-script"])
def test_version_as_process(script: bool) -> None:
    proc = run("--version", script=script)
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        0,
        f"telemetryd, version {__version__}\n",
        "",
    )


@pytest.mark.parametrize(
    "command", [[], ["collect"], ["config"], ["config", "check"], ["config", "sample"]]
)
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_everywhere(command: list[str], flag: str) -> None:
    code, out, err = invoke(*command, flag)
    assert code == 0, err
    assert out.startswith(" ".join(["Usage: telemetryd", *command]) + " [OPTIONS]"), out
    assert err == ""


def test_help_lists_commands_and_options() -> None:
    assert all(word in invoke("--help")[1] for word in ("collect", "config", "--log-level"))
    assert all(word in invoke("config", "--help")[1] for word in ("check", "sample"))
    out = invoke("collect", "--help")[1]
    for option in ("--config", "--once", "--json", "--gpu-backend", "--gpus", "--window"):
        assert option in out


def test_help_through_main(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = call(["config", "sample", "--help"], capsys)
    assert (code, err) == (0, "")
    assert out.startswith("Usage: telemetryd config sample [OPTIONS] {agent|aggregator|broker|top}")


@pytest.mark.parametrize(
    ("command", "script"),
    [(["collect", "--help"], False), (["config", "check", "--help"], True)],
)
def test_help_as_process(command: list[str], script: bool) -> None:
    proc = run(*command, script=script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: telemetryd " + command[0])
    assert proc.stderr == ""


# --- bad usage: exit 2, one line --------------------------------------------------------


BAD_USAGE = [
    (["collect", "--bogus"], "telemetryd collect: No such option '--bogus'"),
    (["config", "check"], "telemetryd config check: Missing argument 'FILE'."),
    (
        ["config", "sample", "foo"],
        "telemetryd config sample: Invalid value for '{agent|aggregator|broker|top}': "
        "'foo' is not one of 'agent', 'aggregator', 'broker', 'top'.",
    ),
    (["nosuch"], "telemetryd: No such command 'nosuch'."),
    (["collect", "--gpus", "abc"], "telemetryd collect: Invalid value for '--gpus': 'abc'"),
    (["collect", "--window", "0"], "telemetryd collect: Invalid value for '--window': 0.0"),
    (["--log-level", "loud", "config", "sample", "agent"], "telemetryd: Invalid value for '--log"),
    (
        ["collect", "--record", "x.json", "--gpu-backend", "sim"],
        "telemetryd collect: --record reads real NVML; it cannot be combined with "
        "--gpu-backend sim",
    ),
    (["config", "check", "."], "telemetryd config check: Invalid value for 'FILE'"),
]


@pytest.mark.parametrize(("args", "start"), BAD_USAGE)
def test_bad_usage_in_process(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], start: str
) -> None:
    code, out, err = call(args, capsys)
    assert (code, out) == (2, "")
    line = one_line(err)
    assert line.startswith(start), line
    assert line.endswith("--help')"), line
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize(
    ("case", "script"),
    [(0, False), (1, True), (2, True), (7, False)],
    ids=["unknown-option", "missing-argument", "bad-choice", "record-with-sim"],
)
def test_bad_usage_as_process(tmp_path: Path, case: int, script: bool) -> None:
    args, start = BAD_USAGE[case]
    proc = run(*args, script=script, cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert one_line(proc.stderr).startswith(start)
    assert not (tmp_path / "x.json").exists()


def test_group_without_command_is_clean(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = call(["config"], capsys)
    assert code == 2
    text = out + err
    # Either the plain help, or one line saying a command is missing; not a mix.
    assert text.startswith("Usage: telemetryd config") or len(err.splitlines()) == 1, err


# --- config check -----------------------------------------------------------------------


def test_check_reports_wrong_type_and_unknown_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Acceptance: every broken key of the file, one per line, exit 2."""
    path = write(tmp_path, BAD_CHECK)
    code, out, err = call(["config", "check", str(path)], capsys)
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"{path}:2: agent.interval: expected float, got str (got 'fast')",
        f"{path}:3: agent.nodee: unknown key; did you mean 'node'?",
    ]


@pytest.mark.parametrize("script", [False, True], ids=["python-m", "console-script"])
def test_check_reports_both_keys_as_process(tmp_path: Path, script: bool) -> None:
    path = write(tmp_path, BAD_CHECK)
    proc = run("config", "check", str(path), script=script)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 2, proc.stderr
    assert lines[0].startswith(f"{path}:2: agent.interval: ")
    assert lines[1].startswith(f"{path}:3: agent.nodee: ")


def test_check_with_debug_raises(tmp_path: Path) -> None:
    path = write(tmp_path, BAD_CHECK)
    with pytest.raises(ConfigError) as info:
        main(["--debug", "config", "check", str(path)])
    assert len(info.value.problems) == 2


def test_check_prints_the_effective_configuration(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD_CHECK)
    code, out, err = invoke("config", "check", str(path))
    assert (code, err) == (0, "")
    data = tomllib.loads(out)
    assert set(data) == {"agent"}
    assert (data["agent"]["node"], data["agent"]["cluster"]) == ("n1", "c1")
    assert data["agent"]["gpu_backend"] == "sim"
    assert data["agent"]["sim"]["gpus"] == 2
    assert data["agent"]["interval"] == 10.0  # defaults are filled in
    again = load(str(write(tmp_path, out, "effective.toml")), env={})
    assert again.config == load(str(path), env={}).config


def test_check_valid_file_as_process(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD_CHECK)
    proc = run("config", "check", str(path), script=True)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert tomllib.loads(proc.stdout)["agent"]["node"] == "n1"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (None, ": cannot read: No such file or directory"),
        ('[agent]\nnode = "a"\nx = = 1\n', ":3:5: invalid TOML: "),
        ('[agent]\nnode = "a/b"\n', ":2: agent.node: contains '/'"),
    ],
)
def test_check_failures_are_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str | None, fragment: str
) -> None:
    path = tmp_path / "telemetryd.toml"
    if text is not None:
        path.write_text(text)
    code, out, err = call(["config", "check", str(path)], capsys)
    assert (code, out) == (2, "")
    assert one_line(err).startswith(f"{path}{fragment}")


def test_check_ignores_the_log_level_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TELEMETRYD_LOG_LEVEL", "error")
    code, _, err = call(["config", "check", str(write(tmp_path, GOOD_CHECK))], capsys)
    assert (code, err) == (0, "")


def test_check_reports_a_bad_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TELEMETRYD_AGENT_SIM_GPUS", "many")
    code, out, err = call(["config", "check", str(write(tmp_path, GOOD_CHECK))], capsys)
    assert (code, out) == (2, "")
    assert one_line(err) == (
        "environment TELEMETRYD_AGENT_SIM_GPUS: agent.sim.gpus: expected int, got str (got 'many')"
    )


def test_check_never_prints_a_readable_secret(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, secret_file: Path
) -> None:
    path = write(tmp_path, f'[agent]\nnode = "n1"\npassword_file = "{secret_file}"\n')
    code, out, err = call(["config", "check", str(path)], capsys)
    assert (code, err) == (0, "")
    assert f'password_file = "{secret_file}"' in out.splitlines()
    assert SECRET not in out


def test_check_credential_directory_secret_not_printed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, secret_file: Path
) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(secret_file.parent))
    path = write(secret_file.parent.parent, '[aggregator]\nbroker = "mqtt://h"\n')
    code, out, err = call(["config", "check", str(path)], capsys)
    assert code == 0, err
    assert SECRET not in out + err


@pytest.mark.parametrize("how", ["directory", "below_file"])
def test_check_unreadable_password_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, secret_file: Path, how: str
) -> None:
    bad = secret_file.parent if how == "directory" else secret_file / "x"
    path = write(tmp_path, f'[aggregator]\npassword_file = "{bad}"\n')
    code, out, err = call(["config", "check", str(path)], capsys)
    assert (code, out) == (2, "")
    line = one_line(err)
    assert line.startswith(f"{path}:2: aggregator.password_file: cannot read {bad}: ")
    assert SECRET not in line


# --- config sample ----------------------------------------------------------------------


@pytest.mark.parametrize("role", ["agent", "aggregator"])
def test_sample_is_accepted_by_check(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, role: str
) -> None:
    code, out, err = invoke("config", "sample", role)
    assert (code, err) == (0, "")
    assert set(tomllib.loads(out)) == {role}
    assert f"[{role}]" in out.splitlines()
    assert load(str(write(tmp_path, out)), env={}).config == Config()
    code, checked, err = call(["config", "check", str(tmp_path / "telemetryd.toml")], capsys)
    assert (code, err) == (0, "")
    assert set(tomllib.loads(checked)) == {role}


@pytest.mark.parametrize("role", ["agent", "aggregator"])
def test_sample_then_check_as_processes(tmp_path: Path, role: str) -> None:
    sample = run("config", "sample", role, script=True)
    assert (sample.returncode, sample.stderr) == (0, "")
    path = write(tmp_path, sample.stdout)
    check = run("config", "check", str(path))
    assert (check.returncode, check.stderr) == (0, "")
    assert tomllib.loads(check.stdout)[role]


# --- collect ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sim_report() -> tuple[dict[str, object], Report]:
    proc = run(
        "collect", "--once", "--json", "--gpu-backend", "sim", "--node", "sim-01", "--window", "0.2"
    )
    return report_of(proc)


def test_collect_json_is_one_valid_report(sim_report: tuple[dict[str, object], Report]) -> None:
    raw, report = sim_report
    assert (report.node, report.cluster, report.schema) == ("sim-01", "default", 2)
    assert len(report.gpus) == 8
    assert [g.index for g in report.gpus] == list(range(8))
    assert len({g.uuid for g in report.gpus}) == 8
    assert report.host is not None
    assert report.host.cpu_pct is not None
    assert report.host.mem_total_bytes is not None
    assert report.host.mem_total_bytes > 0
    host = raw["host"]
    assert isinstance(host, dict)
    assert {"cpu_pct", "mem_total_bytes"} <= set(host)


@pytest.mark.parametrize("family", sorted(GPU_FIELDS))
def test_collect_sim_gpus_carry_every_field_family(
    sim_report: tuple[dict[str, object], Report], family: str
) -> None:
    raw, _ = sim_report
    gpus = raw["gpus"]
    assert isinstance(gpus, list)
    for gpu in gpus:
        missing = [f for f in GPU_FIELDS[family] if f not in gpu]
        assert not missing, f"GPU {gpu.get('index')} lacks {missing}"


def test_collect_sim_field_values_are_plausible(
    sim_report: tuple[dict[str, object], Report],
) -> None:
    _, report = sim_report
    for gpu in report.gpus:
        assert gpu.uuid.startswith("GPU-")
        assert "H100" in gpu.name
        assert isinstance(gpu.processes, list)
        assert isinstance(gpu.clock_event_reasons, list)
        assert gpu.mig_mode is False
        assert gpu.power_w is not None
        assert gpu.power_limit_w is not None
        assert 0 <= gpu.power_w <= gpu.power_limit_w * 1.5
        assert gpu.fb_used_bytes is not None
        assert gpu.fb_free_bytes is not None


def test_collect_sim_has_no_fan_speed(sim_report: tuple[dict[str, object], Report]) -> None:
    """An SXM card has no fan: the field is absent, never 0."""
    raw, report = sim_report
    gpus = raw["gpus"]
    assert isinstance(gpus, list)
    assert all("fan_pct" not in gpu for gpu in gpus)
    assert all(gpu.fan_pct is None for gpu in report.gpus)


def test_collect_gpus_option(tmp_path: Path) -> None:
    proc = run(
        "collect",
        "--once",
        "--json",
        "--gpu-backend",
        "sim",
        "--gpus",
        "3",
        "--window",
        "0.2",
        script=True,
    )
    _, report = report_of(proc)
    assert [g.index for g in report.gpus] == [0, 1, 2]
    assert len({g.uuid for g in report.gpus}) == 3


def test_collect_table() -> None:
    proc = run("collect", "--once", "--gpu-backend", "sim", "--gpus", "2", "--window", "0.2")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "H100" in proc.stdout
    assert not proc.stdout.lstrip().startswith("{")


def test_collect_table_names_the_job_holding_each_gpu(tmp_path: Path) -> None:
    (tmp_path / "1").write_text("81234\n")  # as examples/slurm/prolog.sh writes it
    proc = run("collect", "--once", "--gpu-backend", "sim", "--gpus", "2", "--window", "0.2",
               COLUMNS="200", TELEMETRYD_AGENT_ATTRIBUTION_JOB_MAP_DIR=str(tmp_path))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = {line.split("│")[1].strip(): line for line in proc.stdout.splitlines()
            if line.startswith("│")}  # fmt: skip
    assert "Job/pod" in proc.stdout
    assert "81234" in rows["1"] and "81234" not in rows["0"]


def test_collect_in_process(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TELEMETRYD_AGENT_COLLECTORS", "host")
    args = ["collect", "--once", "--json", "--gpu-backend", "sim", "--gpus", "1"]
    code, out, err = call([*args, "--window", "0.1", "--node", "n-in"], capsys)
    assert code == 0, err
    report = decode_report(out.encode())
    assert (report.node, len(report.gpus)) == ("n-in", 1)


@pytest.mark.skipif(nvml_loads(), reason="NVML loads on this machine: not the no-GPU case")
def test_collect_nvml_without_nvml_fails_in_one_line() -> None:
    proc = run("collect", "--once", "--gpu-backend", "nvml", "--window", "0.2")
    assert (proc.returncode, proc.stdout) == (1, "")
    line = one_line(proc.stderr)
    assert line.startswith("telemetryd: error: NVML is not available"), line


@pytest.mark.skipif(nvml_loads(), reason="NVML loads on this machine: not the no-GPU case")
def test_collect_auto_without_nvml_reports_gpu_absent() -> None:
    proc = run("collect", "--once", "--json", "--gpu-backend", "auto", "--window", "0.2")
    raw, report = report_of(proc)
    assert report.gpus == []
    assert report.absent is not None
    assert "gpu" in report.absent
    assert "sim" in report.absent["gpu"]
    assert "NVML" in report.absent["gpu"]
    assert "absent" in raw


def test_collect_bogus_backend(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = call(["collect", "--gpu-backend", "bogus", "--once"], capsys)
    choices = ", ".join(repr(b) for b in ("auto", "none", *registry.gpu_backend_names()))
    assert (code, out) == (2, "")
    assert one_line(err) == (
        f"option --gpu-backend: agent.gpu_backend: expected one of {choices} (got 'bogus')"
    )


def test_collect_bogus_backend_as_process() -> None:
    proc = run("collect", "--gpu-backend", "bogus", "--once", script=True)
    assert (proc.returncode, proc.stdout) == (2, "")
    line = one_line(proc.stderr)
    assert "agent.gpu_backend" in line
    assert "--gpu-backend" in line


def test_collect_zero_gpus(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = call(["collect", "--gpu-backend", "sim", "--gpus", "0", "--once"], capsys)
    assert (code, out) == (2, "")
    line = one_line(err)
    assert line.startswith("option --gpus: ")
    assert "expected int >= 1 (got 0)" in line


def test_collect_bad_environment_value(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TELEMETRYD_AGENT_NODE", "a/b")
    code, out, err = call(["collect", "--gpu-backend", "sim", "--once"], capsys)
    assert (code, out) == (2, "")
    assert one_line(err).startswith("environment TELEMETRYD_AGENT_NODE: agent.node: contains '/'")


@pytest.mark.parametrize(("option", "cluster"), [(True, "c-cli"), (False, "c-env")])
def test_collect_environment_and_option_precedence(option: bool, cluster: str) -> None:
    args = ["collect", "--once", "--json", "--gpu-backend", "sim", "--gpus", "1", "--window", "0.2"]
    if option:
        args += ["--cluster", "c-cli"]
    proc = run(*args, TELEMETRYD_AGENT_CLUSTER="c-env")
    _, report = report_of(proc)
    assert report.cluster == cluster


def test_collect_option_beats_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, '[agent]\ngpu_backend = "bogus"\n')
    code, _, err = call(["collect", "-c", str(path), "--gpu-backend", "also-bogus"], capsys)
    assert code == 2
    assert one_line(err).startswith("option --gpu-backend: agent.gpu_backend: ")
    assert "'also-bogus'" in err


# --- aggregator --listen ------------------------------------------------------------------


def test_aggregator_bad_listen_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = call(["aggregator", "--listen", "9400", "--state-dir", str(tmp_path)], capsys)
    assert (code, out) == (2, "")
    assert one_line(err) == (
        "option --listen: aggregator.listen: '9400': expected HOST:PORT, "
        "e.g. 127.0.0.1:9400 or [::]:9400"
    )


def test_aggregator_busy_listen_address_exits_1_in_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # PYTHONPATH: this checkout's code, whichever copy of the package is installed
        proc = run("aggregator", "--listen", f"127.0.0.1:{port}", "--state-dir",
                   str(tmp_path / "state"), "--broker", "mqtt://127.0.0.1:1",
                   PYTHONPATH=str(Path(__file__).parents[2]))  # fmt: skip
    assert (proc.returncode, proc.stdout) == (1, ""), proc.stderr
    assert one_line(proc.stderr) == (
        f"telemetryd: error: aggregator.listen: cannot listen on 127.0.0.1:{port}: "
        "Address already in use"
    )


def test_aggregator_help_shows_listen() -> None:
    code, out, _ = invoke("aggregator", "--help")
    assert code == 0
    assert "--listen HOST:PORT" in out


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["top", "--broker", "http://x"], "option --broker: 'http://x': scheme must be mqtt"),
        (["top", "--cluster", "a/b"], "option --cluster: cluster 'a/b' contains '/'"),
        (["status", "--cluster", "a b"], "option --cluster: cluster 'a b'"),
    ],
)
def test_viewers_refuse_a_bad_broker_or_cluster_before_starting(
    capsys: pytest.CaptureFixture[str], args: list[str], line: str
) -> None:
    """One line and exit 2, not a full-screen UI retrying a URL that can never work."""
    code, out, err = call(args, capsys)
    assert (code, out) == (2, "")
    assert one_line(err).startswith(line), err

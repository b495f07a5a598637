"""examples/slurm: the prolog and epilog run as Slurm would, read back by JobMapReader.

The scripts run under /bin/sh (dash on Debian, so a bashism fails here) with only the
environment slurmd gives them: no PATH (Slurm runs prologs without a search path).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from collectors.jobmap import JobMapReader

SLURM = Path(__file__).resolve().parents[2] / "examples" / "slurm"


def script(name: str, directory: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {"PATH": "", "JOB_MAP_DIR": str(directory)}  # no search path, as slurmd
    return subprocess.run(["/bin/sh", str(SLURM / name)], env={**environ, **env},
                          capture_output=True, text=True, timeout=30, check=False)  # fmt: skip


def prolog(directory: Path, job: str, gpus: str) -> None:
    done = script("prolog.sh", directory, SLURM_JOB_ID=job, SLURM_JOB_GPUS=gpus)
    assert done.returncode == 0, done.stderr


def epilog(directory: Path, job: str) -> None:
    done = script("epilog.sh", directory, SLURM_JOB_ID=job)
    assert done.returncode == 0, done.stderr


def files(directory: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(directory.iterdir())}


def test_prolog_writes_one_file_per_gpu_and_epilog_removes_them(tmp_path):
    jobs = tmp_path / "jobs"  # the prolog creates it
    prolog(jobs, "1234", "0,1,3")
    assert files(jobs) == {"0": "1234\n", "1": "1234\n", "3": "1234\n"}
    assert JobMapReader(jobs).read() == {(0, None): ["1234"], (1, None): ["1234"],
                                         (3, None): ["1234"]}  # fmt: skip
    epilog(jobs, "1234")
    assert files(jobs) == {}
    assert JobMapReader(jobs).read() == {}


def test_two_jobs_sharing_a_gpu(tmp_path):
    prolog(tmp_path, "100", "0,1")
    prolog(tmp_path, "200", "1,2")
    prolog(tmp_path, "200", "1")  # a prolog run twice does not list the job twice
    assert files(tmp_path) == {"0": "100\n", "1": "100\n200\n", "2": "200\n"}
    assert JobMapReader(tmp_path).read()[(1, None)] == ["100", "200"]
    epilog(tmp_path, "100")
    assert files(tmp_path) == {"1": "200\n", "2": "200\n"}
    epilog(tmp_path, "200")
    assert files(tmp_path) == {}


def test_prologs_starting_together_lose_no_job(tmp_path):
    environ = {"PATH": "", "JOB_MAP_DIR": str(tmp_path)}
    runs = [subprocess.Popen(["/bin/sh", str(SLURM / "prolog.sh")],
                             env={**environ, "SLURM_JOB_ID": str(job), "SLURM_JOB_GPUS": "0"})
            for job in range(1, 7)]  # fmt: skip
    assert [p.wait(timeout=60) for p in runs] == [0] * 6
    assert sorted(JobMapReader(tmp_path).read()[(0, None)], key=int) == [
        str(j) for j in range(1, 7)
    ]
    assert files(tmp_path) == {"0": (tmp_path / "0").read_text()}  # no temporary file left


def test_mig_instances_and_the_fallback_variables(tmp_path):
    done = script("prolog.sh", tmp_path, SLURM_JOB_ID="7", CUDA_VISIBLE_DEVICES="0.1,0.2")
    assert done.returncode == 0, done.stderr
    done = script("prolog.sh", tmp_path, SLURM_JOB_ID="8", GPU_DEVICE_ORDINAL="5")
    assert done.returncode == 0, done.stderr
    assert JobMapReader(tmp_path).read() == {(0, 1): ["7"], (0, 2): ["7"], (5, None): ["8"]}


def test_a_job_without_gpus_writes_nothing(tmp_path):
    done = script("prolog.sh", tmp_path / "jobs", SLURM_JOB_ID="9")
    assert done.returncode == 0 and not (tmp_path / "jobs").exists()
    epilog(tmp_path / "jobs", "9")  # nothing to clean is fine


@pytest.mark.parametrize("name", ["prolog.sh", "epilog.sh"])
def test_without_a_job_id_one_line_says_so(tmp_path, name):
    done = script(name, tmp_path, SLURM_JOB_GPUS="0")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "SLURM_JOB_ID is not set" in done.stderr


def test_jobmap_without_a_mode_says_what_it_expects(tmp_path):
    done = script("jobmap.sh", tmp_path, SLURM_JOB_ID="1")
    assert done.returncode == 2
    assert (
        done.stderr
        == "telemetryd jobmap.sh: expected 'add' (prolog) or 'remove' (epilog), got ''\n"
    )


def test_a_gpu_given_by_uuid_is_skipped_with_a_line(tmp_path):
    done = script("prolog.sh", tmp_path, SLURM_JOB_ID="3", CUDA_VISIBLE_DEVICES="GPU-ab12,1")
    assert done.returncode == 0
    assert "GPU 'GPU-ab12' skipped" in done.stderr
    assert files(tmp_path) == {"1": "3\n"}


def test_a_stale_lock_is_taken_over(tmp_path):
    (tmp_path / ".lock").mkdir()  # left by a prolog killed mid-way
    done = script("epilog.sh", tmp_path, SLURM_JOB_ID="4", JOB_MAP_LOCK_WAIT="1")
    assert done.returncode == 0 and "stale lock" in done.stderr
    assert not (tmp_path / ".lock").exists()

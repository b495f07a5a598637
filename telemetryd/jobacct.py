"""Energy and utilisation per job on this node, from the GPUs' owners and energy counters.

Why in the agent: only the agent sees every report of its node in order, so it alone can
take the difference of a GPU's energy counter between the first and the last report that
saw a job there. That difference is exact to the millijoule (NVML counts energy in the
driver, continuously), where an integral of sampled power misses what happens between
samples. The aggregator only joins the per-node records a job leaves (telemetryd/jobs.py).

Who holds a GPU comes from ``Gpu.owners`` (collectors/attribution.py): a job id makes an
``hpc`` job, a pod a ``pod`` job keyed ``<namespace>/<pod>`` (its UID when the name is not
known); ``cgroup`` owners count only where the job map and the kubelet said nothing.

Rules, each chosen so that no energy is counted twice or lost silently:
- a job starts on a GPU with the first report that lists it there, and leaves it with the
  last one (a GPU in error, or one the attribution stage could not read this interval,
  keeps its jobs: it did not say they left); the job ends when it holds no GPU here, and
  its record goes out once as ``ended`` in the report that first misses it;
- a counter that went backwards (GPU reset, driver reload) restarts from 0: the energy up
  to the last reading before it is kept, the new reading is added, and the reset is logged;
- a GPU without a counter leaves its share absent, and the job's total is absent only
  when none of its GPUs has a counter (never a 0 standing for "unknown");
- a GPU shared by several jobs (or MIG instances of several jobs) counts its whole energy
  for each: NVML has no per-process energy;
- the open accounts are saved after every update (atomic replace); after an agent restart
  a job still on its GPUs continues, so the counter delta spans the time the agent was
  down, and a job gone meanwhile ends at the last report that saw it;
- an ended job stays in the saved state until the report carrying its record is in the
  spool (``spooled``), so an agent that dies in between sends the record after its
  restart instead of losing it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from telemetryd.codec import DecodeError, Struct, encode_json, field, json_decoder
from telemetryd.durable import replace_file
from telemetryd.model import Gpu, GpuOwner, JobGpu, JobRecord, Report
from telemetryd.owners import counted, job_key

log = logging.getLogger(__name__)

STATE_VERSION = 1
_TEXT_MAX = 256  # JobRecord.job and the other texts on the wire
_WATTS_MAX = 100_000.0


class GpuAccount(Struct, kw_only=True, omit_defaults=True):
    """One job on one GPU: its counter readings and its utilisation so far."""

    index: int
    uuid: str
    start_ns: int
    last_ns: int
    end_ns: int | None = None  # the job left this GPU (it may hold others still)
    start_mj: int | None = None  # counter at the first reading of this stretch
    last_mj: int | None = None
    carried_mj: int = 0  # energy of earlier stretches (before a reset, or a return)
    util_sum: int = 0
    util_count: int = 0
    util_peak: int | None = None
    mem_peak: int | None = None

    def energy_mj(self) -> int | None:
        """Energy used on this GPU by the job, or None when the GPU never gave a counter."""
        if self.start_mj is None or self.last_mj is None:
            return None
        return self.carried_mj + self.last_mj - self.start_mj


class JobAccount(Struct, kw_only=True, omit_defaults=True):
    """One job on this node: its GPUs and what is known about who runs it."""

    job: str
    kind: str  # "hpc" | "pod"
    start_ns: int
    last_ns: int
    samples: int = 0
    user: str | None = None
    pod: str | None = None
    namespace: str | None = None
    gpus: list[GpuAccount] = field(default_factory=list)


class _State(Struct, kw_only=True):
    """What ``state_path`` holds: the open accounts, and the ended ones not yet spooled."""

    version: int
    jobs: list[JobAccount] = field(default_factory=list)
    ended: list[JobAccount] = field(default_factory=list)


_decode_state = json_decoder(_State)


def counted_owners(gpu: Gpu) -> list[GpuOwner]:
    """The owners that count (telemetryd/owners.py): cgroup ones only when alone."""
    return counted(gpu.owners)


class JobAccountant:
    """Keeps the open accounts of this node's jobs and writes ``report.jobs``."""

    def __init__(self, state_path: Path | None) -> None:
        self.state_path = state_path
        self.accounts: dict[str, JobAccount] = {}
        # Ended in the last update, until the report carrying them is spooled (``spooled``):
        # a crash in between sends them again after the restart instead of losing them.
        self.ended: list[JobAccount] = []
        self._resend: list[JobAccount] = []  # ended before a restart, their report unspooled
        if state_path is not None:
            self._load(state_path)

    # -- persistence -----------------------------------------------------------------------
    def _load(self, path: Path) -> None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("job accounts %s unreadable (%s); starting with none", path, exc)
            return
        try:
            state = _decode_state(data)
        except DecodeError as exc:
            log.warning("job accounts %s are corrupt (%s); starting with none", path, exc)
            return
        if state.version != STATE_VERSION:
            log.warning("job accounts %s have version %d, expected %d; starting with none",
                        path, state.version, STATE_VERSION)  # fmt: skip
            return
        self.accounts = {a.job: a for a in state.jobs}
        self.ended = self._resend = list(state.ended)
        if self.accounts or self.ended:
            log.info("continuing %d job account(s) from %s (%d ended, not yet sent)",
                     len(self.accounts) + len(self.ended), path, len(self.ended))  # fmt: skip

    def _save(self) -> None:
        if self.state_path is None:
            return
        state = _State(version=STATE_VERSION, jobs=list(self.accounts.values()),
                       ended=self.ended)  # fmt: skip
        try:
            replace_file(self.state_path, encode_json(state))
        except OSError as exc:  # the reports still go out; a restart would lose the accounts
            log.warning("cannot save job accounts to %s: %s", self.state_path, exc)

    # -- one report ------------------------------------------------------------------------
    def update(self, report: Report) -> None:
        """Account this report's GPUs and set ``report.jobs``; then save the accounts."""
        # Owners unknown this interval: the attribution stage failed, or no GPU was read.
        blind = not report.gpus or any(e.source == "attribution" for e in report.errors)
        seen: dict[str, set[str]] = {}  # job -> GPU UUIDs it holds in this report
        kinds: dict[str, tuple[str, GpuOwner]] = {}
        by_uuid = {g.uuid: g for g in report.gpus}
        for listed in report.gpus:
            for owner in counted_owners(listed):
                key = job_key(owner)
                if key is not None:
                    seen.setdefault(key[0], set()).add(listed.uuid)
                    kinds.setdefault(key[0], (key[1], owner))
        # A GPU that says nothing about its owners this time keeps the jobs it had.
        for held in self.accounts.values():
            for ga in held.gpus:
                if ga.end_ns is None and _keeps(by_uuid.get(ga.uuid), blind):
                    seen.setdefault(held.job, set()).add(ga.uuid)
        reset_logged: set[str] = set()
        # Ended before a restart, in a report that never reached the spool: sent now. (In
        # one run the agent spools each report before the next update.)
        records = [_record(a, "ended", a.last_ns) for a in self._resend]
        self.ended, self._resend = list(self._resend), []
        for job, uuids in seen.items():
            account = self.accounts.get(job)
            if account is None:
                kind, owner = kinds[job]
                account = JobAccount(job=job, kind=kind, start_ns=report.time_ns,
                                     last_ns=report.time_ns, pod=owner.pod,
                                     namespace=owner.namespace)  # fmt: skip
                self.accounts[job] = account
            account.last_ns = report.time_ns
            account.samples += 1
            for uuid in sorted(uuids, key=lambda u: by_uuid[u].index if u in by_uuid else -1):
                gpu = by_uuid.get(uuid)
                if gpu is not None:
                    self._sample_gpu(account, gpu, report.time_ns, reset_logged)
            for ga in account.gpus:
                if ga.end_ns is None and ga.uuid not in uuids:
                    ga.end_ns = ga.last_ns  # left this GPU with the last report that saw it
            if account.user is None:
                account.user = _user(account, report.gpus)
            records.append(_record(account, "running", report.time_ns))
        for job in [j for j in self.accounts if j not in seen]:
            account = self.accounts.pop(job)
            for ga in account.gpus:
                if ga.end_ns is None:
                    ga.end_ns = ga.last_ns
            records.append(_record(account, "ended", account.last_ns))
            self.ended.append(account)
        records.sort(key=lambda r: (r.state != "ended", r.job))
        report.jobs = records
        self._save()

    def spooled(self) -> None:
        """The report of the last ``update`` is durable: its ended jobs are sent for good."""
        if self.ended:
            self.ended = []
            self._save()

    def _sample_gpu(self, account: JobAccount, gpu: Gpu, now_ns: int, logged: set[str]) -> None:
        """Take one GPU's readings into the job's account of it (opened if new)."""
        ga = next((g for g in account.gpus if g.uuid == gpu.uuid), None)
        if ga is None:
            ga = GpuAccount(index=gpu.index, uuid=gpu.uuid, start_ns=now_ns, last_ns=now_ns)
            account.gpus.append(ga)
        elif ga.end_ns is not None:  # back on a GPU it had left: a new stretch
            ga.carried_mj = ga.energy_mj() or 0
            ga.start_mj = ga.last_mj = None
            ga.end_ns = None
        ga.last_ns = now_ns
        counter = gpu.energy_mj
        if counter is not None:
            if ga.start_mj is None:
                ga.start_mj = counter
            elif ga.last_mj is not None and counter < ga.last_mj:
                if gpu.uuid not in logged:
                    logged.add(gpu.uuid)
                    log.warning("GPU %d (%s): energy counter went back from %d to %d mJ (GPU "
                                "reset or driver reload?); its jobs count on from 0",
                                gpu.index, gpu.uuid, ga.last_mj, counter)  # fmt: skip
                ga.carried_mj = ga.energy_mj() or 0
                ga.start_mj = 0
            ga.last_mj = counter
        if gpu.error is not None:
            return
        if gpu.util_gpu_pct is not None:
            ga.util_sum += gpu.util_gpu_pct
            ga.util_count += 1
            ga.util_peak = max(ga.util_peak or 0, gpu.util_gpu_pct)
        mem = _mem_used(gpu, account.job)
        if mem is not None:
            ga.mem_peak = max(ga.mem_peak or 0, mem)


def _keeps(gpu: Gpu | None, blind: bool) -> bool:
    """Whether a GPU keeps its jobs although no owner names them in this report.

    A GPU in error still lists its jobs (the job map does not depend on it), but its
    readings may be partial; a GPU missing from a report that has GPUs is gone (the
    NVML source lists a lost GPU with its error), so its jobs left it.
    """
    return blind or (gpu is not None and gpu.error is not None)


def _mem_used(gpu: Gpu, job: str) -> int | None:
    """FB used by the job on this GPU: its MIG instance's when it holds one, else the GPU's."""
    for owner in counted_owners(gpu):
        key = job_key(owner)
        if key is not None and key[0] == job and owner.gi_id is not None:
            for mig in gpu.mig:
                if mig.gi_id == owner.gi_id and mig.fb_used_bytes is not None:
                    return mig.fb_used_bytes
    return gpu.fb_used_bytes


def _user(account: JobAccount, gpus: list[Gpu]) -> str | None:
    """The user of a process of the job on its GPUs (attributed to it, or alone there)."""
    held = {ga.uuid for ga in account.gpus if ga.end_ns is None}
    for gpu in gpus:
        if gpu.uuid not in held:
            continue
        alone = len({k for o in counted_owners(gpu) if (k := job_key(o)) is not None}) == 1
        for p in gpu.processes or []:
            mine = p.job == account.job or (
                account.kind == "pod" and p.pod is not None and p.pod == account.pod
            )
            if p.user and (mine or alone):
                return p.user[:_TEXT_MAX]
    return None


def _record(account: JobAccount, state: str, end_ns: int) -> JobRecord:
    """The wire record of an account, as of ``end_ns``."""
    gpus: list[JobGpu] = []
    energies: list[int] = []
    util_sum = util_count = 0
    peaks: list[int] = []
    mems: list[int] = []
    for ga in sorted(account.gpus, key=lambda g: (g.index, g.uuid)):
        energy = ga.energy_mj()
        if energy is not None:
            energies.append(energy)
        gpus.append(JobGpu(index=ga.index, uuid=ga.uuid, start_ns=ga.start_ns,
                           end_ns=ga.end_ns, energy_mj=energy))  # fmt: skip
        util_sum += ga.util_sum
        util_count += ga.util_count
        if ga.util_peak is not None:
            peaks.append(ga.util_peak)
        if ga.mem_peak is not None:
            mems.append(ga.mem_peak)
    energy_mj = sum(energies) if energies else None
    mean_power: float | None = None
    if energy_mj is not None and end_ns > account.start_ns:
        mean_power = energy_mj / 1000 / ((end_ns - account.start_ns) / 1e9)
        if mean_power > _WATTS_MAX:  # only a bad counter gets here; the wire refuses it
            mean_power = None
    return JobRecord(
        job=account.job,
        kind="pod" if account.kind == "pod" else "hpc",
        state="ended" if state == "ended" else "running",
        start_ns=account.start_ns,
        end_ns=end_ns,
        samples=account.samples,
        gpus=gpus,
        energy_mj=energy_mj,
        mean_power_w=mean_power,
        util_mean_pct=round(util_sum / util_count, 2) if util_count else None,
        util_peak_pct=max(peaks) if peaks else None,
        mem_peak_bytes=max(mems) if mems else None,
        user=account.user,
        pod=account.pod,
        namespace=account.namespace,
    )

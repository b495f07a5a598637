"""What ``telemetryd top`` costs in CPU and memory while 1,000 nodes x 8 GPUs report every second.

Method: Debian's Mosquitto runs on a free loopback port (temp dir, ``$SYS`` every second).
bench/loadgen.py, its own process, publishes the fleet's reports through it for the whole
run (by default 1,000 reports/s of ~13 KB, evenly spread, values moving, a few XIDs). Then
each target runs alone on that same stream, one after the other; after a warm-up, its CPU
time (user + system, from /proc through psutil) is taken over the measured window, and its
peak RSS (VmHWM) at the end:
  (a) the baseline: bench/mqtt_count.py, a bare subscriber on telemetry/v1/<cluster>/#
      that only counts (same client library, broker and stream: any viewer's floor);
  (b) ``python -m telemetryd top --broker ... --cluster bench`` in a real terminal: a
      detached tmux session of 200x60 (the terminal emulator's own cost, tmux's, is shown
      apart); the top's status line is read off the screen at the end;
  (c) with ``--headless-cmd``, the same viewer without a terminal (skipped if not given).
Kept up? The broker's ``$SYS`` counters give the messages it delivered per second during
each window (minus the few ``$SYS`` messages our own watcher gets), against the offered
rate; the baseline's own count and the top's status line are printed alongside.
On a 2-core machine the generator, the broker and the target share the cores: the
generator's and the broker's CPU over each window, and the machine's, are printed too.

Usage: python bench/top_cpu.py [--nodes 1000] [--gpus 8] [--interval 1] [--seconds 60]
       [--warmup 10] [--qos 0] [--target-cmd CMD] [--headless-cmd CMD]
CMD may use {python}, {broker} and {cluster}. Prints the machine, the figures and the ratio
of each target to the baseline. Loopback only; about 3 x (warmup + seconds) long.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
TOP_CMD = "{python} -m telemetryd top --broker {broker} --cluster {cluster}"
SYS_TOPICS = ("$SYS/broker/publish/messages/+", "$SYS/broker/heap/current")
COLUMNS, ROWS = 200, 60


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    version = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True).stdout
    tmux = subprocess.run(["tmux", "-V"], capture_output=True, text=True).stdout.strip()
    return (f"{cpu}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
            f"Linux {platform.release()}, Python {platform.python_version()}, "
            f"{version.splitlines()[0] if version else 'mosquitto ?'}, {tmux}")  # fmt: skip


def env() -> dict[str, str]:
    """Children import this checkout's telemetryd, whatever is installed."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRYD_")}
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return out


# -- the broker and its counters --------------------------------------------------------------


def start_broker(workdir: Path, max_queued: int = 100000) -> Any:
    """A Mosquitto of the integration tests' kind, without persistence, $SYS every second.

    ``max_queued``: messages queued per client before Mosquitto drops; 100,000 for a
    viewer; examples/mosquitto sizes it 4,000,000 for the aggregator's backlog.
    """
    sys.path.insert(0, str(ROOT))
    from tests.integration.mosquitto import Mosquitto, free_port

    port = free_port()
    broker = Mosquitto(workdir, port=port, config="\n".join([
        f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false",
        "sys_interval 1", f"log_dest file {workdir / 'mosquitto.log'}", "log_type error",
        "log_type warning", "log_type notice", "connection_messages true",
        # As in examples/mosquitto: a slow viewer is queued for, not silently dropped.
        f"max_queued_messages {max_queued}", "max_queued_bytes 0", "max_inflight_messages 2000",
        *(["user root"] if os.geteuid() == 0 else []),
    ]) + "\n")  # fmt: skip
    return broker.start()


@dataclass
class SysWatch:
    """The broker's $SYS counters as mosquitto_sub prints them, each with when it came."""

    port: int
    values: dict[str, tuple[float, float]] = field(default_factory=dict)  # topic -> (t, v)
    received: int = 0  # $SYS messages this watcher got (the broker counts them as sent)
    proc: subprocess.Popen[str] | None = None

    def start(self) -> SysWatch:
        cmd = ["mosquitto_sub", "-p", str(self.port), "-v"]
        for topic in SYS_TOPICS:
            cmd += ["-t", topic]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            topic, _, value = line.strip().partition(" ")
            with contextlib.suppress(ValueError):
                self.values[topic] = (time.monotonic(), float(value))
            self.received += 1

    def get(self, name: str) -> tuple[float, float]:
        return self.values.get(f"$SYS/broker/{name}", (time.monotonic(), float("nan")))

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()


# -- measuring a process -----------------------------------------------------------------------


def cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of one process (its threads included), NaN if gone."""
    if pid is None:
        return float("nan")
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return float("nan")
    return float(times.user + times.system)


def peak_rss_mib(pid: int) -> float:
    """VmHWM: the most resident memory the process ever had."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def read_json(path: Path) -> dict[str, float]:
    with contextlib.suppress(OSError, ValueError):
        return dict(json.loads(path.read_text()))
    return {}


@dataclass
class Snapshot:
    """Everything counted at one moment of a window."""

    time: float
    target: float
    tmux: float
    broker: float
    loadgen: float
    busy: float  # machine-wide CPU seconds, all cores
    sent: tuple[float, float]
    received: tuple[float, float]
    dropped: tuple[float, float]
    heap: tuple[float, float]
    watcher: int
    count: dict[str, float]
    loadgen_stats: dict[str, float]


@dataclass
class Side:
    """The processes whose CPU is taken besides the target."""

    broker: int
    loadgen: int
    loadgen_stats: Path
    watch: SysWatch


def snapshot(side: Side, target: int, tmux: int | None, count: Path | None) -> Snapshot:
    t = psutil.cpu_times()
    return Snapshot(
        time=time.monotonic(), target=cpu_s(target), tmux=cpu_s(tmux),
        broker=cpu_s(side.broker), loadgen=cpu_s(side.loadgen),
        busy=t.user + t.system + t.nice + t.irq + t.softirq,
        sent=side.watch.get("publish/messages/sent"),
        received=side.watch.get("publish/messages/received"),
        dropped=side.watch.get("publish/messages/dropped"),
        heap=side.watch.get("heap/current"),
        watcher=side.watch.received, count=read_json(count) if count else {},
        loadgen_stats=read_json(side.loadgen_stats),
    )  # fmt: skip


def rate(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Per second between two timed counter values."""
    return (b[1] - a[1]) / (b[0] - a[0]) if b[0] > a[0] else float("nan")


@dataclass
class Result:
    name: str
    cpu_pct: float
    rss_mib: float
    delivered: float  # messages/s the broker sent to the target ($SYS)
    offered: float  # messages/s the broker received from the generator ($SYS)
    dropped: float
    counted: float  # messages/s the target says it took (baseline: its own count)
    tmux_pct: float
    broker_pct: float
    loadgen_pct: float
    machine_pct: float  # of all cores
    others_pct: float  # of one core: the machine's busy time not of the processes above
    heap_mib: float  # the broker's heap growth over the window (a lagging reader grows it)
    screen: str = ""
    shown: list[float] = field(default_factory=list)  # msg/s on its screen, every 5 s

    def row(self, base: Result | None) -> str:
        ratio = "(baseline)" if base is None else f"{self.cpu_pct / base.cpu_pct:5.2f}x baseline"
        return (f"{self.name:34} {self.delivered:7.0f} msg/s  CPU {self.cpu_pct:5.1f}% of a core"
                f"  peak RSS {self.rss_mib:4.0f} MiB  {ratio}")  # fmt: skip


def result(name: str, a: Snapshot, b: Snapshot, rss: float, screen: str = "") -> Result:
    wall = b.time - a.time
    spent = [b.target - a.target, b.tmux - a.tmux, b.broker - a.broker, b.loadgen - a.loadgen]
    ours = sum(x for x in spent if x == x)  # NaN: no tmux for this target
    sys_msgs = (b.watcher - a.watcher) / wall  # what the broker sent our own $SYS watcher
    counted = float("nan")
    if "messages" in a.count and "messages" in b.count:
        counted = rate(
            (a.count["time"], a.count["messages"]), (b.count["time"], b.count["messages"])
        )
    return Result(
        name=name, cpu_pct=100 * (b.target - a.target) / wall, rss_mib=rss,
        delivered=rate(a.sent, b.sent) - sys_msgs, offered=rate(a.received, b.received),
        dropped=b.dropped[1] - a.dropped[1], counted=counted,
        tmux_pct=100 * (b.tmux - a.tmux) / wall, broker_pct=100 * (b.broker - a.broker) / wall,
        loadgen_pct=100 * (b.loadgen - a.loadgen) / wall,
        machine_pct=100 * (b.busy - a.busy) / wall / (os.cpu_count() or 1),
        others_pct=100 * ((b.busy - a.busy) - ours) / wall,
        heap_mib=(b.heap[1] - a.heap[1]) / 2**20, screen=screen,
    )  # fmt: skip


def hold(seconds: float, alive: Iterator[bool]) -> bool:
    """Sleep ``seconds`` in steps; False as soon as the target is gone."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not next(alive):
            return False
        time.sleep(min(1.0, max(0.0, end - time.monotonic())))
    return next(alive)


# -- targets ----------------------------------------------------------------------------------


def run_plain(name: str, cmd: list[str], side: Side, args: argparse.Namespace, workdir: Path,
              count: Path | None = None) -> Result:  # fmt: skip
    """A target without a terminal (the baseline, a headless viewer)."""
    log = workdir / (re.sub(r"\W+", "-", name) + ".log")
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env(), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)  # fmt: skip

    def alive() -> Iterator[bool]:
        while True:
            yield proc.poll() is None

    try:
        checks = alive()
        if not hold(args.warmup, checks):
            raise SystemExit(f"{name} exited during warm-up:\n{log.read_text()[-3000:]}")
        a = snapshot(side, proc.pid, None, count)
        if not hold(args.seconds, checks):
            raise SystemExit(f"{name} exited while measured:\n{log.read_text()[-3000:]}")
        b = snapshot(side, proc.pid, None, count)
        rss = peak_rss_mib(proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return result(name, a, b, rss)


class Tmux:
    """A private tmux server (its own socket) holding one detached session of COLUMNS x ROWS."""

    def __init__(self, workdir: Path) -> None:
        self.socket = f"telemetryd-bench-{os.getpid()}"
        self.conf = workdir / "tmux.conf"
        # Keep a crashed target's last screen; no tmux status line: the pane is the window.
        self.conf.write_text("set -g remain-on-exit on\nset -g status off\n"
                             "set -g history-limit 100\n")  # fmt: skip

    def __call__(self, *cmd: str) -> str:
        done = subprocess.run(["tmux", "-L", self.socket, "-f", str(self.conf), *cmd],
                              capture_output=True, text=True, check=True)  # fmt: skip
        return done.stdout

    def start(self, command: str) -> tuple[int, int]:
        """Run ``command`` in the session; return its pid and the tmux server's pid.

        The pane's shell outlives the command by two seconds, so that a target that fails at
        once still has its last words on the screen when we look (an ``exec`` would lose
        them); the pid measured is the shell's child, the command itself.
        """
        self("new-session", "-d", "-s", "bench", "-x", str(COLUMNS), "-y", str(ROWS),
             f"{command}; status=$?; sleep 2; exit $status")  # fmt: skip
        pane = psutil.Process(int(self("list-panes", "-t", "bench", "-F", "#{pane_pid}")))
        server = int(self("display-message", "-p", "-t", "bench", "#{pid}").strip())
        deadline = time.monotonic() + 10
        while not (children := pane.children()):
            if time.monotonic() > deadline:
                raise SystemExit(f"tmux ran no command; its screen:\n{self.screen()}")
            time.sleep(0.01)
        return children[0].pid, server

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "bench")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self("kill-server")


def run_tui(name: str, command: str, side: Side, args: argparse.Namespace,
            workdir: Path) -> Result:  # fmt: skip
    """A target in a real terminal: tmux's pty, 200x60, rendered by tmux, nobody attached."""
    tmux = Tmux(workdir)
    path = shlex.quote(env()["PYTHONPATH"])
    pid, server = tmux.start(f"cd {shlex.quote(str(ROOT))} && env PYTHONPATH={path} {command}")
    proc = psutil.Process(pid)
    shown: list[float] = []
    measuring = [False]

    def alive() -> Iterator[bool]:
        looks = 0
        while True:
            looks += 1
            if measuring[0] and looks % 5 == 0:  # about every 5 s: what its status bar says
                shown.extend(shown_rates(tmux.screen())[-1:])
            try:
                yield proc.status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                yield False

    try:
        checks = alive()
        if not hold(args.warmup, checks):
            time.sleep(0.5)  # for tmux to show its last words
            raise SystemExit(f"{name} exited during warm-up; its screen:\n{tmux.screen()}")
        a = snapshot(side, pid, server, None)
        measuring[0] = True
        if not hold(args.seconds, checks):
            time.sleep(0.5)
            raise SystemExit(f"{name} exited while measured; its screen:\n{tmux.screen()}")
        b = snapshot(side, pid, server, None)
        rss = peak_rss_mib(pid)
        screen = tmux.screen()
    finally:
        with contextlib.suppress(subprocess.CalledProcessError, psutil.Error):
            if args.quit_key:  # a clean exit first (a profiler wrapping it gets to write)
                tmux("send-keys", "-t", "bench", args.quit_key)
                proc.wait(5)
        tmux.stop()
        with contextlib.suppress(psutil.Error):
            try:
                proc.wait(10)  # SIGHUP from the closed terminal
            except psutil.TimeoutExpired:
                proc.kill()
    out = result(name, a, b, rss, screen)
    out.shown = shown + shown_rates(screen)[-1:]
    return out


def status_lines(screen: str) -> list[str]:
    """What of the captured screen says how fast messages come: lines with a rate in them."""
    lines = [line.rstrip() for line in screen.splitlines() if line.strip()]
    rates = [line for line in lines if re.search(r"/s\b|msg", line)]
    return rates[-3:] or lines[-1:]


def kept_up(r: Result) -> str:
    """Yes, or why not: the broker delivered (nearly) all it received, without queueing up,
    and the viewer's own rate on screen (if any) is near the offered one."""
    why = []
    if not r.delivered >= 0.98 * r.offered:
        why.append(f"the broker delivered {r.delivered:.0f} of {r.offered:.0f} msg/s")
    if r.dropped > 0:
        why.append(f"the broker dropped {r.dropped:.0f}")
    if r.heap_mib > 2:
        why.append(f"the broker's heap grew {r.heap_mib:.1f} MiB (a queue for the viewer)")
    shown = sorted(r.shown)
    median = shown[len(shown) // 2] if shown else float("nan")
    if shown and not median >= 0.9 * r.offered:
        why.append(f"its screen says {median:.0f} msg/s (median)")
    seen = ""
    if shown:
        seen = (f" (its status bar, every 5 s: median {median:.0f} msg/s, from {shown[0]:.0f} "
                f"to {shown[-1]:.0f})")  # fmt: skip
    return ("yes" if not why else "NO: " + "; ".join(why)) + seen


def shown_rates(screen: str) -> list[float]:
    """The "N msg/s" figures on a screen."""
    return [float(m) for m in re.findall(r"(\d+(?:\.\d+)?) msg/s", screen)]


# -- the run -----------------------------------------------------------------------------------


def start_loadgen(args: argparse.Namespace, url: str, workdir: Path) -> tuple[Any, Path]:
    stats = workdir / "loadgen.json"
    cmd = [sys.executable, str(BENCH / "loadgen.py"), "--broker", url, "--cluster", args.cluster,
           "--nodes", str(args.nodes), "--gpus", str(args.gpus), "--interval", str(args.interval),
           "--qos", str(args.qos), "--stats", str(stats), "--keep-status",
           *(["--jobs"] if args.jobs else [])]  # fmt: skip
    log = (workdir / "loadgen.log").open("wb")  # closed with this process
    proc = subprocess.Popen(cmd, env=env(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not read_json(stats):  # written once the statuses are out and reports start
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"loadgen did not start:\n{(workdir / 'loadgen.log').read_text()}")
        time.sleep(0.2)
    return proc, stats


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=60.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--qos", type=int, choices=[0, 1], default=0)
    parser.add_argument("--cluster", default="bench")
    parser.add_argument(
        "--jobs",
        action="store_true",
        help="reports with owners, attributed processes and job records",
    )
    parser.add_argument("--target-cmd", default=TOP_CMD,
                        help="the viewer run in tmux (default: telemetryd top)")  # fmt: skip
    parser.add_argument("--target-name", default="",
                        help="its name in the output (default: from the command)")  # fmt: skip
    parser.add_argument("--quit-key", default="q", help="sent to the viewer at the end")
    parser.add_argument("--headless-cmd", default="", help="the viewer without a terminal")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    for tool in ("mosquitto", "mosquitto_sub", "tmux"):
        if shutil.which(tool) is None:
            raise SystemExit(f"needs {tool} on PATH (Debian: mosquitto, mosquitto-clients, tmux)")
    with tempfile.TemporaryDirectory(prefix="top-cpu-") as tmp:
        workdir = Path(tmp)
        broker = start_broker(workdir / "broker")
        url = broker.url
        fill = {"python": shlex.quote(sys.executable), "broker": url, "cluster": args.cluster}
        watch = SysWatch(broker.port).start()
        loadgen, stats = start_loadgen(args, url, workdir)
        side = Side(broker.pid, loadgen.pid, stats, watch)
        results: list[Result] = []
        try:
            count = workdir / "count.json"
            cmd = [sys.executable, str(BENCH / "mqtt_count.py"), "--broker", url, "--cluster",
                   args.cluster, "--stats", str(count)]  # fmt: skip
            results.append(run_plain("bare subscriber (mqtt_count.py)", cmd, side, args, workdir,
                                     count))  # fmt: skip
            target = args.target_cmd.format(**fill)
            name = args.target_name or ("telemetryd top" if args.target_cmd == TOP_CMD
                                        else "--target-cmd")  # fmt: skip
            results.append(run_tui(f"{name} (tmux {COLUMNS}x{ROWS})", target, side, args,
                                   workdir))  # fmt: skip
            if args.headless_cmd:
                cmd = shlex.split(args.headless_cmd.format(**fill))
                results.append(run_plain(f"{name} (headless)", cmd, side, args, workdir))
            gen = read_json(stats)
        finally:
            loadgen.send_signal(signal.SIGINT)
            try:
                loadgen.wait(30)
            except subprocess.TimeoutExpired:
                loadgen.kill()
            watch.stop()
            broker.stop()
        report(args, results, gen, workdir / "loadgen.log")


def report(args: argparse.Namespace, results: list[Result], gen: dict[str, float],
           loadgen_log: Path) -> None:  # fmt: skip
    offered = args.nodes / args.interval
    print(f"machine: {machine()}")
    first = loadgen_log.read_text().splitlines()[:1] if loadgen_log.exists() else []
    print(f"load: {first[0].removeprefix('loadgen: ') if first else '?'}")
    print(f"each target alone on that stream: {args.warmup:g} s warm-up, then "
          f"{args.seconds:g} s measured; CPU = user + system of the target process")  # fmt: skip
    base = results[0]
    for r in results:
        print(r.row(None if r is base else base))
    for r in results:
        counted = f", counted itself {r.counted:.0f} msg/s" if r.counted == r.counted else ""
        tmux = f", tmux server {r.tmux_pct:.1f}%" if r.tmux_pct == r.tmux_pct else ""
        print(f"  {r.name}: broker received {r.offered:.0f} msg/s (offered {offered:.0f} "
              f"reports/s + events), delivered {r.delivered:.0f} msg/s, dropped "
              f"{r.dropped:.0f}{counted}; alongside: loadgen {r.loadgen_pct:.1f}%, "
              f"mosquitto {r.broker_pct:.1f}%{tmux}, anything else {r.others_pct:.1f}%; "
              f"machine busy {r.machine_pct:.0f}% of {os.cpu_count()} cores; broker heap "
              f"{r.heap_mib:+.1f} MiB")  # fmt: skip
        for line in status_lines(r.screen) if r.screen else []:
            print(f"    screen: {line.strip()}")
        print(f"    kept up: {kept_up(r)}")
    if gen:
        print(f"loadgen overall: {gen.get('reports', 0):.0f} reports, {gen.get('events', 0):.0f} "
              f"XID events, at worst {1000 * gen.get('behind_max_s', 0):.1f} ms behind "
              f"schedule, RSS {gen.get('rss_mib', 0):.0f} MiB")  # fmt: skip
    rows = [{k: round(v, 2) if isinstance(v, float) else v
             for k, v in r.__dict__.items() if k != "screen"} for r in results]  # fmt: skip
    print(json.dumps({"nodes": args.nodes, "gpus": args.gpus, "interval_s": args.interval,
                      "qos": args.qos, "results": rows}))  # fmt: skip


if __name__ == "__main__":
    main()

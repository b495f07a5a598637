"""Logging for a terminal and for journald, with real processes, files and sockets.

journald is recognised by ``JOURNAL_STREAM`` naming stderr's device:inode, so the tests
run a child whose stderr is a file and set the variable to that file's identity (or to
another file's, which must not count). The native protocol is checked against a real
datagram socket bound in a temp dir, parsed here independently of the module's encoder.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from telemetryd import logsetup
from telemetryd.logcapture import logs_into
from telemetryd.logsetup import RepeatLimiter

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import logging, sys
from telemetryd import logsetup
logsetup.setup({level!r}, journal_socket={socket!r}, burst={burst})
log = logging.getLogger("telemetryd.agent")
log.debug("debug %s", "line")
log.info("info line")
log.warning("broker %s refused", "b1")
try:
    1 / 0
except ZeroDivisionError:
    log.exception("sample failed")
for i in range({repeats}):
    log.warning("reconnect in %d s", i)
"""


def identity(path: Path) -> str:
    st = path.stat()
    return f"{st.st_dev}:{st.st_ino}"


def stderr_of(tmp_path: Path, argv: list[str], journal: str | None, **env: str) -> str:
    """Run ``argv`` with stderr in a file, no TELEMETRYD_* variables, this checkout's code.

    ``journal`` is JOURNAL_STREAM: "match" for the file's own identity, None for unset.
    """
    err = tmp_path / "stderr.txt"
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("TELEMETRYD_", "JOURNAL_"))}
    environ.update(env, PYTHONPATH=str(ROOT))
    with err.open("w") as fh:
        if journal is not None:
            environ["JOURNAL_STREAM"] = identity(err) if journal == "match" else journal
        run = [sys.executable, *argv]
        subprocess.run(
            run,
            stdout=subprocess.DEVNULL,
            stderr=fh,
            env=environ,
            cwd=tmp_path,
            timeout=60,
            check=True,
        )
    return err.read_text()


def child(
    tmp_path: Path,
    *,
    journal: str | None,
    level: str = "debug",
    sock: str = "/nonexistent/journal/socket",
    burst: int = 10,
    repeats: int = 0,
) -> str:
    """Run CHILD; what it wrote to stderr."""
    code = CHILD.format(level=level, socket=sock, burst=burst, repeats=repeats)
    return stderr_of(tmp_path, ["-c", textwrap.dedent(code)], journal)


def test_a_terminal_keeps_the_plain_format(tmp_path: Path) -> None:
    lines = child(tmp_path, journal=None).splitlines()
    assert lines[:4] == [
        "telemetryd: DEBUG: debug line",
        "telemetryd: INFO: info line",
        "telemetryd: WARNING: broker b1 refused",
        "telemetryd: ERROR: sample failed",
    ]
    assert lines[-1] == "ZeroDivisionError: division by zero"


def test_journal_stream_gets_priority_prefixes_and_no_timestamps(tmp_path: Path) -> None:
    lines = child(tmp_path, journal="match").splitlines()
    assert lines[:4] == [
        "<7>telemetryd.agent: debug line",
        "<6>telemetryd.agent: info line",
        "<4>telemetryd.agent: broker b1 refused",
        "<3>telemetryd.agent: sample failed",
    ]
    # journald reads a prefix per line: every traceback line keeps the error's priority
    assert lines[4] == "<3>Traceback (most recent call last):"
    assert lines[-1] == "<3>ZeroDivisionError: division by zero"
    assert all(line.startswith("<") for line in lines)


def test_journal_stream_of_another_file_is_not_ours(tmp_path: Path) -> None:
    """A child with stderr redirected inherits JOURNAL_STREAM but writes elsewhere."""
    other = tmp_path / "other"
    other.write_text("")
    for value in (identity(other), "garbage", ""):
        out = child(tmp_path, journal=value, level="warning")
        assert out.splitlines()[0] == "telemetryd: WARNING: broker b1 refused", value


def parse_native(datagram: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    rest = datagram
    while rest:
        line, sep, after = rest.partition(b"\n")
        assert sep, rest
        if b"=" in line:
            name, _, value = line.partition(b"=")
            fields[name.decode()] = value.decode()
            rest = after
        else:
            (size,) = struct.unpack("<Q", after[:8])
            fields[line.decode()] = after[8 : 8 + size].decode()
            assert after[8 + size : 9 + size] == b"\n"
            rest = after[9 + size :]
    return fields


@pytest.fixture
def journal_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "journal.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


def test_native_journal_fields(tmp_path: Path, journal_socket: tuple[socket.socket, str]) -> None:
    sock, path = journal_socket
    out = child(tmp_path, journal="match", sock=path, level="info")
    assert out == ""  # everything went to the socket
    records = [parse_native(sock.recv(1 << 20)) for _ in range(3)]
    info, warning, error = records
    assert info["MESSAGE"] == "info line" and info["PRIORITY"] == "6"
    assert warning["MESSAGE"] == "broker b1 refused" and warning["PRIORITY"] == "4"
    assert warning["LOGGER"] == "telemetryd.agent"
    assert warning["SYSLOG_IDENTIFIER"] == "telemetryd"
    assert warning["CODE_FILE"] == "<string>" and warning["CODE_LINE"] == "8"
    # a traceback is one entry: a multi-line MESSAGE, length-framed
    assert error["PRIORITY"] == "3"
    assert error["MESSAGE"].startswith("sample failed\nTraceback (most recent call last):")
    assert error["MESSAGE"].endswith("ZeroDivisionError: division by zero")


def test_a_refusing_socket_falls_back_to_the_prefixed_stream(
    tmp_path: Path, journal_socket: tuple[socket.socket, str]
) -> None:
    sock, path = journal_socket
    sock.close()  # the file stays; sending to it is refused (journald restarting)
    lines = child(tmp_path, journal="match", sock=path, level="warning").splitlines()
    assert lines[:2] == [
        "<4>telemetryd.agent: broker b1 refused",
        "<3>telemetryd.agent: sample failed",
    ]


def test_too_big_for_a_datagram_goes_down_the_stream(
    tmp_path: Path, journal_socket: tuple[socket.socket, str]
) -> None:
    _, path = journal_socket
    handler = logsetup._JournalOut(path, stream := io.StringIO(), RepeatLimiter(10, 60))
    record = logging.makeLogRecord({"name": "x", "msg": "y" * 8_000_000, "levelno": 40})
    handler.handle(record)
    handler.close()
    assert stream.getvalue() == "<3>x: " + "y" * 8_000_000 + "\n"


def test_repeats_are_held_back_and_summarised_at_exit(tmp_path: Path) -> None:
    lines = child(tmp_path, journal=None, level="warning", burst=3, repeats=50).splitlines()
    repeats = [line for line in lines if "reconnect in" in line]
    assert repeats[:3] == [f"telemetryd: WARNING: reconnect in {i} s" for i in range(3)]
    assert len(repeats) == 4, repeats
    assert repeats[3].startswith(
        "telemetryd: WARNING: reconnect in 49 s (repeated 47 more times in "
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(msg: str, *args: object, name: str = "telemetryd.agent") -> logging.LogRecord:
    return logging.makeLogRecord({"name": name, "msg": msg, "args": args, "levelno": 30})


def test_repeat_limiter_windows() -> None:
    clock = Clock()
    limiter = RepeatLimiter(burst=2, window=60, clock=clock)
    passed = []
    for i in range(10):
        clock.now += 1
        passed += limiter.admit(record("sink %s refused: %d", "influx", i))
    # a different template, or the same template of another logger, counts apart
    passed += limiter.admit(record("other"))
    passed += limiter.admit(record("sink %s refused: %d", "x", 0, name="telemetryd.other"))
    assert [r.getMessage() for r in passed] == [
        "sink influx refused: 0",
        "sink influx refused: 1",
        "other",
        "sink x refused: 0",
    ]
    clock.now += 30  # still within the first window
    assert limiter.admit(record("sink %s refused: %d", "influx", 10)) == []
    clock.now += 30  # the window is over: the next record of any kind brings the summary
    out = limiter.admit(record("unrelated"))
    assert [r.getMessage() for r in out] == [
        "sink influx refused: 10 (repeated 9 more times in 39 s)",
        "unrelated",
    ]
    assert out[0].levelno == 30 and out[0].name == "telemetryd.agent"
    # a new window lets the burst through again; nothing held back means no summary
    assert len(limiter.admit(record("sink %s refused: %d", "influx", 11))) == 1
    clock.now += 61
    assert [r.getMessage() for r in limiter.admit(record("z"))] == ["z"]
    assert limiter.expire() == []


@contextmanager
def bare_root() -> Iterator[logging.Logger]:
    """The root logger without pytest's capture handlers, as in a fresh process.

    Entered in the test body: pytest adds its handlers after fixtures are set up.
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers = []
    yield root
    for handler in root.handlers:
        handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_level_handling_and_one_handler() -> None:
    stream = io.StringIO()
    with bare_root() as root:
        first = logsetup.setup("info", stream=io.StringIO(), environ={})
        second = logsetup.setup("ERROR", stream=stream, environ={})
        assert root.handlers == [second] and first is not second
        assert root.level == logging.ERROR
        logging.getLogger("a").warning("hidden")
        logging.getLogger("a").error("shown")
        with pytest.raises(ValueError, match="unknown log level 'loud'"):
            logsetup.setup("loud")
    assert stream.getvalue() == "telemetryd: ERROR: shown\n"


def test_a_configured_root_is_left_alone() -> None:
    foreign = logging.StreamHandler(io.StringIO())
    with bare_root() as root:
        root.addHandler(foreign)
        assert logsetup.setup("debug", stream=io.StringIO(), environ={}) is None
        assert root.handlers == [foreign]


def test_top_still_takes_the_lines_while_it_runs() -> None:
    """top swaps the handlers for its status bar (logcapture) and puts ours back after."""
    shown: list[str] = []
    stream = io.StringIO()
    with bare_root() as root:
        installed = logsetup.setup("info", stream=stream, environ={})
        with logs_into(shown.append):
            logging.getLogger("telemetryd.x").warning("broker %s refused MQTT 5", "b1")
        logging.getLogger("telemetryd.x").warning("after top")
        assert root.handlers == [installed]
    assert shown == ["broker b1 refused MQTT 5"]
    assert stream.getvalue() == "telemetryd: WARNING: after top\n"


def cli(tmp_path: Path, *args: str, journal: bool = False, **env: str) -> str:
    """``telemetryd [args] collect --once --gpu-backend sim``; what it wrote to stderr."""
    argv = ["-m", "telemetryd", *args, "collect", "--once", "--gpu-backend", "sim"]
    return stderr_of(tmp_path, argv, "match" if journal else None, **env)


def test_cli_log_level_option_and_variable(tmp_path: Path) -> None:
    selector = "telemetryd: DEBUG: Using selector:"  # asyncio's first line at debug
    assert selector in cli(tmp_path, "--log-level", "debug")
    assert selector in cli(tmp_path, TELEMETRYD_LOG_LEVEL="debug")
    assert selector in cli(tmp_path, "--debug")
    quiet = cli(tmp_path, "--log-level", "warning")
    assert "DEBUG" not in quiet and "INFO" not in quiet


def test_cli_under_journald(tmp_path: Path) -> None:
    out = cli(tmp_path, "--log-level", "debug", journal=True)
    assert "telemetryd: DEBUG" not in out
    if not os.path.exists(logsetup.JOURNAL_SOCKET):  # else the records went to journald
        assert "<7>asyncio: Using selector:" in out

"""systemd integration: the shipped units verify, socket activation and sd_notify work.

Everything here is real: `systemd-analyze verify` on the unit files,
`systemd-socket-activate` passing a listening socket to a real corrald
($LISTEN_FDS), and a datagram socket bound by the test standing in for
systemd's $NOTIFY_SOCKET.
"""

from __future__ import annotations

import configparser
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral import errors
from corral.client import Client
from corrald.rpc.server import Limits
from tests.daemon_proc import DaemonProcess

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "systemd"
SERVICE = UNITS / "corrald.service"
SOCKET = UNITS / "corrald.socket"

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)
needs_activate = pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None,
    reason="systemd-socket-activate is not installed",
)


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(path.read_text())
    return parser


def seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "sec": 1, "min": 60, "m": 60}
    for suffix, factor in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value)


def analyze_verify(*paths: Path, user: bool) -> subprocess.CompletedProcess[str]:
    cmd = ["systemd-analyze", *(["--user"] if user else []), "verify", *map(str, paths)]
    # --user needs $XDG_RUNTIME_DIR (0700); the autouse conftest fixture made one.
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=os.environ.copy())


# --- the unit files ------------------------------------------------------------------


def test_service_unit_settings() -> None:
    service = unit(SERVICE)["Service"]
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["Delegate"] == "yes"
    assert service["KillMode"] == "mixed"
    assert service["Restart"] == "on-failure"
    assert seconds(service["WatchdogSec"]) == 30
    # systemd's SIGKILL must come after corrald's own shutdown: the agents'
    # SIGTERM grace (5 s) plus the daemon's request-drain grace.
    agent_grace = 5.0
    assert seconds(service["TimeoutStopSec"]) > agent_grace + Limits().shutdown_grace_secs
    assert "corrald" in service["ExecStart"]


def test_socket_unit_settings() -> None:
    parsed = unit(SOCKET)
    sock = parsed["Socket"]
    assert sock["ListenStream"] == "%t/corral/corrald.sock"
    assert sock["SocketMode"] == "0600"
    assert sock["DirectoryMode"] == "0700"
    assert sock.get("Accept", "no") == "no"  # one daemon for every connection
    assert parsed["Install"]["WantedBy"] == "sockets.target"


@needs_analyze
@pytest.mark.parametrize("user", [True, False], ids=["user", "system"])
def test_shipped_units_verify_as_is(user: bool) -> None:
    # ExecStart is `/usr/bin/env corrald`, so verification does not depend on
    # where corrald is installed (see the comment in corrald.service).
    result = analyze_verify(SOCKET, SERVICE, user=user)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stderr


@needs_analyze
def test_units_verify_with_exec_start_on_the_installed_corrald(tmp_path: Path) -> None:
    corrald = Path(sys.executable).parent / "corrald"
    assert corrald.exists(), "the package's corrald entry point is installed beside python"
    text = SERVICE.read_text()
    lines = [
        f"ExecStart={corrald}" if line.startswith("ExecStart=") else line
        for line in text.splitlines()
    ]
    (tmp_path / "corrald.service").write_text("\n".join(lines) + "\n")
    shutil.copy(SOCKET, tmp_path / "corrald.socket")
    result = analyze_verify(tmp_path / "corrald.socket", tmp_path / "corrald.service", user=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


@needs_analyze
def test_verify_really_checks_exec_start(tmp_path: Path) -> None:
    # Guards the two tests above against a verify that checks nothing.
    text = SERVICE.read_text().replace(
        "ExecStart=/usr/bin/env corrald", "ExecStart=/nonexistent/corrald"
    )
    (tmp_path / "corrald.service").write_text(text)
    shutil.copy(SOCKET, tmp_path / "corrald.socket")
    result = analyze_verify(tmp_path / "corrald.service", user=True)
    assert result.returncode != 0
    assert "/nonexistent/corrald" in result.stderr


# --- socket activation -----------------------------------------------------------------


class Activated:
    """`systemd-socket-activate -l SOCK corrald ...`: corrald gets fd 3 and $LISTEN_FDS."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sa", dir="/tmp"))
        self.socket = self.dir / "corrald.sock"
        self.log_path = self.dir / "log"
        env_args: list[str] = []
        for var in ("XDG_RUNTIME_DIR", "XDG_STATE_HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME"):
            env_args += ["-E", f"{var}={os.environ[var]}"]
        self.cmd = [
            "systemd-socket-activate", "-l", str(self.socket), *env_args,
            sys.executable, "-m", "corrald.app",
            "--socket", str(self.socket), "--state-dir", str(self.dir / "state"),
        ]  # fmt: skip
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=log, cwd=ROOT)

    def client_when_listening(self, timeout: float = 20.0) -> Client:
        """Connect once systemd-socket-activate listens (that starts corrald)."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, self.log()
            try:
                return Client(self.socket, timeout=timeout).connect()
            except errors.DaemonNotRunning:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def activated() -> Iterator[Activated]:
    a = Activated()
    try:
        yield a
    finally:
        a.close()


@needs_activate
def test_socket_activation_answers_a_client(activated: Activated) -> None:
    with activated.client_when_listening() as c:
        status = c.daemon_status()
        # systemd-socket-activate execs corrald in place: same pid, LISTEN_PID matches.
        assert status.pid == activated.proc.pid
        assert status.socket_path == str(activated.socket)
        assert c.daemon_status().pid == status.pid
    # More connections on the passed socket.
    for _ in range(3):
        with Client(activated.socket, timeout=10) as c:
            assert c.daemon_status().pid == activated.proc.pid
    assert "Execing" in activated.log()
    activated.proc.send_signal(signal.SIGTERM)
    assert activated.proc.wait(30) == 0, activated.log()


@needs_activate
def test_socket_passed_by_systemd_is_left_in_place(activated: Activated) -> None:
    # The path belongs to corrald.socket: if corrald removes it on a clean stop,
    # socket activation is dead (clients get ENOENT) until the socket unit restarts.
    with activated.client_when_listening() as c:
        c.daemon_status()
    activated.proc.send_signal(signal.SIGTERM)
    assert activated.proc.wait(30) == 0, activated.log()
    assert activated.socket.is_socket()


# --- sd_notify -------------------------------------------------------------------------


class NotifyListener:
    """A datagram socket where $NOTIFY_SOCKET points, like systemd's."""

    def __init__(self, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.dir = Path(tempfile.mkdtemp(prefix="ns", dir="/tmp"))
        if abstract:
            name = f"corral-test-{secrets.token_hex(8)}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.sock.bind(str(self.dir / "notify"))
            self.address = str(self.dir / "notify")
        self.messages: list[str] = []

    def wait_for(self, line: str, timeout: float = 20.0) -> list[str]:
        """Receive until a datagram holds `line`; returns every datagram seen so far."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {line!r} in {self.messages}")
            self.sock.settimeout(remaining)
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            self.messages.append(message)
            if line in message.splitlines():
                return self.messages

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(params=[False, True], ids=["path", "abstract"])
def notify_listener(request: pytest.FixtureRequest) -> Iterator[NotifyListener]:
    listener = NotifyListener(abstract=request.param)
    try:
        yield listener
    finally:
        listener.close()


def test_ready_then_stopping_on_sigterm(notify_listener: NotifyListener) -> None:
    with DaemonProcess(env={"NOTIFY_SOCKET": notify_listener.address}) as d:
        seen = notify_listener.wait_for("READY=1")
        ready = next(m for m in seen if "READY=1" in m.splitlines())
        assert f"STATUS=listening on {d.socket}" in ready.splitlines()
        assert not any("STOPPING=1" in m for m in seen)
        # READY came once the socket answers: a client gets through now.
        with d.client() as c:
            assert c.daemon_status().pid == d.pid
        d.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        notify_listener.wait_for("STOPPING=1")
        assert d.proc.wait(30) == 0  # type: ignore[union-attr]
        # No watchdog was asked for, so none was sent.
        assert not any("WATCHDOG=1" in m.splitlines() for m in notify_listener.messages)


def test_watchdog_pings_when_watchdog_usec_is_set(notify_listener: NotifyListener) -> None:
    env = {"NOTIFY_SOCKET": notify_listener.address, "WATCHDOG_USEC": "200000"}
    with DaemonProcess(env=env) as d:
        notify_listener.wait_for("READY=1")
        # Pings every WATCHDOG_USEC/2 = 0.1 s; three more must arrive well within 5 s.
        start = len(notify_listener.messages)
        for _ in range(3):
            notify_listener.wait_for("WATCHDOG=1", timeout=5)
        assert len(notify_listener.messages) >= start + 3
        assert d.stop() == 0


def test_watchdog_for_another_pid_is_ignored(notify_listener: NotifyListener) -> None:
    # WATCHDOG_PID names the process that must ping; a child that inherited the
    # variables (pid differs) must stay silent.
    env = {
        "NOTIFY_SOCKET": notify_listener.address,
        "WATCHDOG_USEC": "200000",
        "WATCHDOG_PID": "1",
    }
    with DaemonProcess(env=env) as d:
        notify_listener.wait_for("READY=1")
        d.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        notify_listener.wait_for("STOPPING=1")
        assert d.proc.wait(30) == 0  # type: ignore[union-attr]
    assert not any("WATCHDOG=1" in m.splitlines() for m in notify_listener.messages)


def test_runs_in_the_foreground_without_systemd() -> None:
    # No NOTIFY_SOCKET, no LISTEN_FDS (the conftest removes them): it binds its own.
    with DaemonProcess() as d:
        assert d.socket.is_socket()
        with d.client() as c:
            assert c.daemon_status().socket_path == str(d.socket)
        assert d.stop() == 0

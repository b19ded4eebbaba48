"""Start a private corrald as a subprocess: `corral demo`, tests and benchmarks.

The client never imports the daemon; it runs `python -m corrald.app` with its
own socket, state directory and config, waits until it answers, and stops it
politely (daemon_shutdown), then with SIGTERM, then SIGKILL, always reaping it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from corral import errors
from corral.client import Client


class DaemonStartError(RuntimeError):
    """corrald exited or did not answer in time; the message ends with its log tail."""


class LocalDaemon:
    """A corrald subprocess on `socket`, keeping its state in `state_dir`."""

    def __init__(
        self,
        socket: Path,
        state_dir: Path,
        *,
        log_path: Path,
        config_path: Path | None = None,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.socket = socket
        self.state_dir = state_dir
        self.log_path = log_path
        self.config_path = config_path
        self.args = tuple(args)
        if env is None:
            # Not ours to inherit: they would make the child talk to our systemd.
            env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "LISTEN_FDS")}
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "corrald.app",
            "--socket",
            str(self.socket),
            "--state-dir",
            str(self.state_dir),
            *self.args,
        ]
        if self.config_path is not None:
            cmd += ["--config", str(self.config_path)]
        return cmd

    def start(self, timeout: float = 20.0) -> LocalDaemon:
        """Spawn corrald and wait until it answers `daemon_status`."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=self.env
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DaemonStartError(f"corrald exited {self.proc.returncode}:\n{self.log()}")
            try:
                with Client(self.socket, timeout=5) as c:
                    c.daemon_status()
                return self
            except (errors.DaemonNotRunning, errors.ConnectionLost):
                time.sleep(0.02)
        raise DaemonStartError(f"corrald did not answer within {timeout:.0f} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None, "not started"
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL (the crash case) and reap."""
        assert self.proc is not None, "not started"
        self.proc.kill()
        self.proc.wait(10)

    def shutdown(self) -> None:
        """Ask politely (daemon_shutdown), then SIGTERM, then SIGKILL; always reap."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with (
                contextlib.suppress(errors.CorralError, OSError),
                Client(self.socket, timeout=5) as c,
            ):
                c.daemon_shutdown()
            for sig in (None, signal.SIGTERM, signal.SIGKILL):
                if sig is not None and self.proc.poll() is None:
                    self.proc.send_signal(sig)
                try:
                    self.proc.wait(15 if sig is None else 5)
                    break
                except subprocess.TimeoutExpired:
                    continue
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()  # only if the daemon did not remove it itself

    def __repr__(self) -> str:
        return f"LocalDaemon({self.socket}, pid={self.proc.pid if self.proc else None})"

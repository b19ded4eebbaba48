"""Start a real corrald process on a real socket for tests and benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from corral import errors
from corral.client import Client


class DaemonProcess:
    """A corrald subprocess with its own socket, state dir and config."""

    def __init__(
        self,
        state_dir: Path | None = None,
        *,
        config: str | None = None,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="cd", dir="/tmp"))
        self.socket = self.dir / "corrald.sock"
        self.state_dir = state_dir or self.dir / "state"
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = self.dir / "config.toml"
            self.config_path.write_text(config)
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / "corrald.log"

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

    def start(self, timeout: float = 20.0) -> DaemonProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.command(), env=self.env, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"corrald exited {self.proc.returncode}:\n{self.log()}")
            try:
                with Client(self.socket, timeout=5) as c:
                    c.daemon_status()
                return self
            except (errors.DaemonNotRunning, errors.ConnectionLost):
                time.sleep(0.02)
        raise TimeoutError(f"corrald did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self, **kwargs: Any) -> Client:
        return Client(self.socket, **kwargs).connect()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: the crash case."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __repr__(self) -> str:
        return f"DaemonProcess({self.socket}, pid={self.proc.pid if self.proc else None})"

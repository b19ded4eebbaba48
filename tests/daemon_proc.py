"""A real corrald process on a private socket, for tests and benchmarks."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

from corral.client import Client
from corral.launch import LocalDaemon


class DaemonProcess(LocalDaemon):
    """A corrald subprocess in a fresh short /tmp dir, with an optional config text."""

    def __init__(
        self,
        state_dir: Path | None = None,
        *,
        config: str | None = None,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="cd", dir="/tmp"))  # AF_UNIX paths are short
        config_path = None
        if config is not None:
            config_path = self.dir / "config.toml"
            config_path.write_text(config)
        merged = None if env is None else {**os.environ, **env}
        super().__init__(
            self.dir / "corrald.sock",
            state_dir or self.dir / "state",
            log_path=self.dir / "corrald.log",
            config_path=config_path,
            args=args,
            env=merged,
        )

    def client(self, **kwargs: Any) -> Client:
        return Client(self.socket, **kwargs).connect()

    def __enter__(self) -> DaemonProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.running():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)


#: Root may write into a read-only directory, so the daemon would never meet the
#: permission errors a user's daemon meets. Without these capabilities root's
#: permission checks are those of an ordinary owner.
OWNER_ONLY = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner")


def unprivileged(cmd: list[str]) -> list[str]:
    """`cmd` run with an ordinary owner's permission checks, also when we are root."""
    if os.geteuid() != 0:
        return cmd
    if shutil.which(OWNER_ONLY[0]) is None:
        pytest.skip("running as root without setpriv: permission errors cannot happen")
    return [*OWNER_ONLY, *cmd]


class UnprivilegedDaemon(DaemonProcess):
    """A daemon whose permission checks are an ordinary user's, also when we are root."""

    def command(self) -> list[str]:
        return unprivileged(super().command())

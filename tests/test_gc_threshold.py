"""corrald's collector thresholds: the chosen ones, an override, and a bad override refused."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from corrald.app import GC_THRESHOLD, gc_threshold
from corrald.config import ConfigError
from tests.daemon_proc import DaemonProcess


def test_the_threshold_is_the_chosen_one_unless_overridden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CORRALD_GC_THRESHOLD", raising=False)
    assert gc_threshold() == GC_THRESHOLD
    monkeypatch.setenv("CORRALD_GC_THRESHOLD", "700,10,10")
    assert gc_threshold() == (700, 10, 10)
    for bad in ("700,10", "a,b,c", "1,2,3,4"):
        monkeypatch.setenv("CORRALD_GC_THRESHOLD", bad)
        with pytest.raises(ConfigError, match="three integers"):
            gc_threshold()


def test_a_daemon_with_an_override_serves_and_a_bad_one_does_not_start() -> None:
    with DaemonProcess(env={"CORRALD_GC_THRESHOLD": "1000,5,5"}) as d, d.client(timeout=10) as c:
        assert c.daemon_status().pid == d.pid
    shutil.rmtree(d.dir, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix="gc", dir="/tmp"))
    root = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "CORRALD_GC_THRESHOLD": "lots",
        "PYTHONPATH": os.pathsep.join(str(root / d) for d in ("daemon", "client")),
    }
    done = subprocess.run(
        [sys.executable, "-m", "corrald.app", "--socket", str(tmp / "s.sock"),
         "--state-dir", str(tmp / "state")],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "CORRALD_GC_THRESHOLD='lots': give three integers" in done.stderr
    assert not (tmp / "s.sock").exists()
    shutil.rmtree(tmp, ignore_errors=True)

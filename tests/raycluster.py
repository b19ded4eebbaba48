"""A real two-node Ray cluster on 127.0.0.1, in a private network namespace (tests, bench).

Ray picks the machine's interface address even when told 127.0.0.1, so the
cluster lives in a network namespace of its own where loopback is the only
interface: `enter_private_netns` moves this process there (`unshare -n`,
then `ip link set lo up`); every process it starts afterwards (the `ray
start` nodes, the daemon under test) inherits it. Nothing here ever
targets a non-loopback address.

Each node is a `ray start` of its own; all of a cluster's processes carry
its temp dir in their command lines, which is how `stop` finds them (never
`ray stop`, which would end every Ray process on the machine).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

CLONE_NEWNET = 0x40000000
RAY = str(Path(sys.executable).with_name("ray"))


_entered: list[str] = []  # the namespace this process moved to, once it has


def enter_private_netns() -> None:
    """Move this process (its calling thread, and what it starts later) to a new netns."""
    if _entered and _entered[0] == os.readlink("/proc/thread-self/ns/net"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNET) failed: {os.strerror(err)}")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    _entered[:] = [os.readlink("/proc/thread-self/ns/net")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RayCluster:
    """`ray start --head` plus worker nodes, all on 127.0.0.1; `stop()` ends every process."""

    def __init__(self, cpus_per_node: int = 2) -> None:
        self.cpus = cpus_per_node
        self.temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        self.nodes = 0

    def _start(self, *args: str) -> None:
        out = subprocess.run(
            [RAY, "start", "--node-ip-address", "127.0.0.1", "--num-cpus", str(self.cpus),
             "--disable-usage-stats", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"ray start failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
        self.nodes += 1

    def start(self, nodes: int = 2) -> RayCluster:
        self._start(
            "--head", "--port", str(self.port), "--include-dashboard=false",
            "--temp-dir", str(self.temp),
        )  # fmt: skip
        for _ in range(nodes - 1):
            self.add_node()
        return self

    def add_node(self) -> None:
        # A loaded machine can make a node miss its startup deadline: one more try.
        try:
            self._start("--address", self.address)
        except RuntimeError:
            self._start("--address", self.address)

    def processes(self) -> list[psutil.Process]:
        mark = str(self.temp)
        out = []
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if any(mark in part for part in proc.info["cmdline"] or ()):
                    out.append(proc)
            except psutil.Error:
                continue
        return out

    def raylets(self) -> list[psutil.Process]:
        return [p for p in self.processes() if p.name() == "raylet"]

    def raylet_of(self, pid: int) -> psutil.Process | None:
        """The raylet whose worker is an ancestor of `pid` (the node a process runs on)."""
        raylets = {p.pid: p for p in self.raylets()}
        try:
            proc: psutil.Process | None = psutil.Process(pid)
            while proc is not None:
                if proc.pid in raylets:
                    return raylets[proc.pid]
                proc = proc.parent()
        except psutil.Error:
            return None
        return None

    def kill_node(self, raylet: psutil.Process) -> None:
        """SIGKILL a node: its raylet and every process under it (its workers)."""
        victims = [raylet, *raylet.children(recursive=True)]
        for proc in victims:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGKILL)
        psutil.wait_procs(victims, timeout=10)

    def stop(self) -> None:
        procs = self.processes()
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGKILL)
        psutil.wait_procs(procs, timeout=10)
        shutil.rmtree(self.temp, ignore_errors=True)

    def __enter__(self) -> RayCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_nodes(cluster: RayCluster, alive: int, timeout: float = 60.0) -> None:
    """Wait until the cluster's GCS reports `alive` nodes (asked through a subprocess)."""
    code = (
        "import ray,sys;ray.init(address=sys.argv[1],logging_level='ERROR');"
        "print(sum(1 for n in ray.nodes() if n['Alive']))"
    )
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(
            [sys.executable, "-c", code, cluster.address],
            env=cluster.env,
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(alive)]:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the cluster never had {alive} alive nodes: {out.stdout[-500:]}")
        time.sleep(1.0)

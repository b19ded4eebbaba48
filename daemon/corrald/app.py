"""Composition root: build the daemon from its parts and run it until told to stop."""

from __future__ import annotations

import argparse
import gc
import importlib.util
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import trio

from corral import __version__
from corral.paths import default_socket_path
from corrald import systemd
from corrald.api import Call, ClientState, DaemonInfo, methods
from corrald.config import Config, ConfigError, default_state_dir, load_config
from corrald.pool.pool import AgentPool
from corrald.process import cgroups
from corrald.process.executor import Executor, LocalExecutor
from corrald.process.spec import OutputBounds
from corrald.rpc.server import (
    AlreadyRunning,
    Connection,
    Limits,
    Server,
    bind_socket,
)
from corrald.state.engine import Engine, SessionState
from corrald.state.events import EventBus
from corrald.state.store import Store, StoreError

log = logging.getLogger("corrald")

#: Tasks a session gains before the collector is told they are long-lived.
FREEZE_EVERY_TASKS = 1000
#: `gc.set_threshold` once started. Python's (700, 10, 10) collected the young
#: generation every 700 allocations: measured with `gc.callbacks` in corrald over
#: adding 10k tasks then `bench/rpc_roundtrip.py --clients 100 --tasks 10000`,
#: these cut the collections' total from ~600 to ~160 ms and the longest from
#: ~65 to ~23 ms (loaded box), and p99 did not suffer. What lives long is frozen
#: (`LongLived`), so a collection scans only young objects. The environment's
#: `CORRALD_GC_THRESHOLD=a,b,c` overrides it: `--gc-thresholds` measures choices.
GC_THRESHOLD = (50_000, 20, 20)


def gc_threshold() -> tuple[int, int, int]:
    raw = os.environ.get("CORRALD_GC_THRESHOLD")
    if not raw:
        return GC_THRESHOLD
    try:
        a, b, c = (int(n) for n in raw.split(","))
    except ValueError:
        raise ConfigError(
            f"CORRALD_GC_THRESHOLD={raw!r}: give three integers, such as 50000,20,20"
        ) from None
    return a, b, c


class LongLived:
    """Keeps full collections short: what lives as long as the daemon is frozen.

    A full collection walks every tracked object; at 10k tasks that was most
    of a second on a loaded machine (`bench/bigsession.py`). The modules,
    models and restored state are frozen once started, and again each time a
    session has gained `FREEZE_EVERY_TASKS` tasks, after a young collection
    so that little garbage is frozen with them. Frozen objects are still
    freed when their last reference goes; only a cycle among them is kept.
    """

    def __init__(self) -> None:
        self.tasks_at_freeze: dict[str, int] = {}
        self.freezes = 0

    def freeze(self) -> None:
        gc.collect(1)
        gc.freeze()
        self.freezes += 1

    def on_change(self, state: SessionState) -> None:
        tasks = sum(state.scheduler.counts().values())
        if tasks - self.tasks_at_freeze.get(state.id, 0) >= FREEZE_EVERY_TASKS:
            self.tasks_at_freeze[state.id] = tasks
            self.freeze()

    def __repr__(self) -> str:
        return f"LongLived(freezes={self.freezes}, frozen={gc.get_freeze_count()})"


def executor_factory(config: Config) -> Callable[[trio.Nursery], Executor]:
    """The configured executor (`[executor] kind`); Ray needs the `corral[ray]` extra."""
    section = config.executor
    if section.kind == "local":
        return LocalExecutor
    if importlib.util.find_spec("ray") is None:
        raise ConfigError(
            '[executor] kind = "ray" needs Ray on this machine: pip install "corral[ray]"'
        )
    from corrald.process.ray_executor import RayExecutor

    def make(nursery: trio.Nursery) -> Executor:
        return RayExecutor(nursery, address=section.address, local=LocalExecutor(nursery))

    return make


class Daemon:
    """The running daemon: store, engine, server, and their lifecycle."""

    def __init__(self, config: Config, socket_path: Path, state_dir: Path) -> None:
        self.config = config
        self.socket_path = socket_path
        self.state_dir = state_dir
        self.store = Store(state_dir / "corral.db", durability=config.daemon.durability)
        self.bus = EventBus(
            self.store,
            window=config.daemon.event_window,
            queue_size=config.daemon.subscriber_queue,
            window_bytes=config.daemon.event_window_bytes,
            window_log_bytes=config.daemon.event_window_log_bytes,
            queue_bytes=config.daemon.subscriber_queue_bytes,
        )
        self.engine = Engine(self.store, self.bus)
        self.long_lived = LongLived()
        self.gc_threshold = gc_threshold()
        self.engine.on_change.append(self.long_lived.on_change)
        self.pool = AgentPool(
            self.engine,
            logs_dir=state_dir / "logs",
            worktree_base=config.daemon.worktree_base,
            spare_worktrees=config.daemon.spare_worktrees,
            custom_types=config.agents,
            output=OutputBounds(
                log_cap_bytes=config.daemon.log_cap_bytes,
                ring_lines=config.daemon.ring_lines,
                ring_bytes=config.daemon.ring_bytes,
                log_events_per_sec=config.daemon.log_events_per_sec,
                log_events_burst=config.daemon.log_events_burst,
            ),
            executor_factory=executor_factory(config),
        )
        d = config.daemon
        self.server: Server[Call, ClientState] = Server(
            methods,
            self._make_call,
            ClientState,
            Limits(
                max_frame_bytes=d.max_frame_bytes,
                max_connections=d.max_connections,
                frame_timeout_secs=d.frame_timeout_secs,
                shutdown_grace_secs=d.shutdown_grace_secs,
                write_timeout_secs=d.write_timeout_secs,
                max_batch_items=d.max_batch_items,
            ),
        )
        self.info = DaemonInfo(
            socket_path=str(socket_path),
            state_dir=str(state_dir),
            cgroup=cgroups.detect(),  # cached: detected once per process
            request_shutdown=self.server.request_shutdown,
            connections=lambda: len(self.server.connections),
            defaults=config.defaults,
        )

    def _make_call(self, conn: Connection[ClientState]) -> Call:
        return Call(self.engine, self.pool, self.info, conn)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        sock = systemd.listen_socket()
        owns_socket = sock is None  # a socket systemd passed belongs to corrald.socket
        if sock is None:
            sock = bind_socket(self.socket_path)
        else:
            self.info.socket_path = str(sock.getsockname() or self.socket_path)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._signals)
                interval = systemd.watchdog_interval()
                if interval:
                    nursery.start_soon(self._watchdog, interval)
                await nursery.start(self.pool.run)
                await nursery.start(self._serve, sock, nursery.cancel_scope)
                self.long_lived.freeze()  # imports, models and the restored state
                gc.set_threshold(*self.gc_threshold)
                systemd.notify(f"READY=1\nSTATUS=listening on {self.info.socket_path}")
                log.info("corrald %s listening on %s", __version__, self.info.socket_path)
                task_status.started()
        finally:
            self.store.close()
            if owns_socket:
                self.socket_path.unlink(missing_ok=True)
            log.info("corrald stopped")

    async def _serve(
        self,
        sock: socket.socket,
        done: trio.CancelScope,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        # serve() returns once shutdown is requested and in-flight work drained;
        # then the signal and watchdog tasks end too.
        await self.server.serve(sock, before_drain=self.pool.shutdown, task_status=task_status)
        done.cancel()

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("received %s, shutting down", signal.Signals(signum).name)
                systemd.notify("STOPPING=1")
                self.server.request_shutdown()

    async def _watchdog(self, interval: float) -> None:
        while True:
            systemd.notify("WATCHDOG=1")
            await trio.sleep(interval)

    def __repr__(self) -> str:
        return f"Daemon({self.socket_path}, {self.engine!r})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="corrald", description="The corral daemon.")
    parser.add_argument("--socket", type=Path, help="Unix socket path (env CORRAL_SOCKET)")
    parser.add_argument("--config", type=Path, help="TOML config file")
    parser.add_argument("--state-dir", type=Path, help="directory of the SQLite state file")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--version", action="version", version=f"corrald {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config, _ = load_config(args.config)
    except ConfigError as exc:
        print(f"corrald: {exc}", file=sys.stderr)
        return 2
    level = args.log_level or config.daemon.log_level
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    socket_path = args.socket or config.daemon.socket or default_socket_path()
    state_dir = args.state_dir or config.daemon.state_dir or default_state_dir()
    try:
        daemon = Daemon(config, Path(socket_path), Path(state_dir))
    except (StoreError, ConfigError) as exc:
        print(f"corrald: {exc}", file=sys.stderr)
        return 2
    try:
        trio.run(daemon.run)
    except AlreadyRunning as exc:
        print(f"corrald: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # pragma: no cover - SIGINT is handled by the receiver
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

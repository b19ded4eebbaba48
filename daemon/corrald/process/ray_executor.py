"""The Ray executor (`corral[ray]`): each run in a detached, named Ray actor on some node.

Ray only places. The daemon keeps the queue, priorities, retries and
admission (`can_place`: a run is submitted only when the cluster's alive
nodes can hold it beside corral's other runs, so no actor waits pending).
On the node, `process.ray_actor.RunActor` runs the runner
(`process.runner`): checkout from the bundle, the agent under the same
limits as a local run, the commit, the branch bundled back.

One actor per run, named `corral-run-<token>` in the namespace `corral`,
`lifetime="detached"` (it outlives a daemon that dies), with `num_cpus`
and `memory` from the task's limits (placement only: the runner enforces
them on the node). Its events are pulled by number (`RunActor.poll`, a
long poll), so after a daemon restart `reattach` finds the actor by name and
resumes after the last line in the agent's log file: no gap, no repeat,
nothing re-run. A cancel goes through the runner's ladder (TERM, grace,
KILL); only if the actor does not answer after the grace is it killed
(`ray.kill`, the last resort). An actor whose node died ends the run as
`lost`, and the pool requeues its task without spending a retry.

`ray` is imported here only, when this executor is configured: the base
install never needs it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from corral.models import AgentActivity, AgentLifecycle, EndReason, ErrorCategory, ResourceLimits
from corrald.core.accounting import RunAccounting
from corrald.core.placement import Demand, NodeCapacity, fits
from corrald.process.executor import LocalExecutor, RunHandle
from corrald.process.lines import FloodGate, LineRing
from corrald.process.logfile import LogWriter, make_log_entry
from corrald.process.run import kill_leftovers
from corrald.process.spec import RunEvents, RunResult, RunSpec, RunStats, Usage
from corrald.process.terminate import TerminationStage

log = logging.getLogger(__name__)

NAMESPACE = "corral"
ACTOR_PREFIX = "corral-run-"
#: How long one poll waits on the node for news (a long poll: lines arrive at once).
POLL_WAIT = 2.0
#: After a cancel's grace, how long the ladder may take before the actor is killed.
CANCEL_SLACK = 15.0
#: How often the cluster's nodes are looked at (Ray has no event for a node joining).
REFRESH_SECS = 2.0
#: Tries before an unreachable actor counts as lost.
UNREACHABLE_TRIES = 5


def actor_name(token: str) -> str:
    return f"{ACTOR_PREFIX}{token}"


def demand(limits: ResourceLimits) -> Demand:
    """What a run asks Ray for: CPUs from maxCpuPerAgent (% of a core), memory from its cap."""
    cpus = max(0.01, min(limits.max_cpu_per_agent, 6400.0) / 100.0)
    return Demand(cpus=round(cpus, 4), memory_mb=float(limits.max_memory_mb_per_agent))


def _ray() -> Any:
    import ray  # the optional extra: only here

    return ray


class RayRun:
    """The daemon's side of one run on a node: a mirror of its ring and log, and its end."""

    pid: int | None = None
    create_time: float | None = None

    def __init__(
        self, executor: RayExecutor, spec: RunSpec, events: RunEvents, actor: Any, *, next_seq: int
    ) -> None:
        self.executor = executor
        self.spec = spec
        self.events = events
        self.actor = actor
        self.lifecycle = AgentLifecycle.STARTING
        self.stats = RunStats()
        bounds = spec.output
        self.ring = LineRing(bounds.ring_lines, bounds.ring_bytes)
        self._gate = FloodGate(bounds.log_events_per_sec, bounds.log_events_burst, time.monotonic)
        self._log = LogWriter(spec.log_path, bounds.log_cap_bytes)
        self.result: RunResult | None = None
        self.node: str | None = None
        self._next = next_seq
        self._offset = 0  # the next daemon note's offset (after the last line seen)
        self._stop: tuple[EndReason, str] | None = None
        self._done = trio.Event()
        self._stage = TerminationStage.RUNNING

    # --- RunHandle ---------------------------------------------------------------------
    @property
    def agent_id(self) -> str:
        return self.spec.agent_id

    @property
    def stage(self) -> TerminationStage:
        return self._stage

    @property
    def start_ticks(self) -> int | None:
        return None

    def cancel(
        self, reason: EndReason = EndReason.CANCELLED, detail: str = "", grace: float | None = None
    ) -> None:
        """Stop the run through the node's ladder; `ray.kill` only if that does not end it."""
        if self.result is not None or self._stop is not None:
            return
        self._stop = (reason, detail or f"stopped: {reason.value}")
        self.executor.nursery.start_soon(self._cancel_remote, reason, detail, grace)

    async def wait(self) -> RunResult:
        await self._done.wait()
        assert self.result is not None
        return self.result

    def tail(self, n: int | None = None, since_offset: int | None = None) -> list[Any]:
        return self.ring.tail(n, since_offset)

    def note(self, text: str) -> None:
        log.info("agent %s: %s", self.spec.agent_id, text)
        entry = make_log_entry(self._offset, "daemon", text, time.time())
        self._offset += 1
        self.ring.append(entry)
        self._log.write("daemon", text)
        self._log.flush()
        with contextlib.suppress(Exception):
            self.events.log(entry)

    def new_members(self) -> list[tuple[int, int]]:
        return []  # the processes are on the node; its runner keeps their record

    # --- the SampleHub's view: figures arrive with the stream; limits are the node's ---
    @property
    def sample_interval(self) -> float:
        return self.spec.limits.sample_interval_secs

    @property
    def ending(self) -> bool:
        return self.result is not None

    def check(self) -> bool:
        return self.result is None

    def fail_internal(self, why: str) -> None:
        self.cancel(EndReason.FAILED, why)

    def __repr__(self) -> str:
        return (
            f"<RayRun {self.spec.agent_id} node={self.node} {self.lifecycle.value} "
            f"next={self._next} tokens={self.stats.tokens}>"
        )

    # --- the stream ----------------------------------------------------------------------
    def _apply(self, reply: dict[str, Any]) -> None:
        if reply["missed"]:
            self.note(f"{reply['missed']} events were dropped on the node before they were read")
        for kind, payload in reply["items"]:
            if kind == "log":
                self._line(payload)
            elif kind == "violation":
                self._safely(self.events.violation, payload)
            elif kind == "rate_limit":
                self._safely(self.events.rate_limit, *payload)
        self._log.flush()
        self._next = reply["next"]
        st = self.stats
        if (reply["tokens"], reply["cost"]) != (st.tokens, st.cost):
            st.tokens, st.cost = reply["tokens"], reply["cost"]
            self._safely(self.events.tokens, st.tokens, st.cost)
        activity: AgentActivity = reply["activity"]
        if activity is not st.activity:
            st.activity = activity
            self._safely(self.events.activity, activity)
        st.cpu_percent, st.memory_mb = reply["cpu"], reply["memory"]
        st.peak_memory_mb = max(st.peak_memory_mb, st.memory_mb)
        if reply["lifecycle"] is not None and self.result is None:
            self.lifecycle = reply["lifecycle"]
        if reply["stage"] is not None:
            self._stage = reply["stage"]

    def _line(self, entry: Any) -> None:
        self._offset = entry.offset + 1
        self.ring.append(entry)
        self.stats.lines += 1
        self._log.write(entry.stream, entry.line)
        if self._gate.admit(entry, always=entry.stream == "daemon"):
            skipped = self._gate.flush()
            if skipped is not None:
                self._safely(self.events.log_skipped, skipped)
            self._safely(self.events.log, entry)

    @staticmethod
    def _safely(fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("run event %s failed", getattr(fn, "__name__", fn))

    async def follow(self) -> None:
        """Pull the run's events until it ends, then its result; a dead actor is `lost`."""
        x = self.executor
        ray = _ray()
        unreachable = 0
        result: RunResult | None = None
        try:
            while True:
                try:
                    reply = await x.call(self.actor.poll.remote, self._next, POLL_WAIT)
                except ray.exceptions.ActorUnavailableError:
                    unreachable += 1
                    if unreachable >= UNREACHABLE_TRIES:
                        raise
                    await trio.sleep(0.5 * unreachable)
                    continue
                unreachable = 0
                self._apply(reply)
                if reply["done"]:
                    break
            result = await x.call(self.actor.get_result.remote)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
            result = self._lost(f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
        except Exception as exc:  # a bug of ours: this run ends, nothing else
            log.exception("agent %s: following the Ray run failed", self.agent_id)
            result = self._ended(
                EndReason.FAILED,
                f"internal error: {type(exc).__name__}: {exc}"[:500],
                ErrorCategory.INTERNAL,
            )
        finally:
            if result is None:  # cancelled: the daemon is going down; the actor lives on
                result = self._ended(EndReason.CANCELLED, "the daemon stopped following the run")
            self._finish(result)
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            await x.kill(self.actor)

    def _lost(self, why: str) -> RunResult:
        if self._stop is not None:  # we killed it (the last resort of a cancel)
            reason, detail = self._stop
            return self._ended(reason, f"{detail} (actor killed after the grace)")
        self.note(f"the run's actor or node is gone: {why}")
        return self._ended(EndReason.LOST, f"node lost: {why}")

    def _ended(
        self, reason: EndReason, why: str, category: ErrorCategory | None = None
    ) -> RunResult:
        return RunResult(
            exit_code=None,
            end_reason=reason,
            error_category=category,
            error=why,
            tokens=self.stats.tokens,
            cost=self.stats.cost,
            rate_limited=False,
            rate_limit_reset=None,
            ended_at=time.time(),
            usage=Usage(self.stats.cpu_seconds, self.stats.peak_memory_mb),
        )

    def _finish(self, result: RunResult) -> None:
        if self.result is not None:
            return
        self.result = result
        self.stats.cpu_seconds = max(self.stats.cpu_seconds, result.usage.cpu_seconds)
        self.lifecycle = (
            AgentLifecycle.EXITED
            if result.end_reason in (EndReason.OK, EndReason.FAILED, EndReason.RATE_LIMIT)
            else AgentLifecycle.KILLED
        )
        self._stage = TerminationStage.DONE
        skipped = self._gate.flush()
        if skipped is not None:
            self._safely(self.events.log_skipped, skipped)
        self._log.close()
        self.executor.ended(self)
        self._done.set()

    async def _cancel_remote(self, reason: EndReason, detail: str, grace: float | None) -> None:
        x = self.executor
        grace = self.spec.limits.kill_grace_secs if grace is None else grace
        with contextlib.suppress(Exception):
            await x.call(self.actor.cancel.remote, reason, detail, grace)
        with trio.move_on_after(grace + CANCEL_SLACK):
            await self._done.wait()
            return
        log.warning(
            "agent %s: no end %ss after the cancel; killing its actor", self.agent_id, grace
        )
        await x.kill(self.actor)


class RayExecutor:
    """Runs agents in Ray actors across a cluster; gates stay on the local executor."""

    name = "ray"
    remote = True

    def __init__(self, nursery: trio.Nursery, *, address: str, local: LocalExecutor) -> None:
        self.nursery = nursery
        self.address = address
        self._local = local
        self.hub = local.hub  # Ray runs join its ticks: totals and wakeups stay one code path
        self.nodes: list[NodeCapacity] = []
        self._placed: dict[str, Demand] = {}  # agent id -> what its actor holds
        self._runs: dict[str, RayRun] = {}
        # One thread per blocked call; many runs each hold one during their long poll.
        self._limiter = trio.CapacityLimiter(4096)
        self._ready = False

    @property
    def local(self) -> LocalExecutor:
        return self._local

    async def open(self) -> None:
        """Connect to the cluster (`ray.init`); keep its nodes up to date in the background."""
        ray = _ray()

        def connect() -> None:
            if not ray.is_initialized():
                ray.init(
                    address=self.address,
                    namespace=NAMESPACE,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                    configure_logging=False,
                )

        await trio.to_thread.run_sync(connect)
        await self.refresh()
        self._ready = True
        self.nursery.start_soon(self._refresh_loop)

    async def call(self, method: Any, *args: Any) -> Any:
        """`ray.get(method(*args))` in a thread (Ray's client calls block)."""
        ray = _ray()
        return await trio.to_thread.run_sync(
            lambda: ray.get(method(*args)), abandon_on_cancel=True, limiter=self._limiter
        )

    async def kill(self, actor: Any) -> None:
        ray = _ray()

        def kill() -> None:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)

        await trio.to_thread.run_sync(kill, limiter=self._limiter)

    async def refresh(self) -> None:
        """Read the cluster's alive nodes and their resources."""
        ray = _ray()

        def read() -> list[NodeCapacity]:
            out = []
            for node in ray.nodes():
                if not node.get("Alive"):
                    continue
                res = node.get("Resources", {})
                out.append(
                    NodeCapacity(
                        node_id=str(node.get("NodeID", "")),
                        address=str(node.get("NodeManagerAddress", "")),
                        cpus=float(res.get("CPU", 0.0)),
                        memory_mb=float(res.get("memory", 0.0)) / (1024 * 1024),
                    )
                )
            return out

        self.nodes = await trio.to_thread.run_sync(read, limiter=self._limiter)

    async def _refresh_loop(self) -> None:
        while True:
            await trio.sleep(REFRESH_SECS)
            before = self.nodes
            try:
                await self.refresh()
            except Exception:
                log.exception("cannot read the Ray cluster's nodes")
            if self.nodes != before:
                # A node came or went: sessions waiting for room look again
                # (the hub's after-tick callbacks are the pool's "figures changed").
                for callback in self.hub.after_tick:
                    try:
                        callback()
                    except Exception:
                        log.exception("after-refresh callback failed")

    # --- Executor ------------------------------------------------------------------------
    def can_place(self, limits: ResourceLimits, pending: Sequence[ResourceLimits] = ()) -> bool:
        held = [*self._placed.values(), *(demand(p) for p in pending)]
        return self._ready and fits(self.nodes, held, demand(limits))

    async def submit(self, spec: RunSpec, events: RunEvents) -> RunHandle:
        if spec.source is None:
            raise ValueError("a Ray run needs a repository source (a bundle and the base commit)")
        ray = _ray()
        need = demand(spec.limits)
        from corrald.process.ray_actor import RunActor

        remote_cls = ray.remote(RunActor)

        def create() -> Any:
            return remote_cls.options(
                name=actor_name(spec.token),
                namespace=NAMESPACE,
                lifetime="detached",
                num_cpus=need.cpus,
                memory=int(need.memory_mb * 1024 * 1024),
                max_restarts=0,
                max_concurrency=8,
            ).remote(spec)

        actor = await trio.to_thread.run_sync(create, limiter=self._limiter)
        self._placed[spec.agent_id] = need
        return self._adopt(spec, events, actor, next_seq=0)

    def _adopt(self, spec: RunSpec, events: RunEvents, actor: Any, *, next_seq: int) -> RayRun:
        run = RayRun(self, spec, events, actor, next_seq=next_seq)
        self._placed.setdefault(spec.agent_id, demand(spec.limits))
        self._runs[spec.agent_id] = run
        self.hub.add(run)
        self.nursery.start_soon(run.follow)
        return run

    def ended(self, run: RayRun) -> None:
        self._placed.pop(run.agent_id, None)
        self._runs.pop(run.agent_id, None)
        self.hub.discard(run)

    async def reattach(
        self, record: RunAccounting, spec: RunSpec | None = None, events: RunEvents | None = None
    ) -> RunHandle | None:
        """Find the run's actor by name; resume after the last line the log file holds."""
        ray = _ray()

        def find() -> Any:
            try:
                return ray.get_actor(actor_name(record.token), namespace=NAMESPACE)
            except ValueError:
                return None

        actor = await trio.to_thread.run_sync(find, limiter=self._limiter)
        if actor is None:
            await kill_leftovers(record)  # a local run of an earlier configuration
            return None
        if spec is None or events is None:
            await self.kill(actor)
            return None
        last = _last_offset(spec.log_path)
        try:
            next_seq = await self.call(actor.seq_after_log.remote, last)
        except ray.exceptions.RayActorError:
            return None
        run = self._adopt(spec, events, actor, next_seq=next_seq)
        run._offset = last + 1
        return run

    def capacity(self) -> dict[str, Any]:
        placed = list(self._placed.values())
        return {
            "executor": self.name,
            "address": self.address,
            "nodes": [n.to_wire() for n in self.nodes],
            "cores": sum(n.cpus for n in self.nodes),
            "memoryMb": math.floor(sum(n.memory_mb for n in self.nodes)),
            "placedCpus": round(sum(d.cpus for d in placed), 3),
            "placedMemoryMb": math.floor(sum(d.memory_mb for d in placed)),
            "runs": len(self._runs),
        }

    def __repr__(self) -> str:
        return f"RayExecutor({self.address!r}, nodes={len(self.nodes)}, runs={len(self._runs)})"


def _last_offset(path: Path) -> int:
    """The offset of the last line in a run's log file (-1 when it has none)."""
    try:
        with path.open("rb") as fh:
            return sum(1 for _ in fh) - 1
    except OSError:
        return -1

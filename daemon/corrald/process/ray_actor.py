"""What runs inside the Ray actor of one run, on a node: the runner and its numbered events.

This module does not import ray: `process.ray_executor` wraps `RunActor` in
`ray.remote` (a detached, named actor per run). The node needs corral
installed; the runner (`process.runner`) runs here in a thread of its own
under `trio.run`, with the same limits as a local run.

Everything the run reports is kept as numbered items (`seq` from 0), so a
consumer can ask for "everything after n" any number of times: after a
daemon restart the stream resumes from the last item it has, without a gap
and without a repeat. The last `KEEP_ITEMS` items are kept. Live figures
(tokens, cost, activity, CPU, memory) are a snapshot sent with every reply.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any

import trio

from corral.models import AgentActivity, EndReason, ErrorCategory, LogEntry, Violation
from corrald.process.lines import Skipped
from corrald.process.run import AgentRun
from corrald.process.runner import default_scratch, run_from_source
from corrald.process.spec import RunResult, RunSpec

log = logging.getLogger(__name__)

#: Items kept for consumers that come back (a restarted daemon): about 100 MB at most.
KEEP_ITEMS = 200_000
#: Items in one reply at most.
REPLY_ITEMS = 5_000


class _Stream:
    """The run's `RunEvents`: numbered items, and a condition that wakes pollers."""

    def __init__(self) -> None:
        self.items: list[tuple[str, Any]] = []
        self.base = 0  # seq of items[0]
        self.cond = threading.Condition()
        self.now_tokens = 0
        self.now_cost = 0.0
        self.now_activity = AgentActivity.IDLE

    @property
    def next_seq(self) -> int:
        return self.base + len(self.items)

    def _put(self, kind: str, payload: Any) -> None:
        with self.cond:
            self.items.append((kind, payload))
            if len(self.items) > KEEP_ITEMS:
                drop = len(self.items) - KEEP_ITEMS
                del self.items[:drop]
                self.base += drop
            self.cond.notify_all()

    def log(self, entry: LogEntry) -> None:
        self._put("log", entry)

    def log_skipped(self, skipped: Skipped) -> None:
        pass  # the node sends every line (its gate is off); the daemon's own gate sums up

    def activity(self, activity: AgentActivity) -> None:
        self.now_activity = activity
        self._put("state", None)

    def tokens(self, tokens: int, cost: float) -> None:
        self.now_tokens, self.now_cost = tokens, cost
        self._put("state", None)

    def rate_limit(self, reset_at: float | None, detail: str) -> None:
        self._put("rate_limit", (reset_at, detail))

    def violation(self, violation: Violation) -> None:
        self._put("violation", violation)


class RunActor:
    """One run on a node; created by `RayExecutor.submit`, started at once."""

    def __init__(self, spec: RunSpec) -> None:
        # Every line travels to the daemon, which applies its own flood gate.
        self.spec = dataclasses.replace(
            spec, output=dataclasses.replace(spec.output, log_events_per_sec=0)
        )
        self.stream = _Stream()
        self.result: RunResult | None = None
        self.run: AgentRun | None = None
        self.started_at = time.time()
        self._token: trio.lowlevel.TrioToken | None = None
        self._pending_cancel: tuple[EndReason, str, float | None] | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._main, name="corral-run", daemon=True)
        self._thread.start()

    # --- the run ----------------------------------------------------------------------
    def _main(self) -> None:
        try:
            result = trio.run(self._amain)
        except BaseException as exc:  # the actor must answer, whatever broke
            log.exception("run %s failed inside corral", self.spec.agent_id)
            result = RunResult(
                exit_code=None,
                end_reason=EndReason.FAILED,
                error_category=ErrorCategory.INTERNAL,
                error=f"internal error on the node: {type(exc).__name__}: {exc}"[:500],
                tokens=self.stream.now_tokens,
                cost=self.stream.now_cost,
                rate_limited=False,
                rate_limit_reset=None,
                ended_at=time.time(),
            )
        with self.stream.cond:
            self.result = result
            self.stream.cond.notify_all()

    async def _amain(self) -> RunResult:
        self._token = trio.lowlevel.current_trio_token()
        out: list[RunResult] = []

        async def body(*, task_status: trio.TaskStatus[AgentRun | None]) -> None:
            out.append(
                await run_from_source(
                    self.spec,
                    events=self.stream,
                    scratch=default_scratch(),
                    task_status=task_status,
                )
            )

        async with trio.open_nursery() as nursery:
            run = await nursery.start(body)
            with self._lock:
                self.run = run
                pending = self._pending_cancel
            if run is not None and pending is not None:
                run.cancel(pending[0], pending[1], grace=pending[2])
        return out[0]

    # --- the actor's methods (each call runs in a thread of the actor) -----------------
    def poll(self, since: int, wait: float) -> dict[str, Any]:
        """Items from `since` on (waiting up to `wait` s for one), live figures, done or not."""
        stream = self.stream
        deadline = time.monotonic() + wait
        with stream.cond:
            while stream.next_seq <= since and self.result is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                stream.cond.wait(left)
            start = max(since, stream.base)
            items = stream.items[start - stream.base : start - stream.base + REPLY_ITEMS]
            done = self.result is not None and start + len(items) >= stream.next_seq
            run = self.run
            stats = run.stats if run is not None else None
            return {
                "since": start,
                "missed": start - since,  # dropped before this consumer asked (KEEP_ITEMS)
                "items": list(items),
                "next": start + len(items),
                "done": done,
                "tokens": stream.now_tokens,
                "cost": stream.now_cost,
                "activity": stream.now_activity,
                "cpu": stats.cpu_percent if stats else 0.0,
                "memory": stats.memory_mb if stats else 0.0,
                "lifecycle": run.lifecycle if run is not None else None,
                "stage": run.stage if run is not None else None,
            }

    def seq_after_log(self, offset: int) -> int:
        """The seq just after the log line `offset` (where a restarted consumer resumes)."""
        stream = self.stream
        with stream.cond:
            for i, (kind, payload) in enumerate(stream.items):
                if kind == "log" and payload.offset > offset:
                    return stream.base + i
            return stream.next_seq

    def cancel(self, reason: EndReason, detail: str, grace: float | None) -> bool:
        """Stop the run through its ladder (TERM, grace, KILL); False once it has ended."""
        with self._lock:
            run, token = self.run, self._token
            if run is None:
                self._pending_cancel = (reason, detail, grace)
                return self.result is None
        if self.result is not None or token is None:
            return False
        try:
            trio.from_thread.run_sync(
                lambda: run.cancel(reason, detail, grace=grace), trio_token=token
            )
        except trio.RunFinishedError:
            return False
        return True

    def get_result(self) -> RunResult | None:
        """The result (with the branch artifact) once the run has ended, else None."""
        return self.result

    def where(self) -> dict[str, Any]:
        """Where this run is: host and pid of the agent (for the daemon's status)."""
        import socket

        run = self.run
        return {"host": socket.gethostname(), "pid": run.pid if run is not None else None}

"""Agent methods: list and get agents (one per attempt), their logs, stats, violations."""

from __future__ import annotations

from corral import errors
from corral.models import Agent, AgentCheck, CompletedAgent, LogEntry, PoolStats, Violation
from corral.params import AgentRef, ListAgentsParams, LogsParams, NoParams, SessionParams
from corrald.api.context import Call, methods
from corrald.pool.doctor import check_agents


@methods.method()
async def parallel_list_agents(call: Call, p: ListAgentsParams) -> list[Agent]:
    """List a session's agents (every attempt, in the order they started), with live
    CPU/memory for running ones.

    `live: true` lists only running agents (never more than the running
    slots, so it does not page). Paging the full list: `limit` (1-100000)
    returns at most that many; `cursor`, the id of the last agent of the
    previous page, starts after it. A page shorter than `limit` is the last.
    Without either, every agent comes in one answer. Errors: 2001
    AgentNotFound (a `cursor` that names no agent), -32602 for `live` with
    `limit` or `cursor`.
    """
    state = call.session(p.session_id)
    if p.live:
        if p.limit is not None or p.cursor is not None:
            raise errors.InvalidParams(
                "live agents are not paged: give limit/cursor without live",
                {"errors": [{"loc": "live", "msg": "not with limit or cursor", "type": "value"}]},
            )
        return call.pool.live_agents(state)
    page = call.engine.agents(state.id, cursor=p.cursor, limit=p.limit)
    return [call.pool.view(a) for a in page]


@methods.method()
async def parallel_get_agent(call: Call, p: AgentRef) -> Agent:
    """Return one agent (one attempt) by id, live figures included. Errors: 2001."""
    return call.pool.view(call.engine.agent(p.agent_id))


@methods.method()
async def parallel_get_pool_stats(call: Call, p: SessionParams) -> PoolStats:
    """Running agents, their summed CPU and memory, against the session's limits.

    The seed's `{runningAgents, maxAgents, totalCpuUsage, maxTotalCpu,
    totalMemoryMb, maxTotalMemoryMb}` are there; CPU is in percent of one
    core, as `maxTotalCpu` is.

    With a cluster executor (`[executor] kind = "ray"`), `executor` also
    gives the cluster's alive nodes (CPUs, memory) and what corral's runs
    hold of them (`placedCpus`, `placedMemoryMb`); absent for the local one.
    """
    return call.pool.pool_stats(call.session(p.session_id))


@methods.method()
async def parallel_check_violations(call: Call, p: SessionParams) -> list[str]:
    """Limit violations seen (newest last), one readable sentence each: the seed's `string[]`.

    `parallel_list_violations` has the same violations as structured records.
    """
    return [v.sentence() for v in call.engine.session_violations(call.session(p.session_id))]


@methods.method()
async def parallel_list_violations(call: Call, p: SessionParams) -> list[Violation]:
    """Limit violations seen (newest last): kind, measured value, limit and the action taken.

    Kinds: timeout, limit_memory, limit_cpu (per agent), total_memory (session).
    """
    return call.engine.session_violations(call.session(p.session_id))


@methods.method()
async def parallel_get_agent_logs(call: Call, p: LogsParams) -> list[LogEntry]:
    """An agent's output lines from `offset` (line number), at most `limit`.

    Each is the seed's LogEntry `{timestamp, level, message}` plus corral's
    `offset` and `stream`. `level` comes from the stream: stdout is `info`,
    stderr `warn` (agents write progress and warnings there, not only
    errors), corral's own notes about the run (`stream: daemon`: limits,
    kills, truncation) `debug`; `error` is never derived from a stream.
    Lines come from the in-memory ring while it holds them, else from the
    agent's log file (capped in size), where they have no time of their own
    (`timestamp` is the epoch). Errors: 2001 AgentNotFound.
    """
    return call.pool.logs(call.engine.agent(p.agent_id), p.offset, p.limit)


#: Lines of output each CompletedAgent carries (the tail; the rest by parallel_get_agent_logs).
COMPLETED_LOG_TAIL = 50


@methods.method()
async def parallel_poll_completed(call: Call, p: NoParams) -> list[CompletedAgent]:
    """Agents that finished since this connection last asked (all kept ones at first).

    Each is the seed's CompletedAgent `{agentId, taskId, processId, exitCode,
    logs}` plus how it ended; `logs` holds the last lines of its output
    (at most 50, while the daemon keeps them in memory).
    """
    done, call.conn.state.poll_cursor = call.engine.poll_completed(call.conn.state.poll_cursor)
    return [
        c.model_copy(update={"logs": call.pool.tail(c.agent_id, COMPLETED_LOG_TAIL)}) for c in done
    ]


@methods.method()
async def agents_check(call: Call, p: NoParams) -> list[AgentCheck]:
    """Check every agent type, builtin and configured, as this daemon would run it.

    Per type: `executable` (argv[0]), `path` (found on the daemon's PATH, or
    null), `version` (from `--version`), `verified` (the release corral's
    builtin argv was run against), and `status`: `ok` (that release),
    `missing`, `unknown_version` (another or unreadable version: the argv may
    not fit), `unverified` (a custom type, or a builtin no release was
    verified for), `no_argv` (`command` without a table); `detail` says why.
    `corral doctor` prints this.
    """
    return await check_agents(call.pool.custom_types, call.pool.base_env)

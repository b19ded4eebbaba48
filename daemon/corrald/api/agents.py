"""Agent methods: list and get agents (one per attempt), their logs, stats, violations."""

from __future__ import annotations

from corral.models import Agent, CompletedAgent, LogEntry, PoolStats, Violation
from corral.params import AgentRef, ListAgentsParams, LogsParams, NoParams, SessionParams
from corrald.api.context import Call, methods


@methods.method()
async def parallel_list_agents(call: Call, p: ListAgentsParams) -> list[Agent]:
    """List a session's agents (every attempt), with live CPU/memory for running ones.

    `live: true` lists only running agents.
    """
    state = call.session(p.session_id)
    if p.live:
        return call.pool.live_agents(state)
    return [call.pool.view(a) for a in call.engine.agents(state.id)]


@methods.method()
async def parallel_get_agent(call: Call, p: AgentRef) -> Agent:
    """Return one agent (one attempt) by id, live figures included. Errors: 2001."""
    return call.pool.view(call.engine.agent(p.agent_id))


@methods.method()
async def parallel_get_pool_stats(call: Call, p: SessionParams) -> PoolStats:
    """Running agents, their summed CPU and memory, against the session's limits.

    With a cluster executor (`[executor] kind = "ray"`), `executor` also
    gives the cluster's alive nodes (CPUs, memory) and what corral's runs
    hold of them (`placedCpus`, `placedMemoryMb`); absent for the local one.
    """
    return call.pool.pool_stats(call.session(p.session_id))


@methods.method()
async def parallel_check_violations(call: Call, p: SessionParams) -> list[Violation]:
    """Limit violations seen (newest last): kind, measured value, limit and the action taken.

    Kinds: timeout, limit_memory, limit_cpu (per agent), total_memory (session).
    """
    return call.engine.session_violations(call.session(p.session_id))


@methods.method()
async def parallel_get_agent_logs(call: Call, p: LogsParams) -> list[LogEntry]:
    """An agent's output lines from `offset` (line number), at most `limit`.

    Lines come from the in-memory ring while it holds them, else from the
    agent's log file (capped in size). Errors: 2001 AgentNotFound.
    """
    return call.pool.logs(call.engine.agent(p.agent_id), p.offset, p.limit)


@methods.method()
async def parallel_poll_completed(call: Call, p: NoParams) -> list[CompletedAgent]:
    """Agents that finished since this connection last asked (all kept ones at first)."""
    done, call.conn.state.poll_cursor = call.engine.poll_completed(call.conn.state.poll_cursor)
    return done

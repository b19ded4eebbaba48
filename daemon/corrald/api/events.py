"""Event subscription: pushes on the calling connection, resumable with `sinceSeq`."""

from __future__ import annotations

from corral import errors
from corral.models import SubscribeResult
from corral.params import SubscribeParams, UnsubscribeParams
from corrald.api.context import Call, methods
from corrald.state.events import Record, pump

_EVENT_HEAD = b'{"jsonrpc":"2.0","method":"event","params":'


@methods.method()
async def events_subscribe(call: Call, p: SubscribeParams) -> SubscribeResult:
    """Push events to this connection as `event` notifications `{seq, type, sessionId, payload}`.

    Params: `topics` (event types or their prefixes: `task`, `agent`, `log`,
    `violation`, `conflicts`, `merge`, `session`; all if omitted), `sessionId`
    (only that session's events), `agentId` (only events about that agent,
    whose payload names it: its output lines, status, activity, tokens,
    violations; an agent's log view needs no other run's lines), `sinceSeq`
    (the last seq the client saw: events after it are replayed first, then
    live ones follow).
    Result: `{subscriptionId, seq, oldest}`: the newest seq now and the oldest
    kept. A subscriber whose queue overflows gets a `lagged` notification and
    is dropped; resuming with `sinceSeq` then misses nothing.
    Errors: 6001 EventsExpired when `sinceSeq` is outside the kept window
    (`data.oldest` says how far back it goes).
    """
    engine, conn = call.engine, call.conn
    sub = engine.subscribe(p.topics, p.session_id, p.since_seq, p.agent_id)
    conn.state.subscriptions.add(sub.id)
    conn.on_close.append(lambda: engine.unsubscribe(sub.id))

    async def deliver(events: list[Record]) -> bool:
        return await conn.send_wrapped(_EVENT_HEAD, [e.data for e in events], b"}")

    async def lagged() -> None:
        await conn.notify(
            "lagged",
            {
                "subscriptionId": sub.id,
                "lastSeq": engine.event_seq,
                "oldest": engine.oldest_event,
                "reason": "subscriber queue overflowed; resubscribe with sinceSeq",
            },
        )

    async def deliver_all() -> None:
        await pump(sub, deliver, lagged)

    conn.push(deliver_all)
    return SubscribeResult(subscription_id=sub.id, seq=engine.event_seq, oldest=engine.oldest_event)


@methods.method()
async def events_unsubscribe(call: Call, p: UnsubscribeParams) -> bool:
    """Stop a subscription made on this connection. Errors: 6002 SubscriptionNotFound."""
    mine = call.conn.state.subscriptions
    if p.subscription_id not in mine or not call.engine.unsubscribe(p.subscription_id):
        raise errors.SubscriptionNotFound(data={"subscriptionId": p.subscription_id})
    mine.discard(p.subscription_id)
    return True

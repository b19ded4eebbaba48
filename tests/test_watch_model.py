"""How a view applies events to its rows (`corral.watch.model`): pure, no daemon."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from corral.models import Agent, AgentActivity, AgentLifecycle, Event, Task, TaskState, Violation
from corral.watch.model import LIVE, MANY, Needs, Rows, apply, latest


@dataclass
class View:
    tasks: Rows[Task] = field(default_factory=Rows)
    agents: Rows[Agent] = field(default_factory=Rows)
    violations: list[Violation] = field(default_factory=list)


def ev(type_: str, **payload: Any) -> Event:
    return Event(seq=1, type=type_, session_id="s", payload=payload)


def view() -> View:
    return View(
        tasks=Rows([Task(id="a", title="a", state=TaskState.READY), Task(id="b", title="b")]),
        agents=Rows(
            [
                Agent(
                    id="g1",
                    session_id="s",
                    task_id="a",
                    agent_type="fake",
                    lifecycle=AgentLifecycle.RUNNING,
                    started_at=1.0,
                    branch="corral/a",
                )
            ]
        ),
    )


def test_a_task_event_patches_its_row_and_asks_for_the_rest() -> None:
    v = view()
    before = v.tasks.version
    needs = apply(v, ev("task.status", taskId="a", state="failed", attempts=2, error="boom"))
    a = v.tasks.get("a")
    assert a is not None and (a.state, a.attempts, a.error) == (TaskState.FAILED, 2, "boom")
    assert a.title == "a" and [t.id for t in v.tasks] == ["a", "b"]  # in place, order kept
    assert v.tasks.version > before
    # The row is right for what the event says; the task itself and the counts are fetched.
    assert needs.changed and needs.tasks == {"a"} and needs.parts == {"stats"}
    # A null field is left out of the payload: the error is cleared.
    apply(v, ev("task.status", taskId="a", state="ready", attempts=2))
    assert v.tasks.get("a") is not None and v.tasks.get("a").error is None  # type: ignore[union-attr]


def test_completion_and_integration_ask_for_their_parts() -> None:
    v = view()
    done = apply(v, ev("task.status", taskId="a", state="completed", attempts=1))
    assert "conflicts" in done.parts  # a new branch to compare
    way_in = apply(v, ev("task.status", taskId="a", state="completed", integrationStatus="queued"))
    assert "integration" in way_in.parts and "conflicts" not in way_in.parts


def test_an_unknown_task_is_fetched_whole_and_not_guessed() -> None:
    v = view()
    needs = apply(v, ev("task.status", taskId="new", state="ready"))
    assert v.tasks.get("new") is None and needs.tasks == {"new"} and not needs.changed


def test_tokens_and_activity_patch_the_agent_without_any_fetch() -> None:
    v = view()
    needs = apply(v, ev("agent.tokens", agentId="g1", taskId="a", tokens=120, cost=0.5))
    needs.update(apply(v, ev("agent.activity", agentId="g1", taskId="a", activity="testing")))
    g1 = v.agents.get("g1")
    assert g1 is not None and (g1.tokens, g1.cost, g1.status) == (120, 0.5, AgentActivity.TESTING)
    assert g1.branch == "corral/a"  # the rest of the row kept
    assert needs.changed and not needs


def test_agent_status_news_and_ends() -> None:
    v = view()
    started = apply(v, ev("agent.status", agentId="g2", taskId="b", lifecycle="starting"))
    assert started.agents == {"g2"} and LIVE in started.parts and v.agents.get("g2") is None
    # A view of running agents drops an ended one; a view of every attempt asks for its end.
    ended = ev("agent.status", agentId="g1", taskId="a", lifecycle="exited", endReason="ok")
    w = view()
    apply(v, ended, keep_ended=False)
    assert v.agents.get("g1") is None
    kept = apply(w, ended, keep_ended=True)
    g1 = w.agents.get("g1")
    assert g1 is not None and g1.lifecycle is AgentLifecycle.EXITED and kept.agents == {"g1"}


def test_payloads_a_view_cannot_read_are_fetched_instead_never_raised() -> None:
    v = view()
    for bad in (
        ev("agent.activity", agentId="g1", activity="dancing"),
        ev("agent.tokens", agentId="g1", tokens="many", cost=None),
        ev("agent.status", agentId="g1", lifecycle=7),
        ev("agent.status", agentId="g1", lifecycle="exited", endReason="vanished"),
    ):
        assert apply(v, bad).agents == {"g1"}
    g1 = v.agents.get("g1")
    assert g1 is not None and g1.status is AgentActivity.IDLE and g1.tokens == 0
    needs = apply(v, ev("task.status", taskId="a", state="exploded"))
    assert needs.tasks == {"a"} and v.tasks.get("a").state is TaskState.READY  # type: ignore[union-attr]
    for nothing in (
        ev("task.status"),
        ev("agent.tokens", tokens=3),
        ev("log", agentId="g1", line="x"),
        ev("worktree.allocated"),
        ev("something.new", x=1),
    ):
        assert not apply(v, nothing) and not apply(v, nothing).changed


def test_a_violation_is_appended_and_other_news_names_its_part() -> None:
    v = view()
    violation = Violation(
        agent_id="g1", task_id="a", kind="limit_cpu", value=90, limit=50, action="killed", at=5.0
    )
    needs = apply(v, ev("violation", **violation.to_wire()))
    assert v.violations == [violation] and needs.changed
    assert apply(v, ev("violation", nonsense=True)).parts == {"violations"}
    assert apply(v, ev("session.status", status="paused")).parts >= {"session", "stats"}
    assert apply(v, ev("integration.batch")).parts == {"integration"}
    assert apply(v, ev("merge.completed")).parts == {"conflicts", "integration"}


def test_a_round_of_many_rows_asks_for_the_whole_list() -> None:
    needs = Needs(tasks={f"t{i}" for i in range(MANY + 1)}, agents={"g1"})
    taken = needs.take()
    assert taken.parts == {"tasks"} and not taken.tasks and taken.agents == {"g1"}
    assert not needs and not needs.changed  # taken: nothing left for the next round


def test_rows_replace_put_and_drop_keep_the_index() -> None:
    rows = Rows([Task(id="a", title="1"), Task(id="b", title="2")])
    rows.put(Task(id="a", title="one"))
    rows.put(Task(id="c", title="3"))
    rows.drop("b")
    assert [(t.id, t.title) for t in rows] == [("a", "one"), ("c", "3")]
    assert rows.get("c") is rows[1] and rows.get("b") is None and len(rows) == 2
    rows.drop("absent")
    rows.replace([Task(id="z", title="z")])
    assert [t.id for t in rows] == ["z"] and rows.get("a") is None


def test_latest_keeps_the_last_figure_of_each_agent_and_every_other_event() -> None:
    events = [
        ev("agent.tokens", agentId="g1", tokens=1, cost=0.0),
        ev("agent.activity", agentId="g1", activity="reading"),
        ev("task.status", taskId="a", state="in_progress"),
        ev("agent.tokens", agentId="g2", tokens=5, cost=0.0),
        ev("agent.tokens", agentId="g1", tokens=2, cost=0.1),
        ev("agent.activity", agentId="g1", activity="testing"),
    ]
    assert latest(events) == [events[2], events[3], events[4], events[5]]
    every, last = view(), view()
    for e in events:
        apply(every, e)
    for e in latest(events):
        apply(last, e)
    assert list(every.agents) == list(last.agents) and list(every.tasks) == list(last.tasks)

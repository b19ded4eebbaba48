"""Run tests/fake_agent.py with the arguments a plan file gives for this task.

The daemon starts agents with one argv template for every task; this wrapper
looks up `$CORRAL_TASK_ID` in a JSON plan (`{"task-id": [args...], "*": [...]}`)
so one session can mix behaviours: success, crash, memory hog, rate limit.
`{attempt}`-keyed entries (`"task-id#2"`) select behaviour for a given attempt,
counted in a file beside the plan.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

FAKE = Path(__file__).with_name("fake_agent.py")


def main() -> None:
    plan_path = Path(sys.argv[1])
    plan: dict[str, list[str]] = json.loads(plan_path.read_text())
    task = os.environ.get("CORRAL_TASK_ID", "")
    counter = plan_path.with_name(f".{plan_path.name}.{task}.attempts")
    attempt = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(attempt))
    args = plan.get(f"{task}#{attempt}", plan.get(task, plan.get("*", [])))
    os.execv(sys.executable, [sys.executable, str(FAKE), *args])


if __name__ == "__main__":
    main()

"""`corral doctor`: is each agent type's CLI there, and is its argv known to work?

Pure: the pool finds the executable and runs ``--version``; this module reads
the answer and judges it against the version the builtin argv was verified with.
"""

from __future__ import annotations

import re

from corral.models import AgentCheck, AgentCheckStatus
from corrald.agents.types import AgentType

_VERSION_RE = re.compile(r"\b(\d+\.\d+(?:\.\d+)?(?:[-+.][0-9A-Za-z.]+)?)\b")


def parse_version(text: str) -> str | None:
    """The first version number in a CLI's ``--version`` output ("codex-cli 0.171.0")."""
    m = _VERSION_RE.search(text)
    return m.group(1) if m else None


def judge(t: AgentType, path: str | None, version_output: str | None) -> AgentCheck:
    """One agent type's verdict from where its executable is and what it said."""
    executable = t.argv[0] if t.argv else None
    base = AgentCheck(agent_type=t.name, executable=executable, path=path, verified=t.verified)
    if executable is None:
        return base.model_copy(
            update={"status": AgentCheckStatus.NO_ARGV, "detail": "no argv configured"}
        )
    if path is None:
        return base.model_copy(
            update={
                "status": AgentCheckStatus.MISSING,
                "detail": f"{executable!r} is not on the daemon's PATH",
            }
        )
    version = parse_version(version_output or "")
    base = base.model_copy(update={"version": version})
    if t.verified is None:
        return base.model_copy(
            update={
                "status": AgentCheckStatus.UNVERIFIED,
                "detail": "corral has not run this argv against a known release",
            }
        )
    if version == t.verified:
        return base.model_copy(
            update={"status": AgentCheckStatus.OK, "detail": f"argv verified with {t.verified}"}
        )
    said = (version_output or "").strip().splitlines()
    return base.model_copy(
        update={
            "status": AgentCheckStatus.UNKNOWN_VERSION,
            "detail": (
                f"argv verified with {t.verified}, this is "
                + (version or f"unreadable ({said[0][:80] if said else 'no output'})")
                + "; override it with an [agents."
                + t.name
                + "] table if it fails"
            ),
        }
    )

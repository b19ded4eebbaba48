"""A fake coding agent: a real program whose behaviour is set by its arguments.

Used by the supervisor tests and the benchmark. Options combine freely; the
order of effects is: pidfile, signal setup, grandchildren, stdin echo, output
(raw files, stream-json, rate limit, edits, marker, flood), CPU spin, sleep (or
chatter: a stream-json step every SECS while it lasts), exit.

Every process it creates appends ``pid start_ticks role`` to --pidfile so
tests can check death by pid + start time (immune to pid reuse).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def start_ticks(pid: int | str = "self") -> int:
    """When a process started, in clock ticks since boot: its identity with its pid."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        data = fh.read()
    return int(data[data.rfind(b")") + 2 :].split()[19])


def record(pidfile: str | None, role: str) -> None:
    """Append `pid start_ticks role` to the pidfile (tests check death by both)."""
    if not pidfile:
        return
    with open(pidfile, "a") as fh:
        fh.write(f"{os.getpid()} {start_ticks()} {role}\n")


def sleep_forever() -> None:
    while True:
        time.sleep(3600)


def fork_grandchild(
    pidfile: str | None, role: str, *, ignore_term: bool, setsid: bool, mem_mb: int
) -> None:
    """Fork a child that never exits on its own."""
    pid = os.fork()
    if pid:
        return
    try:
        if setsid:
            os.setsid()
        if ignore_term:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        record(pidfile, role)
        if mem_mb:
            hog = bytearray(b"\x01") * (mem_mb * 1024 * 1024)  # touched pages: real RSS
            assert hog
            record(pidfile, f"{role}-full")
        sleep_forever()
    finally:
        os._exit(0)


def stream_json(args: argparse.Namespace) -> None:
    out: list[dict[str, object]] = [
        {
            "type": "system",
            "subtype": "init",
            "session_id": "3f2a4290-0429-4d1c-a429-5b9e1c2d4290",
            "tools": ["Read", "Edit", "Bash"],
            "model": "claude-sonnet-4-5",
        }
    ]
    tools = [
        ("Read", {"file_path": "README.md"}),
        ("Edit", {"file_path": "a.py", "old_string": "x", "new_string": "y"}),
        ("Bash", {"command": "python -m pytest -q"}),
    ]
    per = args.tokens // 4
    for i, (name, tool_input) in enumerate(tools):
        out.append(
            {
                "type": "assistant",
                "message": {
                    "id": f"msg_{i}",
                    "type": "message",
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": f"Step {i}"},
                        {"type": "tool_use", "id": f"toolu_{i}", "name": name, "input": tool_input},
                    ],
                    "usage": {"input_tokens": per - 1, "output_tokens": 1},
                },
                "session_id": "3f2a4290-0429-4d1c-a429-5b9e1c2d4290",
            }
        )
    if args.rate_limit_resets_at is not None:
        out.append(
            {
                "type": "rate_limit_event",
                "rate_limit_info": {
                    "status": "rejected",
                    "resetsAt": args.rate_limit_resets_at,
                    "rateLimitType": "five_hour",
                },
            }
        )
    out.append(
        {
            "type": "result",
            "subtype": "success",
            "is_error": False,
            "result": f"done {args.print_marker or ''}".strip(),
            "total_cost_usd": args.cost,
            "usage": {"input_tokens": args.tokens - per, "output_tokens": per},
            "session_id": "3f2a4290-0429-4d1c-a429-5b9e1c2d4290",
        }
    )
    for obj in out:
        print(json.dumps(obj), flush=True)


def chatter(secs: float, every: float) -> None:
    """Work steadily for `secs`: a stream-json step (a tool call, 10 tokens) every `every` s."""
    tools = ["Read", "Edit", "Bash"]
    start = time.monotonic()
    n = 0
    while (left := start + secs - time.monotonic()) > 0:
        step = {
            "type": "assistant",
            "message": {
                "id": f"msg_c{n}",
                "type": "message",
                "role": "assistant",
                "content": [{"type": "tool_use", "id": f"toolu_c{n}", "name": tools[n % 3]}],
                "usage": {"input_tokens": 9, "output_tokens": 1},
            },
        }
        print(json.dumps(step), flush=True)
        n += 1
        time.sleep(min(left, max(0.0, start + n * every - time.monotonic())))


def resolve_markers() -> None:
    """Resolve every git conflict in the work tree by keeping both sides, ours first."""
    out = subprocess.run(
        ["git", "diff", "--name-only", "--diff-filter=U"],
        capture_output=True,
        text=True,
        check=True,
    )
    for name in out.stdout.split():
        kept: list[str] = []
        for line in Path(name).read_text().splitlines(keepends=True):
            if not line.startswith(("<<<<<<<", "=======", ">>>>>>>")):
                kept.append(line)
        Path(name).write_text("".join(kept))
        print(f"resolved {name}", flush=True)


def flood(mb: int) -> None:
    line = b"x" * 1023 + b"\n"
    block = line * 1024  # 1 MiB
    for _ in range(mb):
        sys.stdout.buffer.write(block)
    sys.stdout.buffer.flush()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--exit", type=int, default=0)
    ap.add_argument("--pidfile")
    ap.add_argument("--stream-json", action="store_true")
    ap.add_argument("--tokens", type=int, default=0)
    ap.add_argument("--cost", type=float, default=0.0)
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--chatter", type=float, default=0.0, metavar="SECS")
    ap.add_argument("--ignore-sigterm", action="store_true")
    ap.add_argument("--grandchild-ignore-sigterm", action="store_true")
    ap.add_argument("--setsid-escape", action="store_true")
    ap.add_argument("--grandchild-mem", type=int, default=0, metavar="MB")
    ap.add_argument("--spin-cpu", type=float, default=0.0, metavar="SECS")
    ap.add_argument("--flood-mb", type=int, default=0)
    ap.add_argument("--long-line", type=int, default=0, metavar="BYTES")
    ap.add_argument("--edit", action="append", default=[], metavar="FILE=TEXT")
    ap.add_argument("--rate-limit-resets-at", type=float, default=None, metavar="EPOCH")
    ap.add_argument("--print-marker")
    ap.add_argument("--stdout", action="append", default=[])
    ap.add_argument("--line-delay", type=float, default=0.0, metavar="SECS")
    ap.add_argument("--stderr", action="append", default=[])
    ap.add_argument("--echo-stdin", action="store_true")
    ap.add_argument(
        "--cat", action="append", default=[], metavar="FILE", help="raw bytes to stdout"
    )
    ap.add_argument("--require", action="append", default=[], metavar="FILE")
    ap.add_argument("--delete", action="append", default=[], metavar="FILE")
    ap.add_argument("--resolve-markers", action="store_true", help="keep both sides of conflicts")
    args = ap.parse_args()

    record(args.pidfile, "agent")
    for name in args.require:  # e.g. a dependency's work must be in this worktree
        if not Path(name).exists():
            print(f"required file {name} is missing", file=sys.stderr, flush=True)
            return 3
    if args.resolve_markers:
        resolve_markers()
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.grandchild_ignore_sigterm:
        fork_grandchild(args.pidfile, "grandchild", ignore_term=True, setsid=False, mem_mb=0)
    if args.setsid_escape:
        fork_grandchild(args.pidfile, "escaped", ignore_term=True, setsid=True, mem_mb=0)
    if args.grandchild_mem:
        fork_grandchild(
            args.pidfile, "hog", ignore_term=False, setsid=False, mem_mb=args.grandchild_mem
        )
    if args.echo_stdin:
        for line in sys.stdin:
            print(f"stdin: {line.rstrip()}", flush=True)
    for text in args.stdout:
        print(text, flush=True)
        if args.line_delay:
            time.sleep(args.line_delay)
    for text in args.stderr:
        print(text, file=sys.stderr, flush=True)
    for name in args.cat:
        sys.stdout.buffer.write(Path(name).read_bytes())
        sys.stdout.buffer.flush()
    if args.stream_json:
        stream_json(args)
    elif args.rate_limit_resets_at is not None:
        print(
            "Error: 429 Too Many Requests: rate limit exceeded, resets at"
            f" {int(args.rate_limit_resets_at)}",
            file=sys.stderr,
            flush=True,
        )
    for spec in args.edit:
        name, _, text = spec.partition("=")
        Path(name).write_text(text)
    for name in args.delete:
        Path(name).unlink(missing_ok=True)
    if args.print_marker and not args.stream_json:
        print(args.print_marker, flush=True)
    if args.long_line:
        sys.stdout.buffer.write(b"y" * args.long_line + b"\n")
        sys.stdout.buffer.flush()
    if args.flood_mb:
        flood(args.flood_mb)
    if args.spin_cpu:
        end = time.monotonic() + args.spin_cpu
        while time.monotonic() < end:
            pass
    if args.sleep and args.chatter:
        chatter(args.sleep, args.chatter)
    elif args.sleep:
        time.sleep(args.sleep)
    return int(args.exit)


if __name__ == "__main__":
    sys.exit(main())

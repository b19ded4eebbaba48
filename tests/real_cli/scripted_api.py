"""A scripted model API on 127.0.0.1 for the real agent CLIs.

It speaks just enough of two wire protocols for a real CLI to run a whole
turn against it: the Anthropic Messages API with SSE streaming (claude, via
``ANTHROPIC_BASE_URL``) and the OpenAI Responses API with SSE (codex, via a
``model_providers`` entry). The model is a script, not a model: it reads the
task's prompt for a line ``SCRIPT {"file": ..., "content": ..., "test": ...}``
and answers, turn by turn:

1. some text, then the CLI's write tool creating ``file`` with ``content``;
2. the CLI's shell tool running ``test`` (an argv list);
3. a final text, and the end of the turn.

Every answer carries a usage block, so the CLI's own result event has
tokens (and, for claude, a cost) to compare with corral's figures.
``mode`` switches the whole server to an error: ``"429"`` answers every
call with HTTP 429 and a ``retry-after`` of ``retry_after`` seconds;
``"refuse"`` answers every model call with HTTP 400 at once;
``"reset"`` with the subscription headers that make claude report a
``rate_limit_event`` with ``resetsAt``. Requests are kept in ``requests``
(method, path, body) for the tests to read.

Run ``python -m tests.real_cli.scripted_api PORTFILE`` to serve until killed
(the port is written to PORTFILE).
"""

from __future__ import annotations

import json
import re
import shlex
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

_SCRIPT_RE = re.compile(r"SCRIPT (\{.*?\})\s*$", re.M)

#: Usage the script reports per model call (claude sums these into its result).
INPUT_TOKENS = 120
OUTPUT_TOKENS = 30


def _script_of(text: str) -> dict[str, Any] | None:
    m = _SCRIPT_RE.search(text)
    if m is None:
        return None
    try:
        value = json.loads(m.group(1))
    except ValueError:  # a copy of the prompt cut short (a title request, say)
        return None
    return value if isinstance(value, dict) else None


def _texts(value: Any) -> list[str]:
    """Every string inside a JSON value (prompts hide in nested content blocks)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _texts(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _texts(v)]
    return []


class ScriptedApi:
    """The server: start it, point the CLIs at ``url``, read ``requests``."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.retry_after = 3600
        self.reset_at: float | None = None
        self.requests: list[tuple[str, str, dict[str, Any]]] = []
        self.calls = 0
        self._lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                api._record("GET", self.path, {})
                body = b'{"data": [], "object": "list"}'
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_HEAD(self) -> None:
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {}
                api._record("POST", self.path, body if isinstance(body, dict) else {})
                api._answer(self, self.path, body if isinstance(body, dict) else {})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedApi:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _record(self, method: str, path: str, body: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append((method, path, body))

    # --- answers ------------------------------------------------------------------
    def _answer(self, h: BaseHTTPRequestHandler, path: str, body: dict[str, Any]) -> None:
        route = path.split("?")[0]
        if route.endswith("/count_tokens"):
            return _json(h, 200, {"input_tokens": INPUT_TOKENS})
        if self.mode == "refuse":
            err = {"type": "error", "error": {"type": "invalid_request_error", "message": "no"}}
            return _json(h, 400, err)
        if self.mode == "429":
            return _json(
                h,
                429,
                {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}},
                {"retry-after": str(self.retry_after), "x-should-retry": "false"},
            )
        if route.endswith("/chat/completions"):
            with self._lock:
                self.calls += 1
            return self._chat(h, body)
        if route.endswith("/messages"):
            with self._lock:
                self.calls += 1
            return self._anthropic(h, body)
        if route.endswith("/responses"):
            with self._lock:
                self.calls += 1
            return self._openai(h, body)
        if ":streamGenerateContent" in route or ":generateContent" in route:
            with self._lock:
                self.calls += 1
            return self._gemini(h, body, stream=":stream" in route)
        return _json(h, 404, {"error": {"message": f"no route {route}"}})

    def _anthropic(self, h: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        messages = body.get("messages") or []
        script = next(
            (s for s in map(_script_of, _texts(messages)) if s is not None),
            None,
        )
        step = sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "assistant")
        headers: dict[str, str] = {}
        if self.mode == "reset" and self.reset_at is not None:
            headers = {
                "anthropic-ratelimit-unified-status": "rejected",
                "anthropic-ratelimit-unified-reset": str(int(self.reset_at)),
                "anthropic-ratelimit-unified-representative-claim": "five_hour",
                "retry-after": str(max(1, int(self.reset_at - time.time()))),
            }
            err = {"type": "error", "error": {"type": "rate_limit_error", "message": "limit"}}
            return _json(h, 429, err, headers)
        blocks: list[dict[str, Any]]
        stop = "tool_use"
        if script is None or not body.get("tools"):
            blocks, stop = [{"type": "text", "text": "ok"}], "end_turn"
        elif step == 0:
            blocks = [
                {"type": "text", "text": "I will write the file first."},
                {
                    "type": "tool_use",
                    "id": "toolu_write",
                    "name": "Write",
                    "input": {"file_path": script["file"], "content": script["content"]},
                },
            ]
        elif step == 1:
            blocks = [
                {
                    "type": "tool_use",
                    "id": "toolu_test",
                    "name": "Bash",
                    "input": {
                        "command": shlex.join(script["test"]),
                        "description": "Run the tests",
                    },
                }
            ]
        else:
            blocks, stop = [{"type": "text", "text": "Done: the file is written."}], "end_turn"
        _sse_anthropic(h, body.get("model") or "claude-scripted", blocks, stop)

    def _gemini(self, h: BaseHTTPRequestHandler, body: dict[str, Any], *, stream: bool) -> None:
        contents = body.get("contents") or []
        script = next((s for s in map(_script_of, _texts(contents)) if s is not None), None)
        step = sum(1 for c in contents if isinstance(c, dict) and c.get("role") == "model")
        names = {
            str(f.get("name"))
            for t in body.get("tools") or []
            if isinstance(t, dict)
            for f in t.get("functionDeclarations") or []
            if isinstance(f, dict)
        }
        parts: list[dict[str, Any]]
        if script is None or "write_file" not in names:
            parts = [{"text": "ok"}]
        elif step == 0:
            args = {"file_path": script["file"], "content": script["content"]}
            parts = [
                {"text": "I will write the file first."},
                {"functionCall": {"name": "write_file", "args": args}},
            ]
        elif step == 1:
            command = shlex.join(script["test"])
            parts = [{"functionCall": {"name": "run_shell_command", "args": {"command": command}}}]
        else:
            parts = [{"text": "Done: the file is written."}]
        chunk = {
            "candidates": [
                {"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}
            ],
            "usageMetadata": {
                "promptTokenCount": INPUT_TOKENS,
                "candidatesTokenCount": OUTPUT_TOKENS,
                "totalTokenCount": INPUT_TOKENS + OUTPUT_TOKENS,
            },
            "modelVersion": "gemini-scripted",
        }
        if not stream:
            return _json(h, 200, chunk)
        _start_sse(h)
        h.wfile.write(f"data: {json.dumps(chunk)}\r\n\r\n".encode())
        h.wfile.flush()

    def _chat(self, h: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        """OpenAI Chat Completions (qwen, aider): gemini-cli's tool names (qwen's)."""
        messages = body.get("messages") or []
        script = next((s for s in map(_script_of, _texts(messages)) if s is not None), None)
        step = sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "assistant")
        names = {
            str((t.get("function") or {}).get("name"))
            for t in body.get("tools") or []
            if isinstance(t, dict)
        }
        text, call = "Done: the file is written.", None
        if script is None or "write_file" not in names:
            text = "ok"
        elif step == 0:
            args = {"file_path": script["file"], "content": script["content"]}
            text, call = "I will write the file first.", ("write_file", args)
        elif step == 1:
            text, call = "", ("run_shell_command", {"command": shlex.join(script["test"])})
        usage = {
            "prompt_tokens": INPUT_TOKENS,
            "completion_tokens": OUTPUT_TOKENS,
            "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS,
        }
        model = body.get("model") or "scripted"
        cid = f"chatcmpl-{next(_msg_seq)}"
        tool_calls = []
        if call is not None:
            fn = {"name": call[0], "arguments": json.dumps(call[1])}
            tool_calls = [{"index": 0, "id": f"call_{call[0]}", "type": "function", "function": fn}]
        finish = "tool_calls" if call else "stop"
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": text or None}
            if tool_calls:
                message["tool_calls"] = [
                    {k: v for k, v in c.items() if k != "index"} for c in tool_calls
                ]
            choice = {"index": 0, "message": message, "finish_reason": finish}
            reply = {"id": cid, "object": "chat.completion", "model": model, "choices": [choice]}
            return _json(h, 200, {**reply, "usage": usage})
        _start_sse(h)
        head = {"id": cid, "object": "chat.completion.chunk", "created": 0, "model": model}
        deltas: list[dict[str, Any]] = [{"role": "assistant", "content": text}]
        if tool_calls:
            deltas.append({"tool_calls": tool_calls})
        for delta in deltas:
            chunk = {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            h.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        last = {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}
        h.wfile.write(f"data: {json.dumps({**last, 'usage': usage})}\n\ndata: [DONE]\n\n".encode())
        h.wfile.flush()

    def _openai(self, h: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        items = body.get("input") or []
        script = next((s for s in map(_script_of, _texts(items)) if s is not None), None)
        step = sum(
            1
            for i in items
            if isinstance(i, dict) and i.get("type") in ("function_call", "custom_tool_call")
        )
        tools = {
            str(t.get("name")): t
            for t in body.get("tools") or []
            if isinstance(t, dict) and t.get("name")
        }
        out: list[dict[str, Any]]
        if script is None or not tools:
            out = [_oa_message("ok")]
        elif "bash" in tools and "exec_command" not in tools:  # opencode's tools
            if step == 0:
                patch = f"*** Begin Patch\n*** Add File: {script['file']}\n"
                patch += "".join(f"+{line}\n" for line in script["content"].splitlines())
                patch += "*** End Patch"
                args0 = {"patchText": patch}
                out = [_oa_message("I will write the file first."), _oa_call("apply_patch", args0)]
            elif step == 1:
                out = [_oa_call("bash", {"command": shlex.join(script["test"])})]
            else:
                out = [_oa_message("Done: the file is written.")]
        elif step == 0:
            patch = (
                "*** Begin Patch\n*** Add File: "
                + script["file"]
                + "\n"
                + "".join(f"+{line}\n" for line in script["content"].splitlines())
                + "*** End Patch\n"
            )
            call: dict[str, Any]
            if "apply_patch" not in tools:
                # codex intercepts apply_patch run through its shell tool
                command = f"apply_patch <<'PATCH'\n{patch}PATCH\n"
                call = {
                    "type": "function_call",
                    "name": "exec_command",
                    "arguments": json.dumps({"cmd": command}),
                    "call_id": "call_write",
                }
            elif tools["apply_patch"].get("type") == "custom":
                call = {
                    "type": "custom_tool_call",
                    "name": "apply_patch",
                    "input": patch,
                    "call_id": "call_write",
                }
            else:
                call = {
                    "type": "function_call",
                    "name": "apply_patch",
                    "arguments": json.dumps({"input": patch}),
                    "call_id": "call_write",
                }
            out = [_oa_message("I will write the file first."), call]
        elif step == 1:
            shell = next(
                (
                    n
                    for n in ("exec_command", "shell_command", "shell", "local_shell")
                    if n in tools
                ),
                "shell",
            )
            if shell == "exec_command":
                args: dict[str, Any] = {"cmd": shlex.join(script["test"]), "yield_time_ms": 30000}
            elif shell == "shell_command":
                args = {"command": shlex.join(script["test"])}
            else:
                args = {"command": script["test"]}
            out = [
                {
                    "type": "function_call",
                    "name": shell,
                    "arguments": json.dumps(args),
                    "call_id": "call_test",
                }
            ]
        else:
            out = [_oa_message("Done: the file is written.")]
        _sse_openai(h, body.get("model") or "gpt-scripted", out)


def _oa_call(name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": f"fc_{next(_msg_seq)}",
        "name": name,
        "arguments": json.dumps(args),
        "call_id": f"call_{name}",
        "status": "completed",
    }


def _json(
    h: BaseHTTPRequestHandler, status: int, value: Any, headers: dict[str, str] | None = None
) -> None:
    data = json.dumps(value).encode()
    h.send_response(status)
    h.send_header("content-type", "application/json")
    h.send_header("content-length", str(len(data)))
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(data)


def _start_sse(h: BaseHTTPRequestHandler) -> None:
    h.send_response(200)
    h.send_header("content-type", "text/event-stream")
    h.send_header("cache-control", "no-cache")
    h.send_header("connection", "close")
    h.end_headers()
    h.close_connection = True


def _event(h: BaseHTTPRequestHandler, name: str, data: dict[str, Any]) -> None:
    h.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
    h.wfile.flush()


_msg_seq = iter(range(1, 1 << 30))


def _sse_anthropic(
    h: BaseHTTPRequestHandler, model: str, blocks: list[dict[str, Any]], stop: str
) -> None:
    _start_sse(h)
    usage = {
        "input_tokens": INPUT_TOKENS,
        "output_tokens": 1,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }
    message: dict[str, Any] = {
        "id": f"msg_scripted_{next(_msg_seq)}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }
    _event(h, "message_start", {"type": "message_start", "message": message})
    for i, block in enumerate(blocks):
        start: dict[str, Any]
        if block["type"] == "text":
            start = {"type": "text", "text": ""}
            delta = {"type": "text_delta", "text": block["text"]}
        else:
            start = {**block, "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        _event(
            h,
            "content_block_start",
            {"type": "content_block_start", "index": i, "content_block": start},
        )
        _event(
            h, "content_block_delta", {"type": "content_block_delta", "index": i, "delta": delta}
        )
        _event(h, "content_block_stop", {"type": "content_block_stop", "index": i})
    _event(
        h,
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": {"output_tokens": OUTPUT_TOKENS},
        },
    )
    _event(h, "message_stop", {"type": "message_stop"})


def _oa_message(text: str) -> dict[str, Any]:
    return {
        "type": "message",
        "role": "assistant",
        "id": f"msg_{next(_msg_seq)}",
        "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def _sse_openai(h: BaseHTTPRequestHandler, model: str, items: list[dict[str, Any]]) -> None:
    _start_sse(h)
    rid = f"resp_{next(_msg_seq)}"
    base = {"id": rid, "object": "response", "model": model, "status": "in_progress", "output": []}
    _event(h, "response.created", {"type": "response.created", "response": base})
    for i, item in enumerate(items):
        _event(
            h,
            "response.output_item.added",
            {"type": "response.output_item.added", "output_index": i, "item": item},
        )
        if item["type"] == "message":
            text = item["content"][0]["text"]
            delta = {"type": "response.output_text.delta", "item_id": item["id"]}
            delta |= {"output_index": i, "content_index": 0, "delta": text}
            _event(h, "response.output_text.delta", delta)
        elif item["type"] == "function_call":
            args = {"type": "response.function_call_arguments.delta", "item_id": item.get("id")}
            args |= {"output_index": i, "delta": item["arguments"]}
            _event(h, "response.function_call_arguments.delta", args)
        _event(
            h,
            "response.output_item.done",
            {"type": "response.output_item.done", "output_index": i, "item": item},
        )
    usage = {
        "input_tokens": INPUT_TOKENS,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": OUTPUT_TOKENS,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS,
    }
    done = {**base, "status": "completed", "output": items, "usage": usage}
    _event(h, "response.completed", {"type": "response.completed", "response": done})


def main() -> None:
    with ScriptedApi() as api:
        Path(sys.argv[1]).write_text(str(api.port))
        if len(sys.argv) > 2:
            api.mode = sys.argv[2]
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()

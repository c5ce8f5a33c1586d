"""A real local HTTP server that speaks the OpenAI Chat Completions and Anthropic Messages APIs,
scripted per test: the model's *answers* are fake, the HTTP, the adapters and Temporal are real.

    with ModelServer() as server:
        server.script("/openai/v1/chat/completions", [openai_call("get_balance", account="a"),
                                                      Reply(429), openai_finish("done")])
        ModelRef(provider="openai", model="m", base_url=server.url + "/openai/v1", ...)
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

OPENAI = "/openai/v1/chat/completions"
ANTHROPIC = "/anthropic/v1/messages"


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # a dict is sent as JSON, a str as it is
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


Responder = Callable[[dict[str, Any]], Reply]


class ModelServer:
    def __init__(self) -> None:
        self.scripts: dict[str, list[Reply] | Responder] = {}
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                with server._lock:
                    server.seen.append(Seen(self.path, dict(self.headers.items()), body))
                    reply = server._next(self.path, body)
                if reply.delay:
                    time.sleep(reply.delay)
                if body.get("stream") and reply.status == 200 and isinstance(reply.body, dict):
                    return self._stream(reply.body)
                data = reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data.encode())))
                    self.end_headers()
                    self.wfile.write(data.encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            def _stream(self, answer: dict[str, Any]) -> None:
                """The scripted answer as the API streams it (SSE), piece by piece."""
                chunks = anthropic_chunks(answer) if "content" in answer else openai_chunks(answer)
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.end_headers()
                try:
                    for name, data in chunks:
                        event = f"event: {name}\n" if name else ""
                        self.wfile.write(f"{event}data: {data}\n\n".encode())
                        self.wfile.flush()
                        time.sleep(server.chunk_delay)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.chunk_delay = 0.01  # seconds between streamed pieces
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}"

    def _next(self, path: str, body: dict[str, Any]) -> Reply:
        script = self.scripts.get(path)
        if callable(script):
            return script(body)
        if not script:
            return Reply(500, {"error": f"no scripted answer left for {path}"})
        return script.pop(0)

    def script(self, path: str, replies: list[Reply] | Responder) -> None:
        self.scripts[path] = replies

    def requests(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]

    def __enter__(self) -> ModelServer:
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.shutdown()
        self._http.server_close()


# --- streaming: a whole answer cut into each API's SSE events ----------------------------------


def pieces(text: str, size: int = 7) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def openai_chunks(answer: dict[str, Any]) -> list[tuple[str, str]]:
    message = answer["choices"][0]["message"]
    out: list[dict[str, Any]] = []
    for piece in pieces(message.get("content") or ""):
        out.append({"choices": [{"index": 0, "delta": {"content": piece}}]})
    for index, call in enumerate(message.get("tool_calls") or ()):
        head = {"index": index, "id": call["id"], "type": "function"}
        head["function"] = {"name": call["function"]["name"], "arguments": ""}
        out.append({"choices": [{"index": 0, "delta": {"tool_calls": [head]}}]})
        for piece in pieces(call["function"]["arguments"]):
            part = {"index": index, "function": {"arguments": piece}}
            out.append({"choices": [{"index": 0, "delta": {"tool_calls": [part]}}]})
    out.append({"choices": [], "usage": answer.get("usage")})
    chunks = [("", json.dumps(c | {"model": answer.get("model")})) for c in out]
    return [*chunks, ("", "[DONE]")]


def anthropic_chunks(answer: dict[str, Any]) -> list[tuple[str, str]]:
    usage = answer.get("usage") or {}
    start = {k: v for k, v in answer.items() if k != "content"} | {"content": []}
    start["usage"] = {"input_tokens": usage.get("input_tokens", 0), "output_tokens": 1}
    events: list[dict[str, Any]] = [{"type": "message_start", "message": start}]
    for index, block in enumerate(answer["content"]):
        opening: dict[str, Any]
        if block["type"] == "text":
            opening = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": p} for p in pieces(block["text"])]
        else:
            opening = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            text = json.dumps(block.get("input", {}))
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in pieces(text)]
        events.append({"type": "content_block_start", "index": index, "content_block": opening})
        events += [{"type": "content_block_delta", "index": index, "delta": d} for d in deltas]
        events.append({"type": "content_block_stop", "index": index})
    output = {"output_tokens": usage.get("output_tokens", 0)}
    events.append({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": output})
    events.append({"type": "message_stop"})
    return [(e["type"], json.dumps(e)) for e in events]


# --- answers in each API's shape ---------------------------------------------------------------

_ids = iter(range(1, 1_000_000))


def openai_calls(
    *calls: tuple[str, dict[str, Any] | str], usage: tuple[int, int] = (100, 20)
) -> Reply:
    tool_calls = [
        {
            "id": f"call_{next(_ids)}",
            "type": "function",
            "function": {
                "name": name,
                "arguments": args if isinstance(args, str) else json.dumps(args),
            },
        }
        for name, args in calls
    ]
    return Reply(
        body={
            "id": "chatcmpl-test",
            "model": "gpt-test",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": None, "tool_calls": tool_calls},
                    "finish_reason": "tool_calls",
                }
            ],
            "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1]},
        }
    )


def openai_call(name: str, **args: Any) -> Reply:
    return openai_calls((name, args))


def openai_text(text: str) -> Reply:
    return Reply(
        body={
            "model": "gpt-test",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 5},
        }
    )


def anthropic_call(name: str, usage: tuple[int, int] = (80, 15), **args: Any) -> Reply:
    return Reply(
        body={
            "id": "msg_test",
            "type": "message",
            "role": "assistant",
            "model": "claude-test",
            "content": [
                {"type": "text", "text": "Let me do that."},
                {"type": "tool_use", "id": f"toolu_{next(_ids)}", "name": name, "input": args},
            ],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": usage[0], "output_tokens": usage[1]},
        }
    )

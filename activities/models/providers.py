"""Model providers behind the `keel.model_call` activity: OpenAI-compatible Chat Completions and
Anthropic Messages, over httpx.

The activity is the only place a key exists: it reads the variable named by `api_key_env` at
call time, sends it in a header, and never puts it in a result, an error or a log line. Errors
are typed for the retry policy: a 429, a 5xx, a timeout or a refused connection is retryable
(`ModelUnavailable`; a Retry-After is honoured); other 4xx answers are not
(`ModelRequestRejected`), and the route moves to its next model either way.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from keel.activities.retry import jittered_delay
from keel.activities.secrets import file_secrets
from keel.workflows.contracts import (
    Message,
    ModelRef,
    ModelReply,
    ModelRequest,
    ToolCallRequest,
    Usage,
)

if TYPE_CHECKING:
    import httpx

UNAVAILABLE, REJECTED, NO_KEY = "ModelUnavailable", "ModelRequestRejected", "ModelKeyMissing"
OPENAI_URL, ANTHROPIC_URL = "https://api.openai.com/v1", "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"
THINKING_BUDGET = {"low": 1024, "medium": 4096, "high": 16384}
ERROR_BODY_CHARS = 300


def api_key(request: ModelRequest) -> str | None:
    name = request.model_ref.api_key_env
    if name is None:
        return None
    value = os.environ.get(name) or file_secrets().get(name)
    if not value:
        raise ApplicationError(
            f"{name} is not set on this worker (the key for {request.model_ref.label})",
            type=NO_KEY,
            non_retryable=True,
        )
    return value


def scrub(text: str, secret: str | None) -> str:
    return text.replace(secret, "[redacted]") if secret else text


def _jittered() -> timedelta | None:
    """The model call's next retry delay, jittered (activities/retry.py); None outside one."""
    if not activity.in_activity():
        return None
    info = activity.info()
    return jittered_delay(info.attempt, info.retry_policy)


@asynccontextmanager
async def http_errors(request: ModelRequest, url: str) -> AsyncIterator[None]:
    """Timeouts and unreachable servers as retryable ApplicationErrors."""
    # httpx is imported at the first call over HTTP, not with the worker: it costs ~7 MB (its
    # command line pulls in rich and pygments), and a worker with only local models never uses it.
    import httpx

    timeout = request.model_ref.timeout.total_seconds()
    try:
        yield
    except httpx.TimeoutException:
        raise ApplicationError(
            f"{request.model_ref.label}: no answer within {timeout:g} s",
            type=UNAVAILABLE,
            next_retry_delay=_jittered(),
        ) from None
    except httpx.TransportError as err:
        raise ApplicationError(
            f"{request.model_ref.label}: cannot reach {url}: {type(err).__name__}",
            type=UNAVAILABLE,
            next_retry_delay=_jittered(),
        ) from None


def refuse_status(response: httpx.Response, request: ModelRequest, secret: str | None) -> None:
    """A 429 or 5xx is retryable (its Retry-After honoured), another 4xx is not."""
    if response.status_code < 400:
        return
    said = scrub(response.text[:ERROR_BODY_CHARS], secret)
    if response.status_code == 429 or response.status_code >= 500:
        retry_after = response.headers.get("retry-after", "")
        delay = timedelta(seconds=float(retry_after)) if retry_after.isdigit() else _jittered()
        raise ApplicationError(
            f"{request.model_ref.label}: HTTP {response.status_code}: {said}",
            type=UNAVAILABLE,
            next_retry_delay=delay,
        )
    raise ApplicationError(
        f"{request.model_ref.label}: HTTP {response.status_code}: {said}",
        type=REJECTED,
        non_retryable=True,
    )


async def post(
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
    request: ModelRequest,
    secret: str | None,
) -> dict[str, Any]:
    import httpx  # see http_errors

    async with (
        http_errors(request, url),
        httpx.AsyncClient(timeout=request.model_ref.timeout.total_seconds()) as client,
    ):
        response = await client.post(url, json=body, headers=headers)
    refuse_status(response, request, secret)
    try:
        data = response.json()
    except ValueError:
        raise ApplicationError(
            f"{request.model_ref.label}: the answer is not JSON", type=UNAVAILABLE
        ) from None
    if not isinstance(data, dict):
        raise ApplicationError(f"{request.model_ref.label}: unexpected answer", type=UNAVAILABLE)
    return data


OnText = Callable[[str], Awaitable[None]]  # hears each piece of streamed text


async def sse(
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
    request: ModelRequest,
    secret: str | None,
) -> AsyncIterator[dict[str, Any]]:
    """A streamed answer (Server-Sent Events) as its data objects, in order; errors as for a
    plain answer (the status is checked before anything is read)."""
    import httpx  # see http_errors

    async with (
        http_errors(request, url),
        httpx.AsyncClient(timeout=request.model_ref.timeout.total_seconds()) as client,
        client.stream("POST", url, json=body, headers=headers) as response,
    ):
        if response.status_code >= 400:
            await response.aread()
            refuse_status(response, request, secret)
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue  # "event:" names repeat the data's type; blank lines end events
            data = line.removeprefix("data:").strip()
            if data == "[DONE]":
                return
            try:
                parsed = json.loads(data)
            except ValueError:
                raise ApplicationError(
                    f"{request.model_ref.label}: a streamed chunk is not JSON", type=UNAVAILABLE
                ) from None
            if isinstance(parsed, dict):
                yield parsed


def shape_error(model: ModelRef, err: Exception) -> ApplicationError:
    return ApplicationError(
        f"{model.label}: unexpected answer shape ({type(err).__name__}: {err})",
        type=UNAVAILABLE,
    )


# --- OpenAI-compatible Chat Completions --------------------------------------------------------


def openai_message(message: Message) -> dict[str, Any]:
    if message.role == "tool":
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["content"] = message.content or None
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    return out


async def openai_chat(request: ModelRequest, on_text: OnText | None = None) -> ModelReply:
    model = request.model_ref
    secret = api_key(request)
    body: dict[str, Any] = {
        "model": model.model,
        "messages": [openai_message(m) for m in request.messages],
        "max_tokens": model.max_output_tokens,
    }
    if request.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.parameters,
                },
            }
            for t in request.tools
        ]
    if model.reasoning_effort:
        body["reasoning_effort"] = model.reasoning_effort
    headers = {"authorization": f"Bearer {secret}"} if secret else {}
    url = (model.base_url or OPENAI_URL).rstrip("/") + "/chat/completions"
    started = time.monotonic()
    if model.stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
        data = await openai_gathered(sse(url, body, headers, request, secret), on_text, model)
    else:
        data = await post(url, body, headers, request, secret)
    try:
        message = data["choices"][0]["message"]
        calls = tuple(
            ToolCallRequest(
                id=c["id"],
                name=c["function"]["name"],
                arguments=c["function"].get("arguments") or "{}",
            )
            for c in message.get("tool_calls") or ()
        )
        usage = data.get("usage") or {}
        return ModelReply(
            text=message.get("content") or "",
            tool_calls=calls,
            usage=Usage(
                input_tokens=int(usage.get("prompt_tokens", 0)),
                output_tokens=int(usage.get("completion_tokens", 0)),
            ),
            latency_ms=int((time.monotonic() - started) * 1000),
            model=str(data.get("model") or model.model),
        )
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise ApplicationError(
            f"{model.label}: unexpected answer shape ({type(err).__name__}: {err})",
            type=UNAVAILABLE,
        ) from None


async def openai_gathered(
    chunks: AsyncIterator[dict[str, Any]], on_text: OnText | None, model: ModelRef
) -> dict[str, Any]:
    """A streamed Chat Completion put back together in the shape of an unstreamed one: the
    text, the tool calls (their arguments arrive in pieces, by index) and the usage."""
    text: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    usage: dict[str, Any] = {}
    name = model.model
    try:
        async for chunk in chunks:
            name = chunk.get("model") or name
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                if piece := delta.get("content"):
                    text.append(piece)
                    if on_text is not None:
                        await on_text(piece)
                for part in delta.get("tool_calls") or ():
                    call = calls.setdefault(
                        int(part["index"]), {"id": "", "function": {"name": "", "arguments": ""}}
                    )
                    call["id"] = part.get("id") or call["id"]
                    function = part.get("function") or {}
                    call["function"]["name"] += function.get("name") or ""
                    call["function"]["arguments"] += function.get("arguments") or ""
    except (KeyError, TypeError, ValueError) as err:
        raise shape_error(model, err) from None
    message = {"content": "".join(text), "tool_calls": [calls[i] for i in sorted(calls)]}
    return {"model": name, "choices": [{"message": message}], "usage": usage}


# --- Anthropic Messages ------------------------------------------------------------------------


def anthropic_messages(messages: tuple[Message, ...]) -> tuple[str, list[dict[str, Any]]]:
    system = "\n\n".join(m.content for m in messages if m.role == "system")
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "system":
            continue
        if m.role == "tool":
            block = {"type": "tool_result", "tool_use_id": m.tool_call_id, "content": m.content}
            # Results of one assistant turn go back together in one user message.
            if out and out[-1]["role"] == "user" and isinstance(out[-1]["content"], list):
                out[-1]["content"].append(block)
            else:
                out.append({"role": "user", "content": [block]})
            continue
        if m.role == "assistant" and m.tool_calls:
            blocks: list[dict[str, Any]] = (
                [{"type": "text", "text": m.content}] if m.content else []
            )
            for c in m.tool_calls:
                try:
                    arguments = json.loads(c.arguments or "{}")
                except json.JSONDecodeError:
                    arguments = {"_unparsed": c.arguments}
                blocks.append({"type": "tool_use", "id": c.id, "name": c.name, "input": arguments})
            out.append({"role": "assistant", "content": blocks})
            continue
        out.append({"role": m.role, "content": m.content})
    return system, out


async def anthropic_chat(request: ModelRequest, on_text: OnText | None = None) -> ModelReply:
    model = request.model_ref
    secret = api_key(request)
    system, messages = anthropic_messages(request.messages)
    body: dict[str, Any] = {
        "model": model.model,
        "max_tokens": model.max_output_tokens,
        "messages": messages,
    }
    if system:
        body["system"] = system
    if request.tools:
        body["tools"] = [
            {"name": t.name, "description": t.description, "input_schema": t.parameters}
            for t in request.tools
        ]
    if model.reasoning_effort:
        budget = THINKING_BUDGET[model.reasoning_effort]
        body["thinking"] = {"type": "enabled", "budget_tokens": budget}
        body["max_tokens"] = max(model.max_output_tokens, budget + 1024)
    headers = {"anthropic-version": ANTHROPIC_VERSION}
    if secret:
        headers["x-api-key"] = secret
    url = (model.base_url or ANTHROPIC_URL).rstrip("/") + "/v1/messages"
    started = time.monotonic()
    if model.stream:
        body["stream"] = True
        data = await anthropic_gathered(sse(url, body, headers, request, secret), on_text, model)
    else:
        data = await post(url, body, headers, request, secret)
    try:
        text = "".join(b.get("text", "") for b in data["content"] if b.get("type") == "text")
        calls = tuple(
            ToolCallRequest(id=b["id"], name=b["name"], arguments=json.dumps(b.get("input", {})))
            for b in data["content"]
            if b.get("type") == "tool_use"
        )
        usage = data.get("usage") or {}
        return ModelReply(
            text=text,
            tool_calls=calls,
            usage=Usage(
                input_tokens=int(usage.get("input_tokens", 0)),
                output_tokens=int(usage.get("output_tokens", 0)),
            ),
            latency_ms=int((time.monotonic() - started) * 1000),
            model=str(data.get("model") or model.model),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ApplicationError(
            f"{model.label}: unexpected answer shape ({type(err).__name__}: {err})",
            type=UNAVAILABLE,
        ) from None


async def anthropic_gathered(
    events: AsyncIterator[dict[str, Any]], on_text: OnText | None, model: ModelRef
) -> dict[str, Any]:
    """A streamed Message put back together in the shape of an unstreamed one: its content
    blocks (text, and tool_use whose input arrives as pieces of JSON) and its usage."""
    blocks: dict[int, dict[str, Any]] = {}
    partial: dict[int, list[str]] = {}
    usage: dict[str, Any] = {}
    name = model.model
    try:
        async for event in events:
            kind = event.get("type")
            if kind == "message_start":
                message = event["message"]
                name = message.get("model") or name
                usage.update(message.get("usage") or {})
            elif kind == "content_block_start":
                blocks[int(event["index"])] = dict(event["content_block"])
            elif kind == "content_block_delta":
                index, delta = int(event["index"]), event["delta"]
                if delta.get("type") == "text_delta":
                    block = blocks.setdefault(index, {"type": "text", "text": ""})
                    block["text"] = block.get("text", "") + delta["text"]
                    if on_text is not None:
                        await on_text(delta["text"])
                elif delta.get("type") == "input_json_delta":
                    partial.setdefault(index, []).append(delta.get("partial_json", ""))
            elif kind == "message_delta":
                usage.update(event.get("usage") or {})
            elif kind == "error":
                raise ApplicationError(
                    f"{model.label}: streamed error: {event.get('error')}", type=UNAVAILABLE
                )
        for index, pieces in partial.items():
            blocks[index]["input"] = json.loads("".join(pieces) or "{}")
    except (KeyError, TypeError, ValueError) as err:
        raise shape_error(model, err) from None
    return {"model": name, "content": [blocks[i] for i in sorted(blocks)], "usage": usage}


PROVIDERS = {"openai": openai_chat, "anthropic": anthropic_chat}

"""Keel's own spans, named `keel.*`, with attributes `keel.<name>`, and the conventions LLM
observability tools read: OpenInference (`openinference.span.kind`, `llm.*`, `tool.*`) and the
OpenTelemetry GenAI semantic conventions (`gen_ai.*`).

Only opentelemetry-api: with no SDK set up these are no-ops. With worker.py's tracing set up
(temporalio's OpenTelemetryPlugin and its replay-safe provider) spans opened in workflow code
get deterministic ids and are not emitted again when a workflow replays.

    with span("step", run_id=..., step=3, tool="post_entry") as s:
        ...
        s.set_attribute("keel.outcome", "ok")

A span an exception leaves gets status ERROR and an "exception" event; `failed(span, why)`
does the same for an outcome that is a failure without one (a NOT_DONE run, a refused
decision).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import context, trace
from opentelemetry.trace import Status, StatusCode

AttributeValue = str | int | float | bool
# OpenInference span kinds: the run is the agent, model calls are LLM spans, tool calls and
# acceptance checks TOOL spans, the rest (plan, step, waits, compensations) CHAIN.
SPAN_KINDS = {"run": "AGENT", "model_call": "LLM", "tool_call": "TOOL", "acceptance_check": "TOOL"}
DESCRIPTION_CHARS = 500
NORMAL_ENDS = ("ContinueAsNewError",)  # a run continuing as new has not failed


@contextmanager
def span(name: str, **attributes: AttributeValue | None) -> Iterator[trace.Span]:
    tracer = trace.get_tracer("keel")
    values: dict[str, AttributeValue] = {
        f"keel.{k}": v for k, v in attributes.items() if v is not None
    }
    values["openinference.span.kind"] = SPAN_KINDS.get(name, "CHAIN")
    # Exceptions are recorded here, not by the SDK: its own recording (a formatted traceback)
    # loses the span of a workflow that unwinds through it.
    current = tracer.start_span(
        f"keel.{name}", attributes=values, record_exception=False, set_status_on_exception=False
    )
    # A run waiting on a human keeps its open spans' frames for days: only what they need.
    # With no tracing set up (an invalid span) there is no context to carry to child spans.
    del values, attributes, tracer
    valid = current.get_span_context().is_valid
    token = context.attach(trace.set_span_in_context(current)) if valid else None
    try:
        yield current
    except GeneratorExit:
        # The workflow is being evicted from the worker's cache (not finished): its coroutine
        # is closed outside the context it ran in, so there is nothing to detach or end here;
        # detaching would only log a traceback. The replay that finishes it ends the span.
        raise
    except BaseException as err:
        kind = type(err).__name__
        current.set_attribute("keel.exception", kind)
        if kind not in NORMAL_ENDS:
            failed(current, f"{kind}: {err}", kind)
        if token is not None:
            context.detach(token)
        current.end()
        raise
    if token is not None:
        context.detach(token)
    current.end()


def failed(current: trace.Span, description: str, kind: str = "NotDone") -> None:
    """Status ERROR with `description`, and the exception event error filters look for."""
    text = description[:DESCRIPTION_CHARS]
    current.set_status(Status(StatusCode.ERROR, text))
    current.add_event("exception", {"exception.type": kind, "exception.message": text})


def annotate(current: trace.Span, **attributes: AttributeValue | None) -> None:
    for key, value in attributes.items():
        if value is not None:
            current.set_attribute(f"keel.{key}", value)


def model_call_attributes(
    current: trace.Span, *, provider: str, model: str, input_tokens: int, output_tokens: int
) -> None:
    """What Phoenix and GenAI dashboards read off an LLM span: model, provider, tokens."""
    total = input_tokens + output_tokens
    values: dict[str, AttributeValue] = {
        "llm.model_name": model,
        "llm.provider": provider,
        "llm.token_count.prompt": input_tokens,
        "llm.token_count.completion": output_tokens,
        "llm.token_count.total": total,
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider,
        "gen_ai.system": provider,
        "gen_ai.request.model": model,
        "gen_ai.response.model": model,
        "gen_ai.usage.input_tokens": input_tokens,
        "gen_ai.usage.output_tokens": output_tokens,
    }
    current.set_attributes(values)


def tool_call_attributes(current: trace.Span, *, tool: str, args: dict[str, Any]) -> None:
    """A TOOL span's name and parameters (arguments carry references, never secrets)."""
    parameters = json.dumps(args, default=str, sort_keys=True)[:4096]
    current.set_attribute("tool.name", tool)
    current.set_attribute("tool.parameters", parameters)
    current.set_attribute("gen_ai.operation.name", "execute_tool")
    current.set_attribute("gen_ai.tool.name", tool)


def content_attributes(current: trace.Span, *, prompt: str, response: str) -> None:
    """Prompt and response text, only where the caller decided they may be recorded."""
    current.set_attribute("input.value", prompt[:16384])
    current.set_attribute("output.value", response[:16384])


def spans_to_flush() -> bool:
    """Whether an SDK provider (something that exports) is set up in this process."""
    return hasattr(trace.get_tracer_provider(), "force_flush")


def flush_spans(timeout_ms: int = 2000) -> None:
    """Export what the process's provider holds now (blocking): a tool call's span leaves the
    worker before the call reports completion, so a SIGKILL after it loses nothing finished."""
    force = getattr(trace.get_tracer_provider(), "force_flush", None)
    if force is not None:
        force(timeout_ms)

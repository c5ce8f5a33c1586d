"""Keel's own spans, named `keel.*`, with attributes `keel.<name>`.

Only opentelemetry-api: with no SDK set up these are no-ops. With worker.py's tracing set up
(temporalio's OpenTelemetryPlugin and its replay-safe provider) spans opened in workflow code
get deterministic ids and are not emitted again when a workflow replays.

    with span("step", run_id=..., step=3, tool="post_entry") as s:
        ...
        s.set_attribute("keel.outcome", "ok")
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import context, trace

AttributeValue = str | int | float | bool


@contextmanager
def span(name: str, **attributes: AttributeValue | None) -> Iterator[trace.Span]:
    tracer = trace.get_tracer("keel")
    values = {f"keel.{k}": v for k, v in attributes.items() if v is not None}
    # Exceptions are recorded here, not by the SDK: its own recording (a formatted traceback)
    # loses the span of a workflow that unwinds through it.
    current = tracer.start_span(
        f"keel.{name}", attributes=values, record_exception=False, set_status_on_exception=False
    )
    token = context.attach(trace.set_span_in_context(current))
    try:
        yield current
    except GeneratorExit:
        # The workflow is being evicted from the worker's cache (not finished): its coroutine
        # is closed outside the context it ran in, so there is nothing to detach or end here;
        # detaching would only log a traceback. The replay that finishes it ends the span.
        raise
    except BaseException as err:
        current.set_attribute("keel.exception", type(err).__name__)
        context.detach(token)
        current.end()
        raise
    context.detach(token)
    current.end()


def annotate(current: trace.Span, **attributes: AttributeValue | None) -> None:
    for key, value in attributes.items():
        if value is not None:
            current.set_attribute(f"keel.{key}", value)

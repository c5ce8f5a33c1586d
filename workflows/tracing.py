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

from opentelemetry import trace

AttributeValue = str | int | float | bool


@contextmanager
def span(name: str, **attributes: AttributeValue | None) -> Iterator[trace.Span]:
    tracer = trace.get_tracer("keel")
    values = {f"keel.{k}": v for k, v in attributes.items() if v is not None}
    # Exceptions are recorded here, not by the SDK: its own recording (a formatted traceback)
    # loses the span of a workflow that unwinds through it.
    with tracer.start_as_current_span(
        f"keel.{name}", attributes=values, record_exception=False, set_status_on_exception=False
    ) as current:
        try:
            yield current
        except BaseException as err:
            current.set_attribute("keel.exception", type(err).__name__)
            raise


def annotate(current: trace.Span, **attributes: AttributeValue | None) -> None:
    for key, value in attributes.items():
        if value is not None:
            current.set_attribute(f"keel.{key}", value)

"""Tracing for worker.py and starter.py, configured by the standard OTEL_* variables.

    OTEL_TRACES_EXPORTER=console            spans printed to stderr
    OTEL_EXPORTER_OTLP_ENDPOINT=http://...  spans sent over OTLP/HTTP (or OTEL_TRACES_EXPORTER=otlp)
    neither                                 no tracing, no cost

Keel's library code depends only on opentelemetry-api: its spans (run, plan, step, tool call,
model call, approval wait, compensation, acceptance) are no-ops until this sets up the SDK
(`pip install 'keel[otel]'`). Workflow spans go through temporalio's OpenTelemetryPlugin and its
replay-safe tracer provider, so a replayed workflow does not emit its spans twice.
"""

from __future__ import annotations

import logging
import os

from opentelemetry import trace
from temporalio.client import Plugin
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    PrometheusConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)

from keel.shared.errors import TracingUnavailable
from keel.workflows.metrics import COUNTERS, HISTOGRAMS, counter_name

TRACER = "keel"
SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 21600, 86400)


def exporter_name() -> str | None:
    name = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if name in ("", "none"):
        return "otlp" if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") and not name else None
    if name not in ("console", "otlp"):
        raise TracingUnavailable(f"OTEL_TRACES_EXPORTER={name!r}: Keel knows console and otlp")
    return name


def tracing_plugins(service: str) -> list[Plugin]:
    """The plugins to add to the client when tracing is asked for; [] when it is not."""
    name = exporter_name()
    if name is None:
        return []
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SpanExporter,
        )
        from temporalio.contrib.opentelemetry import OpenTelemetryPlugin, create_tracer_provider
    except ImportError as err:
        raise TracingUnavailable(
            f"OTEL_* asks for {name} traces but the OpenTelemetry SDK is missing: "
            "pip install 'keel[otel]'"
        ) from err
    exporter: SpanExporter
    if name == "console":
        exporter = ConsoleSpanExporter()
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as err:
            raise TracingUnavailable(
                "OTEL_* asks for OTLP traces but the exporter is missing: pip install 'keel[otel]'"
            ) from err
        exporter = OTLPSpanExporter()  # endpoint, headers: OTEL_EXPORTER_OTLP_* variables
    name = os.environ.get("OTEL_SERVICE_NAME", service)
    # Phoenix (and other OpenInference tools) file spans by project: KEEL_PROJECT names it, so
    # runs do not all land in one default project.
    project = os.environ.get("KEEL_PROJECT", "keel")
    resource = Resource.create({"service.name": name, "openinference.project.name": project})
    provider = create_tracer_provider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return [OpenTelemetryPlugin()]


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER)


def install_runtime(metrics_address: str | None = None) -> None:
    """The process's Temporal runtime: the SDK core's log lines forwarded through Python logging
    (so they take the chosen format, and a JSON log stays one object per line), and, with an
    address, Prometheus metrics (Temporal's own and Keel's `keel_*` counters) on
    http://ADDRESS/metrics."""
    core = LoggingConfig(
        filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
        forwarding=LogForwardingConfig(logger=logging.getLogger("temporalio.core")),
    )
    # Keel's histograms are in seconds, from a tool call's milliseconds to an approval's days.
    buckets = {f"keel_{name}": SECONDS_BUCKETS for name in HISTOGRAMS}
    metrics = (
        PrometheusConfig(bind_address=metrics_address, histogram_bucket_overrides=buckets)
        if metrics_address
        else None
    )
    runtime = Runtime(telemetry=TelemetryConfig(logging=core, metrics=metrics))
    Runtime.set_default(runtime, error_if_already_set=False)
    if metrics is not None:
        # Every keel_* counter family from the start, at zero: a dashboard or alert on one
        # finds it before the first run (a rate over an absent series is no rate at all).
        for name, description in COUNTERS.items():
            runtime.metric_meter.create_counter(counter_name(name), description).add(0)

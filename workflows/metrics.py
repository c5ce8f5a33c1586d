"""Keel's metrics, through the workflow's replay-safe metric meter (nothing is counted twice when
a workflow replays). They reach whatever the worker's Temporal runtime exports: Prometheus with
`worker.py --metrics-address`, or OpenTelemetry through temporalio's runtime config.

Counters, named the Prometheus way and present (at zero) from worker start:

    keel_tool_calls_total{agent, tool, outcome}   keel_tool_retries_total{agent, tool}
    keel_human_requests_total{agent, kind}        keel_model_calls_total{agent, model}
    keel_model_input_tokens_total / keel_model_output_tokens_total /
    keel_model_cost_microdollars_total{agent, model}
    keel_runs_finished_total{agent, status}

Histograms of durations in seconds of workflow time (they appear with their first sample):

    keel_tool_call_duration_seconds{agent, tool, outcome}
    keel_model_call_duration_seconds{agent, model}
    keel_approval_wait_seconds{agent, kind, choice}
"""

from __future__ import annotations

from temporalio import workflow

COUNTERS = {
    "tool_calls": "Tool calls that settled, by outcome (ok, failed)",
    "tool_retries": "Retried tool attempts",
    "human_requests": "Approvals, escalations and questions put to a human",
    "model_calls": "Model calls",
    "model_input_tokens": "Input tokens of model calls",
    "model_output_tokens": "Output tokens of model calls",
    "model_cost_microdollars": "Cost of model calls, in millionths of a dollar",
    "runs_finished": "Runs that ended, by status (DONE, NOT_DONE)",
}
HISTOGRAMS = {
    "tool_call_duration_seconds": "From a step's start to its call's settling, retries included",
    "model_call_duration_seconds": "A model call, fallbacks included",
    "approval_wait_seconds": "From asking a human to the decision (or the deadline)",
}


def counter_name(name: str) -> str:
    return f"keel_{name}_total"


def count(name: str, agent: str, value: int = 1, **attributes: str) -> None:
    if value <= 0:
        return
    counter = workflow.metric_meter().create_counter(counter_name(name), COUNTERS[name])
    counter.add(value, {"agent": agent, **attributes})


def observe(name: str, agent: str, seconds: float, **attributes: str) -> None:
    histogram = workflow.metric_meter().create_histogram_float(f"keel_{name}", HISTOGRAMS[name])
    histogram.record(max(seconds, 0.0), {"agent": agent, **attributes})

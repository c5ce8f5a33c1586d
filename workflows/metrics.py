"""Keel's counters, through the workflow's replay-safe metric meter (nothing is counted twice
when a workflow replays). They reach whatever the worker's Temporal runtime exports: Prometheus
with `worker.py --metrics-address`, or OpenTelemetry through temporalio's runtime config.

    keel_tool_calls{agent, tool, outcome}   keel_tool_retries{agent, tool}
    keel_human_requests{agent, kind}        keel_model_calls{agent, model}
    keel_model_input_tokens / keel_model_output_tokens / keel_model_cost_microdollars{agent, model}
    keel_runs_finished{agent, status}
"""

from __future__ import annotations

from temporalio import workflow


def count(name: str, agent: str, value: int = 1, **attributes: str) -> None:
    if value <= 0:
        return
    counter = workflow.metric_meter().create_counter(f"keel_{name}")
    counter.add(value, {"agent": agent, **attributes})

"""Deterministic orchestration: the agent workflow and the contracts it owns.

from keel.workflows import AgentWorkflow, AgentRunInput, PlanSpec
"""

from keel.workflows.agent import AgentWorkflow
from keel.workflows.contracts import (
    AcceptanceSpec,
    AgentRunInput,
    AgentSpec,
    PlanSpec,
    RetrySpec,
    RunReport,
    StepSpec,
    ToolSpec,
)

__all__ = [
    "AcceptanceSpec",
    "AgentRunInput",
    "AgentSpec",
    "AgentWorkflow",
    "PlanSpec",
    "RetrySpec",
    "RunReport",
    "StepSpec",
    "ToolSpec",
]

"""Deterministic orchestration: the agent workflow and the contracts it owns.

from workflows import AgentWorkflow, AgentRunInput, PlanSpec
"""

from workflows.agent import AgentWorkflow
from workflows.contracts import (
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

"""Keel: run LLM agents durably on Temporal. Everything a user writes comes from here:

    from keel import tool, check, AgentSpec, PlanSpec, StepSpec, KeelPlugin, connect, KeelError

Tools and checks (`tool`, `check`, `tool_context`, `RetrySpec`, `SecretRef`), agents and plans
(`AgentSpec`, `PlanSpec`, `StepSpec`, `AcceptanceSpec`, `ApprovalPolicy`, `ArgRule`, `Grant`,
`Budget`, `Routes`, `Route`, `ModelRef`), the worker side (`KeelPlugin`, `Catalog`,
`AgentWorkflow`), the client side (`connect`, `AgentRunInput`, `RunReport`, `Decision`) and
the errors (`KeelError` and its subclasses).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Where each public name lives. Imported on first use: `import keel.workflows.agent` (the
# workflow sandbox does, for every run) must not import the client, the plugin and every
# activity with it.
_WHERE = {
    "Run": "keel.api",
    "get": "keel.api",
    "pending": "keel.api",
    "outcome": "keel.runs",
    "start": "keel.api",
    "AcceptanceSpec": "keel.workflows.contracts",
    "ActingPolicy": "keel.workflows.contracts",
    "AgentRunInput": "keel.workflows.contracts",
    "AgentSpec": "keel.workflows.contracts",
    "AgentWorkflow": "keel.workflows",
    "ChildSpec": "keel.workflows.contracts",
    "SupervisorSpec": "keel.workflows.contracts",
    "ApprovalPolicy": "keel.workflows.contracts",
    "ArgRule": "keel.workflows.contracts",
    "BlobCorrupted": "keel.shared.errors",
    "Budget": "keel.workflows.contracts",
    "Catalog": "keel.activities",
    "CatalogError": "keel.shared.errors",
    "check": "keel.activities",
    "CheckResult": "keel.activities",
    "CodecError": "keel.shared.errors",
    "connect": "keel.connection",
    "ConnectionFailed": "keel.shared.errors",
    "Decision": "keel.workflows.contracts",
    "DecisionNotConfirmed": "keel.shared.errors",
    "DecisionRefused": "keel.shared.errors",
    "Grant": "keel.workflows.contracts",
    "KeelError": "keel.shared.errors",
    "KeelPlugin": "keel.plugin",
    "ModelRef": "keel.workflows.contracts",
    "ModelReply": "keel.workflows.contracts",
    "ModelRequest": "keel.workflows.contracts",
    "NamedRoutes": "keel.workflows.contracts",
    "McpServer": "keel.workflows.contracts",
    "McpToolPolicy": "keel.workflows.contracts",
    "MemoryPolicy": "keel.workflows.contracts",
    "PredicateSpec": "keel.workflows.contracts",
    "PlanSpec": "keel.workflows.contracts",
    "results_seen": "keel.shared.context_view",
    "RetrySpec": "keel.activities",
    "Route": "keel.workflows.contracts",
    "Routes": "keel.workflows.contracts",
    "RunClosed": "keel.shared.errors",
    "RunExists": "keel.shared.errors",
    "RunRefused": "keel.shared.errors",
    "RegistryError": "keel.shared.errors",
    "JobNotFound": "keel.shared.errors",
    "MemoryUnavailable": "keel.shared.errors",
    "RunNotFound": "keel.shared.errors",
    "RunReport": "keel.workflows.contracts",
    "scripted_model": "keel.activities",
    "scripted_planner": "keel.activities",
    "SecretRef": "keel.activities",
    "SettingError": "keel.shared.errors",
    "StatusAttributeMissing": "keel.shared.errors",
    "StepSpec": "keel.workflows.contracts",
    "StoreUnavailable": "keel.shared.errors",
    "task_queue": "keel.connection",
    "tool": "keel.activities",
    "tool_context": "keel.activities",
    "ToolCallRequest": "keel.workflows.contracts",
    "ToolContext": "keel.activities",
    "TracingUnavailable": "keel.shared.errors",
    "Traversal": "keel.shared.errors",
    "Usage": "keel.workflows.contracts",
    "VERDICT": "keel.workflows.loop",
}

__all__ = [
    "VERDICT",
    "AcceptanceSpec",
    "ActingPolicy",
    "AgentRunInput",
    "AgentSpec",
    "AgentWorkflow",
    "ApprovalPolicy",
    "ArgRule",
    "BlobCorrupted",
    "Budget",
    "Catalog",
    "CatalogError",
    "CheckResult",
    "ChildSpec",
    "CodecError",
    "ConnectionFailed",
    "Decision",
    "DecisionNotConfirmed",
    "DecisionRefused",
    "Grant",
    "JobNotFound",
    "KeelError",
    "KeelPlugin",
    "McpServer",
    "McpToolPolicy",
    "MemoryPolicy",
    "MemoryUnavailable",
    "ModelRef",
    "ModelReply",
    "ModelRequest",
    "NamedRoutes",
    "PlanSpec",
    "PredicateSpec",
    "RegistryError",
    "RetrySpec",
    "Route",
    "Routes",
    "Run",
    "RunClosed",
    "RunExists",
    "RunNotFound",
    "RunRefused",
    "RunReport",
    "SecretRef",
    "SettingError",
    "StatusAttributeMissing",
    "StepSpec",
    "StoreUnavailable",
    "SupervisorSpec",
    "ToolCallRequest",
    "ToolContext",
    "TracingUnavailable",
    "Traversal",
    "Usage",
    "check",
    "connect",
    "get",
    "outcome",
    "pending",
    "results_seen",
    "scripted_model",
    "scripted_planner",
    "start",
    "task_queue",
    "tool",
    "tool_context",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'keel' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:  # the same names, for type checkers and editors
    from keel.activities import (
        Catalog,
        CheckResult,
        RetrySpec,
        SecretRef,
        ToolContext,
        check,
        scripted_model,
        scripted_planner,
        tool,
        tool_context,
    )
    from keel.api import Run, get, pending, start
    from keel.connection import (
        connect,
        task_queue,
    )
    from keel.plugin import (
        KeelPlugin,
    )
    from keel.runs import outcome
    from keel.shared.context_view import (
        results_seen,
    )
    from keel.shared.errors import (
        BlobCorrupted,
        CatalogError,
        CodecError,
        ConnectionFailed,
        DecisionNotConfirmed,
        DecisionRefused,
        KeelError,
        RunClosed,
        RunExists,
        RunNotFound,
        RunRefused,
        SettingError,
        StatusAttributeMissing,
        StoreUnavailable,
        TracingUnavailable,
        Traversal,
    )
    from keel.workflows import (
        AgentWorkflow,
    )
    from keel.workflows.contracts import (
        AcceptanceSpec,
        ActingPolicy,
        AgentRunInput,
        AgentSpec,
        ApprovalPolicy,
        ArgRule,
        Budget,
        ChildSpec,
        Decision,
        Grant,
        ModelRef,
        ModelReply,
        ModelRequest,
        PlanSpec,
        Route,
        Routes,
        RunReport,
        StepSpec,
        SupervisorSpec,
        ToolCallRequest,
        Usage,
    )
    from keel.workflows.loop import (
        VERDICT,
    )

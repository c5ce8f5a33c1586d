"""Side effects: tools, acceptance checks, model providers and stores.

from keel.activities import tool, check, tool_context, RetrySpec
"""

from keel.activities.catalog import Catalog
from keel.activities.context import ToolContext, tool_context
from keel.activities.models import ScriptedModel, ScriptedPlanner, scripted_model, scripted_planner
from keel.activities.store import BlobStore, DirectoryStore
from keel.activities.tool import Tool, check, tool
from keel.shared.errors import CatalogError
from keel.workflows.contracts import CheckResult, RetrySpec, SecretRef

__all__ = [
    "BlobStore",
    "Catalog",
    "CatalogError",
    "CheckResult",
    "DirectoryStore",
    "RetrySpec",
    "ScriptedModel",
    "ScriptedPlanner",
    "SecretRef",
    "Tool",
    "ToolContext",
    "check",
    "scripted_model",
    "scripted_planner",
    "tool",
    "tool_context",
]

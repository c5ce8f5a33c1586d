"""Side effects: tools, acceptance checks, model providers and stores.

from activities import tool, check, tool_context, RetrySpec
"""

from activities.catalog import Catalog
from activities.context import ToolContext, tool_context
from activities.models import ScriptedModel, ScriptedPlanner, scripted_model, scripted_planner
from activities.store import BlobStore, DirectoryStore
from activities.tool import Tool, check, tool
from workflows.contracts import CheckResult, RetrySpec, SecretRef
from workflows.errors import CatalogError

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

"""Keel: run LLM agents durably on Temporal.

from keel import KeelPlugin, connect
from activities import tool, Catalog
from workflows import AgentWorkflow
"""

from keel.connection import ConnectionFailed, connect, task_queue
from keel.plugin import KeelPlugin

__all__ = ["ConnectionFailed", "KeelPlugin", "connect", "task_queue"]

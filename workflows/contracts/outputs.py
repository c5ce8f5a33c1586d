"""What a tool call returns (a module of its own: a model reply carries the outputs of the
quick reads its activity ran, see contracts.models.PrefetchPlan)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from keel.workflows.contracts.base import OmitDefaults, _Strict


class ResultRef(_Strict):
    """A tool result too large for history, kept in the blob store and named by its hash."""

    ref: str
    size: int
    preview: str


class ToolOutput(_Strict, OmitDefaults):
    """What a tool activity returns: a small value inline, or a reference to a stored one."""

    value: Any = None
    ref: ResultRef | None = None
    files_touched: list[str] = Field(default_factory=list)
    attempt: int = 1

"""The base classes every contract shares, and the limits they are built on."""

from __future__ import annotations

import functools
import re
import weakref
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    model_serializer,
)

Effect = Literal["read", "write"]
ToolKind = Literal["tool", "check"]
RunStatus = Literal["DONE", "NOT_DONE", "WAITING_ON_YOU", "RUNNING"]
Choice = Literal["approve", "reject", "edit", "retry", "skip", "abort", "extend", "answer"]
TimeoutAction = Literal["reject", "skip", "abort"]
STATUS_ATTRIBUTE = "KeelStatus"  # a Keyword search attribute: `starter.py pending` lists by it
RUN_PROTOCOL = 1  # what a run's starter speaks: AgentRunInput.protocol
# A NOT_DONE run fails its workflow with an ApplicationError of this type carrying the report
# (its first detail), so Temporal's own list view, CLI and metrics tell it from a DONE one.
NOT_DONE_FAILURE = "NotDone"

TOOL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")
DEFAULT_TASK_QUEUE = "keel"
MAX_STEPS = 1000
MAX_GOAL_CHARS = 16_000
PROGRESS_KEPT = 200  # the report keeps the newest entries of the progress log
# A run keeps its newest live events up to this many bytes, so a client that fell behind by
# less catches up without a gap.
EVENTS_KEPT_BYTES = 256 * 1024
# What of them a continuation carries: the carry is recorded twice (the old segment's last event
# and the new one's first), so all 256 KB would add half a megabyte of history every ~500 steps
# of an agent (bench/peers.py --long). A follower polling even every few seconds is far closer.
EVENTS_CARRIED_BYTES = 32 * 1024
EVENT_TEXT_CHARS = 2000  # an event's message is cut here (the report has the whole story)
# What a continuation carries of what the run has already settled (the carry is recorded twice,
# as the old segment's last event and the new one's first, and every step stays in its
# segment's history for `starter.py show`): the newest CARRY_KEPT settled steps, progress
# entries and model calls, and the audit entries of the segment it ends (at least CARRY_KEPT),
# so each audit entry is in exactly one carry or the final report (`starter.py audit`).
CARRY_KEPT = 20
# Settled steps the report keeps in full; older ones are counted (a run of 10,000 model-chosen
# steps must fit a 2 MB payload when it continues as new or returns its report).
STEPS_KEPT = 100
# The audit trail's newest entries in the report. A run continues as new before AUDIT_KEPT // 2
# entries pile up in one segment, so every entry is in some segment's carry or in the final
# report: `starter.py audit` reads them all.
AUDIT_KEPT = 1000


def audit_kept() -> int:
    """AUDIT_KEPT, read when called (workflow modules are re-imported; this one is shared)."""
    return AUDIT_KEPT


class _Strict(BaseModel):
    """Refuses unknown keys, so a typo in a plan file is an error rather than a silent default."""

    model_config = ConfigDict(extra="forbid")


class _Frozen(_Strict):
    """Strict and immutable: specs and policies, shared freely once made."""

    model_config = ConfigDict(extra="forbid", frozen=True)


FrozenT = TypeVar("FrozenT", bound=_Frozen)
# One object per distinct spec among the runs a worker holds; an entry goes with its last user.
_INTERNED: weakref.WeakValueDictionary[str, _Frozen] = weakref.WeakValueDictionary()


def interned(spec: FrozenT) -> FrozenT:
    """The one object equal to `spec` (equal JSON, same type) that the worker's runs share. A
    cached run holds its agent and tool specs for its whole life, decoded anew for each run
    (a few KB each) though most runs share them. Frozen, so sharing changes nothing a run
    does; two workflow threads racing here only leave two copies alive. Fields JSON leaves
    out (AgentSpec.output_type) are not compared: intern only what was read from a payload."""
    key = f"{type(spec).__qualname__}:{spec.model_dump_json()}"
    return _INTERNED.setdefault(key, spec)  # type: ignore[return-value]


class OmitDefaults(BaseModel):
    """Serialized without the fields that hold their default (they come back as defaults when
    read), by `model_dump` too. On Temporal's wire Keel's converter does this for every type
    (keel.plugin.CompactPydanticJSON); these types keep it for the JSON they make elsewhere:
    live events on their streams and in `watch --json`, and the messages of the context links
    a model call writes to the blob store."""

    @model_serializer(mode="wrap")
    def _without_defaults(
        self, handler: SerializerFunctionWrapHandler, info: SerializationInfo
    ) -> Any:
        data = handler(self)
        if info.exclude_defaults or not isinstance(data, dict):
            return data  # pydantic left them out already (Keel's converter asks it to)
        for name, default, factory in _defaults_of(type(self)):
            if name in data and getattr(self, name) == (factory() if factory else default):
                del data[name]
        return data


@functools.cache
def _defaults_of(model: type[BaseModel]) -> tuple[tuple[str, Any, Callable[[], Any] | None], ...]:
    """(name, default, default factory) of each of `model`'s fields that has a default: read
    once a class, not at every dump (a model call dumps its messages at every step)."""
    return tuple(
        (name, field.default, field.default_factory)  # type: ignore[misc]
        for name, field in model.model_fields.items()
        if not field.is_required()
    )


class _Wire(_Frozen, OmitDefaults):
    pass

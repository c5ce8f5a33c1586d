"""A model's conversation kept by reference, so the history grows linearly with the steps.

The workflow sends a model call only the messages added since its previous call and the
reference that call returned. The model activity rebuilds the whole conversation from the
blob store (a chain of content-addressed blobs, each holding its parent's reference and the
new messages), stores the new link, applies the context policy (newest results in full, older
ones as one-line summaries) and asks the model with that view. A replay reads nothing from the
store: it sees the recorded reply and reference.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError

from keel.activities.store import BlobStore
from keel.shared.context_view import model_view
from keel.shared.errors import BlobCorrupted
from keel.workflows.contracts import (
    Message,
    ModelReply,
    ModelRequest,
    ToolSchema,
    preamble_blob,
)

CACHE_SIZE = 256  # conversations this worker served last (the sticky queue sends them back here)
# Model calls read and write the store in threads (it may be a bucket across the network).
_lock = threading.Lock()
T = TypeVar("T")


class _Recent(Generic[T]):
    """The newest CACHE_SIZE entries by reference, safe from several threads."""

    def __init__(self) -> None:
        self._entries: OrderedDict[str, T] = OrderedDict()

    def get(self, ref: str) -> T | None:
        with _lock:
            return self._entries.get(ref)

    def clear(self) -> None:
        """Forget everything, as a restarted worker has (the tests use it)."""
        with _lock:
            self._entries.clear()

    def put(self, ref: str, value: T) -> None:
        with _lock:
            self._entries[ref] = value
            self._entries.move_to_end(ref)
            while len(self._entries) > CACHE_SIZE:
                self._entries.popitem(last=False)


@dataclass(frozen=True)
class Version:
    """One version of a conversation: the first `length` messages of a list that every later
    version of the same conversation shares (appending to the newest version extends it in
    place; appending to an older one, a retried call that answered otherwise, copies). So a
    worker remembering the last versions of a 10,000-step conversation holds it once, not once
    a version, and nothing per call walks the whole of it."""

    messages: list[Message]
    length: int
    tools: int  # tool results among them

    def extended(self, added: Sequence[Message]) -> Version:
        tools = self.tools + sum(1 for m in added if m.role == "tool")
        with _lock:
            if len(self.messages) == self.length:
                self.messages.extend(added)
                shared = self.messages
            else:
                shared = self.messages[: self.length] + list(added)
        return Version(shared, self.length + len(added), tools)


_conversations: _Recent[Version] = _Recent()
# What each answered call asked with (model, policy, preamble_ref), by the context it returned.
_settings: _Recent[dict[str, Any]] = _Recent()
_preambles: _Recent[tuple[str, tuple[ToolSchema, ...]]] = _Recent()


def load(store: BlobStore, ref: str | None) -> Version:
    """The conversation `ref` names: from this worker's cache, else rebuilt from the store's
    chain of links back to one it has (or to the first)."""
    chain: list[list[Message]] = []
    known = Version([], 0, 0)
    while ref is not None:
        cached = _conversations.get(ref)
        if cached is not None:
            known = cached
            break
        link = json.loads(_read(store, ref, "context"))
        chain.append([Message.model_validate(m) for m in link["messages"]])
        ref = link["parent"]
    for added in reversed(chain):
        known = known.extended(added)
    return known


def has_conversation(request: ModelRequest) -> bool:
    """Whether this worker holds the conversation the request continues (expand then reads at
    most a link or two; without it, it walks the chain of links back, a blob each)."""
    return request.context_ref is None or _conversations.get(request.context_ref) is not None


def _run_id() -> str | None:
    """The run a blob is written for (pinned to it, so prune keeps it while the run is open)."""
    return activity.info().workflow_id if activity.in_activity() else None


def _read(store: BlobStore, ref: str, what: str) -> bytes:
    """A blob the model's context needs; a missing or tampered one fails the call for good
    (asking again reads the same store)."""
    try:
        return store.get(ref)
    except FileNotFoundError:
        raise ApplicationError(
            f"{what} {ref} is not in the blob store {store.location}: workers serving one run "
            "must share their store (KEEL_STORE_DIR or KEEL_STORE_URL)",
            type="ContextMissing",
            non_retryable=True,
        ) from None
    except BlobCorrupted as err:
        raise ApplicationError(f"{what}: {err}", type="BlobCorrupted", non_retryable=True) from None


def preamble(store: BlobStore, request: ModelRequest) -> tuple[str, tuple[ToolSchema, ...]]:
    """The call's system prompt and tool schemas: stored when the request carries them, read
    back (this worker's cache first) when it carries only their reference."""
    ref = request.preamble_ref
    if ref is None:
        return request.system, request.tools
    if request.system or request.tools:
        store.put(preamble_blob(request.system, request.tools), run_id=_run_id())
        found = (request.system, request.tools)
    elif (cached := _preambles.get(ref)) is not None:
        found = cached
    else:
        body = json.loads(_read(store, ref, "system prompt and tools"))
        tools = tuple(ToolSchema.model_validate(t) for t in body["tools"])
        found = (body["system"], tools)
    _preambles.put(ref, found)
    return found


INHERITED = ("model", "policy", "preamble_ref")


def inherit(store: BlobStore, request: ModelRequest) -> ModelRequest:
    """The request with what it left out filled in from the call that returned its context."""
    ref = request.context_ref
    missing = [name for name in INHERITED if getattr(request, name) is None]
    if ref is None or not missing:
        return request
    settings = _settings.get(ref)
    if settings is None:
        settings = json.loads(_read(store, ref, "context")).get("settings")
        if settings is None:
            raise ApplicationError(
                f"context {ref} records no model settings (written by an older Keel worker): "
                "let runs started before the upgrade finish on the workers they started on",
                type="ContextMissing",
                non_retryable=True,
            )
        _settings.put(ref, settings)
    known = ModelRequest.model_validate({"agent": "", "kind": "act", "messages": [], **settings})
    return request.model_copy(update={name: getattr(known, name) for name in missing})


def expand(request: ModelRequest) -> tuple[ModelRequest, Version, ModelRequest]:
    """The request as the provider sees it (the conversation's opening and newest messages, by
    policy), the whole conversation with its new messages, and the request with what it left
    out filled in."""
    store = BlobStore.from_env()
    request = inherit(store, request)
    system, tools = preamble(store, request)
    conversation = load(store, request.context_ref).extended(request.messages)
    assert request.policy is not None
    shown = model_view(
        system,
        conversation.messages,
        request.policy,
        length=conversation.length,
        tool_results=conversation.tools,
    )
    update = {"messages": shown, "context_ref": None, "policy": None, "preamble_ref": None}
    view = request.model_copy(update={**update, "system": system, "tools": tools})
    return view, conversation, request


def answered(request: ModelRequest, conversation: Version, reply: ModelReply) -> str:
    """Store the conversation with the model's answer appended (the workflow appends the very
    same message, so it need not send it back) and what the call asked with (the next call may
    leave it out), and return its reference. `request` is the expanded one (inherit)."""
    said = Message(role="assistant", content=reply.text, tool_calls=reply.tool_calls)
    settings = request.model_dump(mode="json", include=set(INHERITED), exclude_none=True)
    link = {
        "parent": request.context_ref,
        # The same JSON as a plain model_dump (Message leaves its defaults out), made by pydantic.
        "messages": [
            m.model_dump(mode="json", exclude_defaults=True) for m in [*request.messages, said]
        ],
        "settings": settings,
    }
    data = json.dumps(link, separators=(",", ":"), sort_keys=True).encode()
    ref = BlobStore.from_env().put(data, run_id=_run_id())
    _conversations.put(ref, conversation.extended([said]))
    _settings.put(ref, settings)
    return ref

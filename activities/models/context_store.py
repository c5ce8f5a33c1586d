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
from collections import OrderedDict

from temporalio.exceptions import ApplicationError

from activities.store import BlobStore
from workflows.loop import context
from workflows.model_contracts import Message, ModelRequest

CACHE_SIZE = 256  # conversations this worker served last (the sticky queue sends them back here)
_cache: OrderedDict[str, list[Message]] = OrderedDict()


def _remember(ref: str, messages: list[Message]) -> None:
    _cache[ref] = messages
    _cache.move_to_end(ref)
    while len(_cache) > CACHE_SIZE:
        _cache.popitem(last=False)


def load(store: BlobStore, ref: str | None) -> list[Message]:
    chain: list[list[Message]] = []
    while ref is not None and ref not in _cache:
        try:
            link = json.loads(store.get(ref))
        except FileNotFoundError:
            raise ApplicationError(
                f"context {ref} is not in the blob store (KEEL_STORE_DIR): workers serving one "
                "run must share their store",
                type="ContextMissing",
                non_retryable=True,
            ) from None
        chain.append([Message.model_validate(m) for m in link["messages"]])
        ref = link["parent"]
    messages = list(_cache[ref]) if ref is not None else []
    for added in reversed(chain):
        messages.extend(added)
    return messages


def expand(request: ModelRequest) -> tuple[ModelRequest, str]:
    """The request as the provider sees it (the whole conversation, trimmed by policy), and the
    reference of the conversation including this call's new messages."""
    store = BlobStore.from_env()
    messages = load(store, request.context_ref) + list(request.messages)
    link = {
        "parent": request.context_ref,
        "messages": [m.model_dump(mode="json") for m in request.messages],
    }
    ref = store.put(json.dumps(link, separators=(",", ":"), sort_keys=True).encode())
    _remember(ref, messages)
    assert request.policy is not None
    view = context(request.system, messages, request.policy)
    return request.model_copy(update={"messages": view, "context_ref": None, "policy": None}), ref

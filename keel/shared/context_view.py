"""The model's view of a long conversation: what the next model call is shown, bounded however
long the run (the opening, the newest turns, recent results in full and older ones trimmed).
Pure: the workflow and the model activity compute the same view from the same turns.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from keel.workflows.contracts import ActingPolicy, Message


def model_view(
    system: str,
    turns: Sequence[Message],
    policy: ActingPolicy,
    length: int | None = None,
    tool_results: int | None = None,
) -> tuple[Message, ...]:
    """The messages for the next model call. The opening messages (before the model's first
    answer) and the newest `keep_turns` messages go to the model; what lies between is counted
    in the system prompt, so the request (and the work to build it) stays bounded however long
    the run. Within that, the newest `keep_results` tool results go in full (cut at
    `result_chars`) and older ones as a one-line summary. `length` (default: all) takes the
    first messages of `turns` only; `tool_results`, when the caller knows it, is how many of
    those are tool results (else they are counted)."""
    end = len(turns) if length is None else length
    opening = next((i for i in range(end) if turns[i].role == "assistant"), end)
    start = max(opening, end - policy.keep_turns)
    while start < end and turns[start].role == "tool":
        start += 1  # a tool result never goes without the call it answers
    head, window = list(turns[:opening]), list(turns[start:end])
    if start > opening:
        if tool_results is None:
            skipped_results = sum(1 for i in range(opening, start) if turns[i].role == "tool")
        else:
            shown = sum(1 for m in head + window if m.role == "tool")
            skipped_results = tool_results - shown
        system += (
            f"\n\n[Earlier in this run: {start - opening} messages not shown, {skipped_results} "
            "of them tool results; the newest messages follow.]"
        )
    visible = head + window
    # Results the model dropped itself (drop_results): only their call's id stays. A drop
    # answers a later call than the result it drops, so both are in view when it matters.
    dropped = {call for m in visible for call in m.drops}
    if dropped:
        visible = [
            m.model_copy(update={"content": DROPPED})
            if m.role == "tool" and m.tool_call_id in dropped
            else m
            for m in visible
        ]
    results_at = [i for i, m in enumerate(visible) if m.role == "tool"]
    old = set(results_at[: max(0, len(results_at) - policy.keep_results)])
    shown_messages: list[Message] = [Message(role="system", content=system)]
    for i, message in enumerate(visible):
        if message.role != "tool":
            shown_messages.append(message)
            continue
        text = message.content
        if i in old:
            line = " ".join(text.split())
            text = f"[older result, trimmed] {line[: policy.summary_chars]}"
        elif len(text) > policy.result_chars:
            text = text[: policy.result_chars] + f" [... {len(text) - policy.result_chars} more]"
        shown_messages.append(message.model_copy(update={"content": text}))
    return tuple(shown_messages)


DROPPED = "[result dropped from context by the agent]"
SKIPPED_RESULTS = re.compile(r"\[Earlier in this run: \d+ messages not shown, (\d+) of them")


def results_seen(messages: tuple[Message, ...] | list[Message]) -> int:
    """Tool results in a model call's view, those counted in the system prompt included."""
    shown = sum(1 for m in messages if m.role == "tool")
    system = next((m.content for m in messages if m.role == "system"), "")
    found = SKIPPED_RESULTS.search(system)
    return shown + (int(found.group(1)) if found else 0)

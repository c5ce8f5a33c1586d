"""Memory for agents: the tools any agent can be granted (remember, recall, forget, under
`memory:write:{scope}` / `memory:read:{scope}` like any tool's scopes), the activities that give
a run its opening context and record its episode, and the consolidation tools of the built-in
`memory-consolidator` agent (a plan, schedulable as a job).

    AgentSpec(name="assistant", tools=("remember", "recall", "forget"),
              grants=(Grant(scope="memory:*:user:*"),), memory=MemoryPolicy(scope="user:ann"))
"""

from __future__ import annotations

import os
import re
from collections import Counter
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from temporalio import activity

from keel.activities.context import tool_context
from keel.activities.memory.store import MemoryStore, canonical, open_memory
from keel.activities.models.scripted import scripted_planner
from keel.activities.tool import tool
from keel.workflows.contracts import AgentSpec, Grant, PlanSpec, StepSpec
from keel.workflows.contracts.memory import (
    EPISODE,
    Assertion,
    EpisodeRequest,
    Fact,
    MemoryContextRequest,
    PredicateSpec,
)

CONSOLIDATOR = "memory-consolidator"
META = "meta:"  # facts about facts: what consolidation changed, under meta:SCOPE
EPISODE_SUBJECT = "runs"
MULTI = PredicateSpec(multi=True)


@lru_cache(maxsize=4)
def _store(url: str) -> MemoryStore:
    return open_memory(url or None)


def memory() -> MemoryStore:
    """This process's store (KEEL_MEMORY_URL, else .keel/memory.db), opened once."""
    return _store(os.environ.get("KEEL_MEMORY_URL", ""))


def brief(fact: Fact) -> dict[str, Any]:
    """A fact as a model (or a person) reads it."""
    out: dict[str, Any] = {
        "id": fact.id,
        "subject": fact.subject,
        "predicate": fact.predicate,
        "value": fact.value,
        "since": fact.valid_from.isoformat(),
    }
    if fact.valid_to is not None:
        out["until"] = fact.valid_to.isoformat()
    if fact.contested:
        out["contested"] = True
    if fact.confidence != 1.0:
        out["confidence"] = fact.confidence
    return out


@tool(effect="write", timeout=30, scopes=("memory:write:{scope}",))
def remember(
    scope: str,
    subject: str,
    predicate: str,
    value: Any,
    valid_from: datetime | None = None,
    confidence: float = 1.0,
) -> dict[str, Any]:
    """Remember that `subject` `predicate` `value` (e.g. ann lives_in Portland), true from
    `valid_from` (default now). A new value of a single-valued predicate replaces the old one;
    the old stays in history."""
    ctx = tool_context()  # recorded under the call's idempotency key: once, however retried
    done = memory().remember(
        Assertion(
            scope=scope,
            subject=subject,
            predicate=predicate,
            value=value,
            valid_from=valid_from,
            confidence=confidence,
            source=f"{ctx.run_id}:{ctx.step}",
        ),
        key=ctx.idempotency_key,
    )
    said: dict[str, Any] = {"fact": brief(done.fact)}
    if done.replaced:
        said["replaced"] = len(done.replaced)
    if done.contested_with:
        said["contested"] = "another value holds at the same time: a human will decide"
    if done.repeated:
        said["already_known"] = True
    return said


@tool(effect="read", timeout=30, scopes=("memory:read:{scope}",))
def recall(
    scope: str,
    subject: str | None = None,
    predicate: str | None = None,
    as_of: datetime | None = None,
) -> list[dict[str, Any]]:
    """What is remembered in `scope` (of `subject`, `predicate`), true now or at `as_of`.
    Contested facts come back with every side, flagged."""
    facts = memory().recall(scope, subject, predicate, valid_at=as_of, limit=100)
    return [brief(f) for f in facts]


@tool(effect="write", timeout=30, scopes=("memory:write:{scope}",))
def forget(scope: str, subject: str, predicate: str, reason: str) -> dict[str, Any]:
    """Stop believing what is remembered of `subject` `predicate` (closed, never erased, and
    audited with `reason`)."""
    ctx = tool_context()
    closed = memory().forget(
        scope, subject, predicate, by=f"{ctx.run_id}:{ctx.step}", reason=reason
    )
    return {"forgotten": len(closed)}


def episodes_of(store: MemoryStore, scope: str) -> list[Fact]:
    """The scope's current episodes, oldest first by when they happened (a condensed one
    stands where its oldest run did)."""
    found = store.recall(scope, EPISODE_SUBJECT, EPISODE, limit=100_000)
    return sorted(found, key=lambda f: f.valid_from)


WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> set[str]:
    return set(WORD.findall(text.lower()))


def opening_context(store: MemoryStore, request: MemoryContextRequest) -> str | None:
    """The current facts of the scope most relevant to the goal (shared words first, newest
    next), bounded in count and bytes, and the newest episodes."""
    policy, goal = request.policy, words(request.goal)
    facts = [f for f in store.recall(request.scope, limit=1000) if f.predicate != EPISODE]

    def relevance(fact: Fact) -> tuple[int, float]:
        text = f"{fact.subject} {fact.predicate} {canonical(fact.value)}"
        return (len(goal & words(text)), fact.recorded_at.timestamp())

    lines: list[str] = []
    used = 0
    for fact in sorted(facts, key=relevance, reverse=True)[: policy.recall_limit]:
        flag = " [contested]" if fact.contested else ""
        line = f"- {fact.subject} {fact.predicate} {canonical(fact.value)}{flag}"
        if used + len(line) > policy.recall_bytes:
            break
        lines.append(line)
        used += len(line)
    episodes = []
    if policy.episodes and policy.episodes_shown:
        runs = episodes_of(store, request.scope)
        for fact in runs[-policy.episodes_shown :]:
            value = fact.value if isinstance(fact.value, dict) else {}
            said = value.get("summary") or value.get("reason") or ""
            episodes.append(f"- {value.get('run_id')} ({value.get('status')}): {said}"[:400])
    if not lines and not episodes:
        return None
    parts = [f"What you remember (memory scope {request.scope}, as currently believed):"]
    parts += lines or ["- nothing yet"]
    if episodes:
        parts += ["Your previous runs, newest last:", *episodes]
    return "\n".join(parts)


@activity.defn(name="keel.memory_context")
async def memory_context(request: MemoryContextRequest) -> str:
    store = memory()
    for predicate, rule in request.policy.predicates.items():
        store.declare(request.scope, predicate, rule)
    return opening_context(store, request) or ""


@activity.defn(name="keel.memory_episode")
async def memory_episode(request: EpisodeRequest) -> str:
    """Record the run's outcome once (keyed by its run id), so the next run can see it."""
    value = {
        "run_id": request.run_id,
        "status": request.status,
        "summary": request.summary[:1000],
        "reason": request.reason[:1000],
        "files_touched": request.files_touched[:50],
    }
    done = memory().remember(
        Assertion(
            scope=request.scope,
            subject=EPISODE_SUBJECT,
            predicate=EPISODE,
            value=value,
            valid_from=request.at,
            source=request.run_id,
            rule=MULTI,
        ),
        key=f"episode:{request.scope}:{request.run_id}",
    )
    return done.fact.id


MEMORY_ACTIVITIES = (memory_context, memory_episode)


# --- consolidation: a sleep cycle for a scope -------------------------------------------------


def _noted(store: MemoryStore, scope: str, fact_id: str, change: str, value: Any) -> None:
    """A fact about a fact: what consolidation did to it, and why."""
    ctx = tool_context()
    store.remember(
        Assertion(
            scope=META + scope,
            subject=fact_id,
            predicate=change,
            value=value,
            source=f"{ctx.run_id}:{ctx.step}",
            rule=MULTI,
        ),
        key=f"{ctx.idempotency_key}:{fact_id}",
    )


@tool(effect="write", timeout=120, scopes=("memory:write:{scope}",))
def expire_facts(scope: str) -> dict[str, int]:
    """Supersede the facts of `scope` past their expiry."""
    store = memory()
    gone = store.expire(scope)
    for fact_id in gone:
        _noted(store, scope, fact_id, "expired", datetime.now(UTC).isoformat())
    return {"expired": len(gone)}


@tool(effect="write", timeout=120, scopes=("memory:write:{scope}",))
def merge_duplicates(scope: str) -> dict[str, int]:
    """Merge current facts that say the same thing (same subject and predicate, values equal
    but for case and spacing): the oldest stays, the others point to it."""
    store = memory()
    seen: dict[tuple[str, str, str], Fact] = {}
    merged = 0
    for fact in store.recall(scope, limit=100_000):
        text = canonical(fact.value).lower()
        key = (fact.subject, fact.predicate, re.sub(r"\s+", " ", text))
        first = seen.setdefault(key, fact)
        if first.id != fact.id and store.supersede(fact.id, f"merged into {first.id}"):
            _noted(store, scope, fact.id, "merged_into", first.id)
            merged += 1
    return {"merged": merged}


@tool(effect="write", timeout=120, scopes=("memory:write:{scope}",))
def condense_episodes(scope: str, keep: int = 5) -> dict[str, int]:
    """Condense all but the newest `keep` episodes into one (their statuses and summaries,
    bounded); the condensed ones point to it."""
    store = memory()
    episodes = episodes_of(store, scope)
    old = episodes[: max(0, len(episodes) - keep)]
    if len(old) < 2:
        return {"condensed": 0}
    lines = []
    for fact in old:
        value = fact.value if isinstance(fact.value, dict) else {}
        said = value.get("summary") or value.get("reason") or ""
        lines.append(f"{value.get('run_id')} {value.get('status')}: {said}"[:200])
    ctx = tool_context()
    statuses = Counter(f.value.get("status") for f in old if isinstance(f.value, dict))
    summary = {
        "run_id": f"{len(old)} runs",
        "status": ", ".join(f"{status} x{n}" for status, n in sorted(statuses.items())),
        "summary": " | ".join(lines)[:4000],
        "condensed": [f.id for f in old],
    }
    made = store.remember(
        Assertion(
            scope=scope,
            subject=EPISODE_SUBJECT,
            predicate=EPISODE,
            value=summary,
            valid_from=old[0].valid_from,
            source=f"{ctx.run_id}:{ctx.step}",
            rule=MULTI,
        ),
        key=ctx.idempotency_key,
    )
    for fact in old:
        if store.supersede(fact.id, f"condensed into {made.fact.id}"):
            _noted(store, scope, fact.id, "condensed_into", made.fact.id)
    return {"condensed": len(old)}


MEMORY_TOOLS = (remember, recall, forget, expire_facts, merge_duplicates, condense_episodes)

CONSOLIDATE = re.compile(r"consolidate (\S+)")

memory_consolidator = AgentSpec(
    name=CONSOLIDATOR,
    description="Expires, merges and condenses one memory scope (a sleep cycle); schedulable "
    "as a job: goal 'consolidate SCOPE'.",
    tools=("expire_facts", "merge_duplicates", "condense_episodes"),
    grants=(Grant(scope="memory:write:**"),),
    unverified_ok=True,  # what it changed is recorded as facts about facts
)


@scripted_planner(CONSOLIDATOR)
def plan_consolidation(goal: str) -> PlanSpec:
    match = CONSOLIDATE.search(goal)
    if match is None:
        raise ValueError(f"the goal names no scope: 'consolidate SCOPE', not {goal!r}")
    scope = match.group(1)
    return PlanSpec(
        goal=goal,
        steps=[
            StepSpec(title=f"expire {scope}", tool="expire_facts", args={"scope": scope}),
            StepSpec(title=f"merge {scope}", tool="merge_duplicates", args={"scope": scope}),
            StepSpec(title=f"condense {scope}", tool="condense_episodes", args={"scope": scope}),
        ],
        unverified_ok=True,
    )

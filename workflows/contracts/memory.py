"""Memory across runs: versioned facts with valid time and transaction time, expiry and
conflicts (activities/memory holds the stores; these are the shapes that cross boundaries).

A fact says `subject predicate value` within a scope ("user:ann lives_in Portland"), true in the
world from `valid_from` until `valid_to`, and believed by Keel from `recorded_at` until
`superseded_at`. Nothing is erased: a new value closes the old one's interval, a forget or an
expiry supersedes it, and `as_of` reads either timeline back.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import Field

from keel.workflows.contracts.base import _Frozen, _Strict

MEMORY_NAME = r"^[A-Za-z0-9_.:@/-]{1,200}$"  # scopes, subjects and predicates
OnConflict = Literal["ask", "newest"]
EPISODE = "episode"  # the predicate a run's outcome is recorded under (multi-valued)


class PredicateSpec(_Frozen):
    """How a predicate behaves. Single-valued by default: a new value closes the old one."""

    multi: bool = False  # several values hold at once (e.g. speaks: English, French)
    ttl: timedelta | None = None  # facts expire this long after they were recorded
    # Two values at the same valid time: the higher confidence wins; at equal confidence "ask"
    # leaves both current and contested until a human resolves it (`memory resolve`), and
    # "newest" lets the newest recorded win (as it does whatever the confidence).
    on_conflict: OnConflict = "ask"


class MemoryPolicy(_Frozen):
    """An agent's memory (AgentSpec.memory): what its runs are shown, and what they leave."""

    scope: str | None = Field(None, pattern=MEMORY_NAME)  # default: "agent:NAME"
    recall_limit: int = Field(20, ge=0, le=200)  # facts in the opening context, at most
    recall_bytes: int = Field(4000, ge=0, le=64_000)  # and bytes
    episodes: bool = True  # record each run's outcome, and show the newest ones
    episodes_shown: int = Field(3, ge=0, le=20)
    predicates: dict[str, PredicateSpec] = Field(default_factory=dict)


class Assertion(_Strict):
    """What a remember asks the store to record."""

    scope: str = Field(pattern=MEMORY_NAME)
    subject: str = Field(pattern=MEMORY_NAME)
    predicate: str = Field(pattern=MEMORY_NAME)
    value: Any
    valid_from: datetime | None = None  # default: when it is recorded
    valid_to: datetime | None = None
    expires_at: datetime | None = None
    source: str = ""  # a run id and step, or a person
    confidence: float = Field(1.0, ge=0.0, le=1.0)
    # How the predicate behaves; None: as declared for the scope (MemoryPolicy.predicates),
    # else single-valued.
    rule: PredicateSpec | None = None


class Fact(_Strict):
    id: str
    scope: str
    subject: str
    predicate: str
    value: Any
    valid_from: datetime
    valid_to: datetime | None = None
    recorded_at: datetime
    superseded_at: datetime | None = None
    expires_at: datetime | None = None
    source: str = ""
    confidence: float = 1.0
    contested: bool = False  # a conflict waiting for resolution: recall returns every side
    note: str = ""  # why it was superseded (replaced, forgotten, expired, resolved)


class Remembered(_Strict):
    """What a remember did: the fact as recorded, and the facts it closed or contests."""

    fact: Fact
    replaced: list[str] = Field(default_factory=list)
    contested_with: list[str] = Field(default_factory=list)
    repeated: bool = False  # the same key was recorded before: nothing new


class MemoryContextRequest(_Strict):
    scope: str
    goal: str
    policy: MemoryPolicy


class EpisodeRequest(_Strict):
    """A run's outcome, recorded as an episode fact of its agent's (or job's) scope."""

    scope: str
    run_id: str
    agent: str
    status: str
    summary: str = ""
    reason: str = ""
    files_touched: list[str] = Field(default_factory=list)
    at: datetime

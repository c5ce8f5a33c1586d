"""A run's input, and what a run hands its own continuation."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from keel.workflows.contracts.base import MAX_GOAL_CHARS, RUN_PROTOCOL, _Strict
from keel.workflows.contracts.jobs import JobContext
from keel.workflows.contracts.models import Message
from keel.workflows.contracts.plan import AgentSpec, PlanSpec
from keel.workflows.contracts.policy import Ceiling, ToolSpec
from keel.workflows.contracts.report import RunEvent, RunReport


class AgentRunInput(_Strict):
    """The workflow's input: small, and free of secrets (those travel as references).

    The worker is the authority on agents: it resolves `agent` by name from its own catalog
    (keel.resolve_agent) and takes nothing else from it but budget limits lower than its own.
    """

    agent: AgentSpec
    # The goal travels in every segment's input and report: long material goes by reference.
    goal: str = Field(min_length=1, max_length=MAX_GOAL_CHARS)
    plan: PlanSpec | None = None
    # Upsert the KeelStatus search attribute (the namespace must have it registered).
    status_attribute: bool = False
    # Idempotency keys are the run id and the step (stable when a closed run's id is started
    # again with --rerun, so a write that completed is not repeated); a scope gives a rerun
    # keys of its own (--rerun --new-keys).
    key_scope: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,32}$")
    # A child of a supervisor: the supervisor's workflow id (told when this run ends) and the
    # child's key there.
    parent: str | None = None
    child_key: str | None = None
    # A run delegated to by other agents: what each of them may do (the run may do no more)
    # and their run ids, oldest first. Only ever narrows: the worker's grants still apply.
    ceilings: tuple[Ceiling, ...] = ()
    chain: tuple[str, ...] = ()
    # Model routes the worker offers by name (NamedRoutes), instead of the agent's own.
    routes: str | None = Field(None, max_length=64)
    # Draft mode: read tools run, write tools do not (each is recorded as "would write").
    draft: bool = False
    # A run started by a job's schedule: the job it belongs to (see keel/jobs.py).
    job: JobContext | None = None
    # Set by the run itself when it continues as new: the state it carries on with.
    carry: RunCarry | None = None
    # The run protocol its starter speaks (RUN_PROTOCOL; keel.runs.start_run and Keel's own
    # child runs set it). 0, every input written before it: the run replays as such runs ran.
    # 1: the run needs no patch marker to know its worker resolves its agent, and writes its
    # status (memo, KeelStatus) only where it changed (a starter may set KeelStatus RUNNING).
    # Up to four commands fewer in a run's first workflow task: less to send, and less for the
    # worker to hold for each cached run.
    protocol: int = Field(0, ge=0, le=RUN_PROTOCOL)


class RunCarry(_Strict):
    """What a run hands to its continuation: the plan state, not the history behind it."""

    report: RunReport
    tools: dict[str, ToolSpec] = Field(default_factory=dict)
    turns: list[Message] = Field(default_factory=list)  # the model has not seen these yet
    threads: dict[str, str | None] = Field(default_factory=dict)  # model context references
    repeats: dict[str, int] = Field(default_factory=dict)
    asked: int = 0
    turn: int = 0
    events: list[RunEvent] = Field(default_factory=list)  # the newest live events
    next_event: int = 0  # the offset the continuation's first new event takes
    restarts_at: list[datetime] = Field(default_factory=list)  # a supervisor's, for intensity


AgentRunInput.model_rebuild()  # RunCarry is defined after it

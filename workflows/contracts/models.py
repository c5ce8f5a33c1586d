"""Contracts of the model layer: which model answers (routes with fallback), what it is sent,
what comes back, what it costs, and the budgets that stop a runaway agent.

No secret is ever a field here: a model names the environment variable that holds its key
(`api_key_env`), and only the model activity reads it.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import timedelta
from typing import Any, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from keel.workflows.contracts.base import _Frozen, _Strict, _Wire
from keel.workflows.contracts.outputs import ToolOutput
from keel.workflows.contracts.policy import Ceiling, Grant, RetrySpec

Provider = Literal["scripted", "openai", "anthropic"]
StepKind = Literal["plan", "act", "verify"]
ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,127}$")
FINISH, ASK_HUMAN = "finish", "ask_human"  # the two actions a model takes besides tool calls
DELEGATE = "delegate"  # a third, for an agent with delegates
DROP_RESULTS = "drop_results"  # and one for an agent that prunes its own context


class ModelRef(_Wire):
    """One model at one provider, with its settings and its price."""

    provider: Provider
    model: str = Field(min_length=1)
    # OpenAI-compatible servers (vLLM, Ollama, llama.cpp) differ only by this; None: the
    # provider's public endpoint.
    base_url: str | None = None
    api_key_env: str | None = None  # the NAME of the variable holding the key, never the key
    max_output_tokens: int = Field(1024, ge=1, le=200_000)
    reasoning_effort: Literal["low", "medium", "high"] | None = None
    timeout: timedelta = timedelta(seconds=60)
    # Retries of this model before the route falls back to the next (bounded, like a tool's).
    retry: RetrySpec = RetrySpec()
    # US dollars per million tokens, for the cost in the report and the cost budget.
    input_price: float = Field(0.0, ge=0)
    output_price: float = Field(0.0, ge=0)
    # A model that answers within seconds on the worker's machine (the scripted model, a small
    # local server) can be asked as a local activity: same bounded retries, no round trip
    # through the server's task queue (bench/peers.py: keel-react-lm). Keep it off for
    # remote providers: a local activity holds the workflow task while it runs.
    local: bool = False
    # Stream the answer (SSE): the run's live events carry the text as it comes; the reply,
    # usage and cost are the same as unstreamed.
    stream: bool = False

    @model_validator(mode="after")
    def _local_is_quick(self) -> ModelRef:
        if self.local and self.timeout > timedelta(seconds=60):
            raise ValueError("local=True is for quick models: timeout must be at most 60 s")
        return self

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not ENV_NAME.match(value):
            # A key pasted here by mistake would otherwise travel in the workflow input.
            raise ValueError("api_key_env names an environment variable (e.g. OPENAI_API_KEY)")
        return value

    @property
    def label(self) -> str:
        return f"{self.provider}:{self.model}"

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_price + output_tokens * self.output_price) / 1e6


class Route(_Frozen):
    """Models to try in order: the next one answers when the previous one's retries run out."""

    models: tuple[ModelRef, ...] = Field(min_length=1, max_length=8)


class Routes(_Frozen):
    plan: Route | None = None
    act: Route | None = None
    verify: Route | None = None


class NamedRoutes(_Frozen):
    """Model routes a worker offers by name: a run (a job's `routes = "NAME"`) may take them
    instead of its agent's own. Declared in the worker's catalog, like agents, so a client
    picks among routes the operator chose and never sends a model of its own."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str = ""
    routes: Routes

    def over(self, own: Routes) -> Routes:
        """`own` with each kind these routes set replaced."""
        r = self.routes
        return Routes(plan=r.plan or own.plan, act=r.act or own.act, verify=r.verify or own.verify)


class Budget(_Frozen):
    """Per-run limits, checked in the workflow before every call. None: no limit."""

    max_tool_calls: int | None = Field(None, ge=0)
    max_model_calls: int | None = Field(None, ge=0)
    max_input_tokens: int | None = Field(None, ge=0)
    max_output_tokens: int | None = Field(None, ge=0)
    max_cost: float | None = Field(None, ge=0, allow_inf_nan=False)
    max_duration: timedelta | None = None  # from the run's start, in workflow time
    max_steps: int | None = Field(None, ge=0)
    # The same tool with the same args this many times is a loop, not progress.
    max_repeats: int | None = Field(3, ge=2)
    # Malformed answers fed back to the model in a row before the run escalates or stops.
    max_malformed: int = Field(3, ge=0, le=20)
    # Calls refused by authorization before the run stops (a model probing for what it may do).
    max_denials: int = Field(3, ge=0, le=100)

    def narrowed(self, requested: Budget) -> Budget:
        """This budget with the lower of each limit a client `requested` (None: no opinion).
        A client may narrow an agent's budget, never widen it; the loop guards (repeats,
        malformed answers, denials) stay the worker's."""
        changes: dict[str, Any] = {}
        for name in NARROWABLE_LIMITS:
            mine, theirs = getattr(self, name), getattr(requested, name)
            if theirs is not None and (mine is None or theirs < mine):
                changes[name] = theirs
        return self.model_copy(update=changes) if changes else self


NARROWABLE_LIMITS = (
    "max_tool_calls",
    "max_model_calls",
    "max_input_tokens",
    "max_output_tokens",
    "max_cost",
    "max_duration",
    "max_steps",
)


class BudgetUsed(_Strict):
    tool_calls: int = 0
    model_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    steps: int = 0
    denials: int = 0


class ToolCallRequest(_Frozen):
    """A tool call as the model asked for it (arguments as the model wrote them)."""

    id: str
    name: str
    arguments: str  # JSON text: parsing it is the workflow's job, so bad JSON is fed back


class Message(_Wire):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    tool_calls: tuple[ToolCallRequest, ...] = ()
    tool_call_id: str | None = None  # role "tool": which call this answers
    name: str | None = None  # role "tool": the tool's name
    # The answer to drop_results: the calls whose results leave the model's view from here on
    # (they stay in the run's record and history).
    drops: tuple[str, ...] = ()


class ToolSchema(_Frozen):
    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)


class PrefetchPlan(_Wire):
    """The quick reads a model call asked as a local activity may run itself, once it has the
    answer: the leading calls of the answer to these tools, numbered from `first_step` as the
    workflow will number them, each checked against the grants and ceilings first. One local
    activity a step instead of two (bench/README.md, peers.py). The workflow uses an output
    only for the call it was made for (same step, tool and arguments) and only after its own
    checks (budget, loop, approval) admit the call; a read that failed here runs again as its
    own local activity, under its own retry policy."""

    tools: tuple[str, ...]
    first_step: int
    run_id: str
    key_prefix: str  # a step's idempotency key is key_prefix + str(step), as RunState.key
    grants: tuple[Grant, ...] = ()
    ceilings: tuple[Ceiling, ...] = ()
    max_parallel: int = Field(1, ge=1)  # the agent's ActingPolicy.max_parallel
    # How many more tool calls the run's budget allows (max_tool_calls, max_steps); None: no
    # bound. A read is never run ahead of a budget that would refuse it.
    most: int | None = Field(None, ge=1)


class PrefetchedCall(_Wire):
    """A quick read the model call ran for the step it will be (PrefetchPlan)."""

    step: int
    tool: str
    args: dict[str, Any]
    output: ToolOutput


class ModelRequest(_Wire):
    """What the model activity receives: built deterministically from the plan state.

    With a `policy` or a `context_ref`, `messages` are only those added since the call that
    returned `context_ref`; the activity rebuilds the conversation from the blob store, so each
    call's input (and the history) stays the size of one step. Without either, `messages` is
    all of it. With a `context_ref`, `model`, `policy` and `preamble_ref` left out (None) are
    those of the call that returned it: the conversation's link in the store records them, so
    what does not change from call to call does not travel with every call.
    """

    agent: str
    kind: StepKind
    model: ModelRef | None = None
    messages: tuple[Message, ...]
    tools: tuple[ToolSchema, ...] = ()
    context_ref: str | None = None
    system: str = ""
    policy: ActingPolicy | None = None
    # The blob holding `system` and `tools` (preamble_ref below). The workflow sends them in
    # full once per run and then only this reference: they are the same on every call, and
    # inline they would be most of each call's bytes in the history.
    preamble_ref: str | None = None
    prefetch: PrefetchPlan | None = None  # only to a local activity (its input is not history)

    @property
    def model_ref(self) -> ModelRef:
        """The model asked: set on every request the activity hands to a provider."""
        if self.model is None:
            raise ValueError("the request's model is the conversation's: expand it first")
        return self.model


def preamble_blob(system: str, tools: tuple[ToolSchema, ...]) -> bytes:
    """The canonical bytes of a call's system prompt and tool schemas."""
    body = {"system": system, "tools": [t.model_dump(mode="json") for t in tools]}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def preamble_ref(system: str, tools: tuple[ToolSchema, ...]) -> str:
    """The blob store's reference for `preamble_blob` (content-addressed: the same hash)."""
    return "sha256:" + hashlib.sha256(preamble_blob(system, tools)).hexdigest()


class Usage(_Frozen):
    input_tokens: int = 0
    output_tokens: int = 0


class ModelReply(_Wire):
    text: str = ""
    tool_calls: tuple[ToolCallRequest, ...] = ()
    usage: Usage = Usage()
    latency_ms: int = 0
    model: str = ""
    context_ref: str | None = None  # the conversation including the request's messages
    prefetched: tuple[PrefetchedCall, ...] = ()  # the quick reads it ran (PrefetchPlan)


class ModelCallRecord(_Strict):
    """One model call in the report: who answered, what it cost, what was tried first."""

    kind: StepKind
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    latency_ms: int = 0
    fallbacks: list[str] = Field(default_factory=list)  # "model: why it gave up", in order


class ActingPolicy(_Wire):
    """How an agent acts step by step (a model call per step) instead of from a fixed plan."""

    max_turns: int = Field(50, ge=1, le=100_000)  # long runs continue as new
    # Context policy: the opening messages and the newest `keep_turns` messages (older ones are
    # counted in the system prompt); of those, the newest results in full, older ones as a
    # one-line summary each.
    keep_turns: int = Field(200, ge=2, le=100_000)
    keep_results: int = Field(5, ge=0, le=100)
    summary_chars: int = Field(120, ge=20, le=2000)
    result_chars: int = Field(4000, ge=100, le=100_000)
    # Calls of one answer that may run at once: consecutive reads (and writes declared
    # parallel) without an approval gate; 1 runs every call in turn.
    max_parallel: int = Field(4, ge=1, le=64)
    # Offer the model `drop_results`: it removes named earlier tool results from its own view
    # (they stay in the run's record).
    drop_results: bool = False

    @model_validator(mode="after")
    def _sane(self) -> ActingPolicy:
        if self.summary_chars > self.result_chars:
            raise ValueError("summary_chars must not exceed result_chars")
        return self


ModelRequest.model_rebuild()

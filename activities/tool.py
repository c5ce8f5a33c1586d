"""`@tool` and `@check`: a plain function becomes a Temporal activity with a schema and a policy.

    @tool(effect="write", compensation="reverse_entry", retry=RetrySpec(max_attempts=5))
    def post_entry(account: str, amount: int) -> str: ...

The function's type hints become a pydantic model that validates the arguments at the activity
boundary (bad arguments fail at once, never retried) and the JSON schema a model sees. The
policy (bounded retries, timeouts) is checked when the tool is declared, so an unbounded retry
never reaches a worker. The function stays callable as before, which keeps unit tests simple.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, get_type_hints, overload

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, create_model
from temporalio import activity
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

from keel.activities.context import ToolContext, _current
from keel.activities.faults import current_injector, degrade, raise_explicit
from keel.activities.live import publish
from keel.activities.retry import jittered_delay
from keel.activities.secrets import known_values, redact
from keel.activities.store import BlobStore, inline_limit
from keel.shared.authz import authorize, within_ceilings
from keel.shared.tracing import (
    annotate,
    flush_spans,
    span,
    spans_to_flush,
    tool_call_attributes,
)
from keel.workflows.contracts import (
    TOOL_NAME,
    ActivityEvent,
    ApprovalPolicy,
    ArgRule,
    CheckResult,
    Effect,
    ResultRef,
    RetrySpec,
    ToolCall,
    ToolKind,
    ToolOutput,
    ToolSpec,
)

INVALID_ARGS = "InvalidToolArgs"
# A read whose timeout is at most this runs as a local activity unless declared local=False:
# the workflow task that receives the model's answer runs it and asks the model again, so an
# agent step pays one hand-off through the server instead of two (bench/README.md, peers.py).
# Longer reads stay activities: a local activity holds its workflow task while it runs.
LOCAL_READ_TIMEOUT = timedelta(seconds=30)
IMPLAUSIBLE = "ImplausibleResult"
# True: every call waits for a human; rules: only calls where one holds; or a full policy.
Approval = bool | ApprovalPolicy | Sequence[ArgRule] | None
# Looks at a result and its arguments; returns what is wrong with it, or None if plausible.
Validator = Callable[[Any, dict[str, Any]], str | None]
_ANY = TypeAdapter(Any)


@dataclass(frozen=True)
class Tool:
    """A declared tool: its spec for the workflow, its activity for the worker, its function."""

    spec: ToolSpec
    fn: Callable[..., Any]
    args_model: type[BaseModel]
    activity: Callable[[ToolCall], Any]
    validator: Validator | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


def _as_retry(retry: RetrySpec | RetryPolicy | dict[str, Any] | None) -> RetrySpec:
    if retry is None:
        return RetrySpec()
    if isinstance(retry, RetrySpec):
        return retry
    if isinstance(retry, RetryPolicy):
        if retry.maximum_attempts == 0:
            raise ValueError("unbounded retry (maximum_attempts=0) is refused: give a bound")
        return RetrySpec(
            max_attempts=retry.maximum_attempts,
            initial_interval=retry.initial_interval,
            backoff_coefficient=retry.backoff_coefficient,
            max_interval=retry.maximum_interval or retry.initial_interval * 100,
            non_retryable_error_types=tuple(retry.non_retryable_error_types or ()),
        )
    return RetrySpec.model_validate(retry)


def _as_approval(value: Approval) -> ApprovalPolicy | None:
    if value is False or value is None:
        return None
    if value is True:
        return ApprovalPolicy()
    if isinstance(value, ApprovalPolicy):
        return value
    return ApprovalPolicy(rules=tuple(value))


def _as_timedelta(value: timedelta | float | None, what: str) -> timedelta | None:
    if value is None:
        return None
    out = value if isinstance(value, timedelta) else timedelta(seconds=value)
    if out <= timedelta(0):
        raise ValueError(f"{what} must be positive, got {value!r}")
    return out


def _args_model(fn: Callable[..., Any], name: str) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    hints = get_type_hints(fn, include_extras=True)  # resolves `from __future__` string hints
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"tool {name!r}: *args and **kwargs have no schema; name each argument")
        annotation = hints.get(param.name, Any)
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (annotation, default)
    config = ConfigDict(extra="forbid", arbitrary_types_allowed=False)
    return create_model(f"{name}_args", __config__=config, **fields)


def _declare(
    fn: Callable[..., Any],
    *,
    kind: ToolKind,
    name: str | None,
    description: str | None,
    effect: Effect,
    compensation: str | None,
    retry: RetrySpec | RetryPolicy | dict[str, Any] | None,
    timeout: timedelta | float,
    heartbeat: timedelta | float | None,
    requires_approval: Approval = False,
    validator: Validator | None = None,
    scopes: tuple[str, ...] | list[str] = (),
    local: bool | None = None,
    parallel: bool = False,
) -> Tool:
    tool_name = name or fn.__name__
    if not TOOL_NAME.match(tool_name):
        raise ValueError(f"{tool_name!r} is not a valid tool name (letters, digits, _ and -)")
    if effect not in ("read", "write"):
        raise ValueError(f"tool {tool_name!r}: effect must be 'read' or 'write', not {effect!r}")
    if compensation is not None and effect != "write":
        raise ValueError(f"tool {tool_name!r}: only a write tool has a compensation")
    limit = _as_timedelta(timeout, "timeout") or timedelta(seconds=30)
    quick_read = effect == "read" and heartbeat is None and limit <= LOCAL_READ_TIMEOUT
    if local and not quick_read:
        # A local activity runs inside the workflow task's worker and cannot heartbeat; a
        # write there could be redone with the whole workflow task: quick reads only.
        raise ValueError(
            f"tool {tool_name!r}: local=True is for read tools without heartbeat and with a "
            f"timeout of at most {LOCAL_READ_TIMEOUT.total_seconds():g} s"
        )
    args_model = _args_model(fn, tool_name)
    spec = ToolSpec(
        name=tool_name,
        kind=kind,
        description=description or inspect.getdoc(fn) or "",
        effect=effect,
        compensation=compensation,
        retry=_as_retry(retry),
        timeout=limit,
        heartbeat=_as_timedelta(heartbeat, "heartbeat"),
        local=quick_read if local is None else local,
        parallel=parallel,
        approval=_as_approval(requires_approval),
        scopes=_as_scopes(scopes, tool_name),
        parameters=args_model.model_json_schema(),
    )

    async def run_tool(call: ToolCall) -> ToolOutput:
        return await _exported_first(run_call(spec, fn, args_model, call, validator))

    run_tool.__name__ = f"tool_{tool_name}"
    return Tool(
        spec=spec,
        fn=fn,
        args_model=args_model,
        activity=activity.defn(name=tool_name)(run_tool),
        validator=validator,
    )


def _as_scopes(scopes: tuple[str, ...] | list[str] | str, tool_name: str) -> tuple[str, ...]:
    if isinstance(scopes, str):
        scopes = (scopes,)
    for scope in scopes:
        if not isinstance(scope, str) or not scope.strip() or "*" in scope:
            raise ValueError(
                f"tool {tool_name!r}: a scope is a non-empty name like 'ledger:write:{{account}}' "
                f"(globs belong in grants), not {scope!r}"
            )
    return tuple(scopes)


async def _heartbeat_every(period: float) -> None:
    while True:
        activity.heartbeat()
        await asyncio.sleep(period)


# Sync tool calls running in a thread now, by label: what a worker that stops leaves behind.
_IN_THREADS: dict[int, str] = {}


def calls_in_threads() -> list[str]:
    """The sync tool calls still running in threads ("tool 'x' (run r, step s)"), oldest first."""
    return list(_IN_THREADS.values())


async def _finish_in_thread(fn: Callable[..., Any], kwargs: dict[str, Any], label: str) -> Any:
    """Run a plain function in a thread and report its true outcome, even when cancelled.

    A thread cannot be stopped: if the activity reported "cancelled" while the thread went on
    to commit a write, the workflow would never compensate that write. So a cancellation
    waits for the function and reports what it did; the workflow then unwinds the saga. (A
    worker that stops does not wait forever: worker.py bounds its shutdown and names the calls
    it abandons, see calls_in_threads.)
    """
    running = asyncio.ensure_future(asyncio.to_thread(fn, **kwargs))  # copies the context
    _IN_THREADS[id(running)] = label
    try:
        while True:
            try:
                return await asyncio.shield(running)
            except asyncio.CancelledError:
                if running.done():
                    return running.result()
                if (task := asyncio.current_task()) is not None:
                    task.uncancel()
    finally:
        _IN_THREADS.pop(id(running), None)


async def run_call(
    spec: ToolSpec,
    fn: Callable[..., Any],
    args_model: type[BaseModel],
    call: ToolCall,
    validator: Validator | None,
) -> ToolOutput:
    attempt = activity.info().attempt
    denied = call.grants is not None and (
        authorize(spec, call.args, call.grants) or within_ceilings(spec, call.args, call.ceilings)
    )
    if denied:
        # The workflow checked already; checking here too means a workflow bug (or a call
        # scheduled by hand) still cannot run a tool outside the agent's grants.
        raise ApplicationError(f"denied: {denied}", type="Denied", non_retryable=True)
    name = "acceptance_check" if spec.kind == "check" else "tool_call"
    with span(name, tool=spec.name, step=call.step, attempt=attempt, run_id=call.run_id) as current:
        tool_call_attributes(current, tool=spec.name, args=call.args)
        try:
            out = await _attempt(spec, fn, args_model, call, validator, attempt)
        except ApplicationError as err:
            annotate(current, outcome="failed", error=err.type)
            policy = activity.info().retry_policy
            retried = policy is not None and attempt < (policy.maximum_attempts or attempt + 1)
            if spec.kind == "tool" and retried and not err.non_retryable:
                await publish(
                    ActivityEvent(
                        kind="tool_attempt",
                        message=f"{spec.name} attempt {attempt} failed: {err.message}; retrying",
                        step=call.step,
                        tool=spec.name,
                        data={"attempt": attempt, "error": err.type},
                    )
                )
            raise
        annotate(current, outcome="ok", stored=out.ref is not None)
        return out


async def run_with_model_call(tool: Tool, call: ToolCall) -> ToolOutput:
    """One attempt of a quick read inside the model call that chose it (activities/prefetch):
    the same argument checks, context, faults, validator and storage as its own activity."""
    spec, step = tool.spec, call.step
    with span("tool_call", tool=spec.name, step=step, attempt=1, run_id=call.run_id) as current:
        tool_call_attributes(current, tool=spec.name, args=call.args)
        out = await _attempt(spec, tool.fn, tool.args_model, call, tool.validator, 1)
        annotate(current, outcome="ok", stored=out.ref is not None, with_model_call=True)
        return out


async def _exported_first(coro: Awaitable[ToolOutput]) -> ToolOutput:
    """The call's spans are exported before it reports its outcome: a worker killed right after
    loses no span of a finished call (force_flush blocks, so it runs in a thread)."""
    try:
        return await coro
    finally:
        if spans_to_flush():
            await asyncio.to_thread(flush_spans)


async def _attempt(
    spec: ToolSpec,
    fn: Callable[..., Any],
    args_model: type[BaseModel],
    call: ToolCall,
    validator: Validator | None,
    attempt: int,
) -> ToolOutput:
    try:
        args = args_model.model_validate(call.args)
    except ValidationError as err:
        # A retry cannot fix bad arguments: fail at once, whatever the policy says.
        raise ApplicationError(
            f"invalid arguments for {spec.name}: {err}", type=INVALID_ARGS, non_retryable=True
        ) from err
    kwargs = {field: getattr(args, field) for field in type(args).model_fields}
    kwargs.update(args.model_extra or {})  # a model that takes any arguments (an MCP tool's)
    ctx = ToolContext(call.run_id, call.step, call.idempotency_key, attempt)
    token = _current.set(ctx)
    beating = None
    if spec.heartbeat is not None:
        # Keel heartbeats on the tool's behalf, so a dead worker is noticed within the
        # heartbeat timeout instead of the whole start-to-close timeout.
        beating = asyncio.create_task(_heartbeat_every(spec.heartbeat.total_seconds() / 3))
    injector = current_injector()
    fault = injector.decide(spec.name, call.run_id, call.step, attempt) if injector else None
    try:
        if fault is not None:
            raise_explicit(fault, spec.name)  # only for explicit kinds; implicit ones below
        if inspect.iscoroutinefunction(fn):
            value = await fn(**kwargs)
        else:
            label = f"tool {spec.name!r} (run {call.run_id}, step {call.step}, attempt {attempt})"
            value = await _finish_in_thread(fn, kwargs, label)
        if fault is not None:
            value = degrade(fault, value)
        problem = validator(value, call.args) if validator is not None else None
        if problem:
            # Retryable within the tool's bounded policy: a fresh read may be plausible again.
            raise ApplicationError(f"implausible result: {problem}", type=IMPLAUSIBLE)
    except Exception as err:
        secrets = known_values(ctx.secrets_used)
        failure = _failure(err, attempt, secrets)
        if secrets:
            raise failure from None  # the original, unredacted message stays out of the chain
        raise failure from err
    finally:
        if beating is not None:
            beating.cancel()
        _current.reset(token)
    if spec.kind == "check":
        value = value if isinstance(value, CheckResult) else CheckResult(passed=bool(value))
    secrets = known_values(ctx.secrets_used)
    value = redact(_ANY.dump_python(value, mode="json"), secrets)
    # Everything that leaves the activity goes through the same redaction.
    touched = redact(ctx.files_touched, secrets)
    return await _output(value, touched, ctx.run_id, attempt)


def _failure(err: Exception, attempt: int, secrets: list[str]) -> ApplicationError:
    """The failure the workflow sees: the exception's type name kept (non_retryable_error_types
    matches on it), the attempt number added (the report says how many a step took), secrets
    redacted, and the next retry's delay jittered."""
    app = err if isinstance(err, ApplicationError) else None
    return ApplicationError(
        redact((app.message if app else str(err)) or type(err).__name__, secrets),
        {"attempt": attempt},
        type=(app.type if app else None) or type(err).__name__,
        non_retryable=app.non_retryable if app else False,
        # The tool's own wish (say, a Retry-After) wins; else the policy's delay, jittered.
        next_retry_delay=(app.next_retry_delay if app else None)
        or jittered_delay(attempt, activity.info().retry_policy),
    )


async def _output(value: Any, touched: list[str], run_id: str, attempt: int) -> ToolOutput:
    data = json.dumps(value, separators=(",", ":")).encode()
    if len(data) <= inline_limit():
        return ToolOutput(value=value, files_touched=touched, attempt=attempt)
    # In a thread: the store may be a bucket across the network, and the loop serves others.
    ref = await asyncio.to_thread(BlobStore.from_env().put, data, run_id)
    preview = data[:200].decode(errors="replace")
    return ToolOutput(
        ref=ResultRef(ref=ref, size=len(data), preview=preview),
        files_touched=touched,
        attempt=attempt,
    )


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...
@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    effect: Effect = "read",
    compensation: str | None = None,
    retry: RetrySpec | RetryPolicy | dict[str, Any] | None = None,
    timeout: timedelta | float = 30.0,
    heartbeat: timedelta | float | None = None,
    requires_approval: Approval = False,
    validator: Validator | None = None,
    scopes: tuple[str, ...] | list[str] = (),
    local: bool | None = None,
    parallel: bool = False,
) -> Callable[[Callable[..., Any]], Tool]: ...
def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    effect: Effect = "read",
    compensation: str | None = None,
    retry: RetrySpec | RetryPolicy | dict[str, Any] | None = None,
    timeout: timedelta | float = 30.0,
    heartbeat: timedelta | float | None = None,
    requires_approval: Approval = False,
    validator: Validator | None = None,
    scopes: tuple[str, ...] | list[str] = (),
    local: bool | None = None,
    parallel: bool = False,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Declare a tool. Defaults: read effect, 3 attempts with exponential backoff, 30 s timeout.

    A read without heartbeat and with a timeout of at most 30 s runs as a local activity (the
    same bounded retries, its result recorded in the history, no server round trip); declare
    `local=False` to run it as an activity of its own (a read that may take long, or that
    must run on whichever worker polls the queue).

    A compensation is a write tool taking `args` (the undone call's arguments) and `result`.
    Reads the model asks for together run concurrently; a write runs in its turn unless
    declared `parallel=True` (safe to run beside other calls).
    """

    def wrap(f: Callable[..., Any]) -> Tool:
        return _declare(
            f,
            kind="tool",
            name=name,
            description=description,
            effect=effect,
            compensation=compensation,
            retry=retry,
            timeout=timeout,
            heartbeat=heartbeat,
            requires_approval=requires_approval,
            validator=validator,
            scopes=scopes,
            local=local,
            parallel=parallel,
        )

    return wrap(fn) if fn is not None else wrap


@overload
def check(fn: Callable[..., Any], /) -> Tool: ...
@overload
def check(
    *,
    name: str | None = None,
    description: str | None = None,
    retry: RetrySpec | RetryPolicy | dict[str, Any] | None = None,
    timeout: timedelta | float = 30.0,
) -> Callable[[Callable[..., Any]], Tool]: ...
def check(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    retry: RetrySpec | RetryPolicy | dict[str, Any] | None = None,
    timeout: timedelta | float = 30.0,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Declare an acceptance check: a read-only activity returning a bool or a CheckResult."""

    def wrap(f: Callable[..., Any]) -> Tool:
        return _declare(
            f,
            kind="check",
            name=name,
            description=description,
            effect="read",
            compensation=None,
            retry=retry,
            timeout=timeout,
            heartbeat=None,
        )

    return wrap(fn) if fn is not None else wrap

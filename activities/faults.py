"""Fault injection for evaluating agents: wraps any tool's activity by configuration, with faults
that are deterministic for a seed.

    KEEL_FAULTS=faults.json python worker.py ...
    [{"tool": "get_balance", "mode": "explicit", "rate": 0.3, "duration": 2, "seed": 7}]

Following OccuBench's method: explicit faults (E1: exceptions, timeouts, 5xx-like, non-retryable
errors), implicit degradation (E2: plausible but wrong values: a truncated list, an empty
result, numbers off by a factor, swapped fields), mixed (E3), against clean runs (E0). A step
of the run is hit with probability `rate`; a hit lasts `duration` consecutive attempts of that
call, so an explicit fault is transient: bounded retries absorb it when `duration` is below the
tool's max attempts. Whether and how a call is hit depends only on (seed, tool, run, step,
attempt), so a seed reproduces the same faults on every run of the harness.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator
from temporalio.exceptions import ApplicationError

Mode = Literal["explicit", "implicit", "mixed"]
EXPLICIT = ("exception", "timeout", "unavailable", "non_retryable")
IMPLICIT = ("truncate", "empty", "factor", "swap")
EVENT_STEPS = 64


class FaultSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tool: str
    mode: Mode = "explicit"
    rate: float = Field(0.2, ge=0, le=1)
    duration: int = Field(1, ge=1, le=100)  # consecutive attempts a fault event lasts
    # Exactly this many fault events per run (among its first 64 steps), instead of a rate.
    events: int | None = Field(None, ge=0, le=64)
    seed: int = 0
    kinds: tuple[str, ...] = ()  # these kinds only; empty: every kind of the mode
    factor: float = 10.0

    @field_validator("kinds")
    @classmethod
    def _known(cls, kinds: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [k for k in kinds if k not in EXPLICIT + IMPLICIT]
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}: {', '.join(EXPLICIT + IMPLICIT)}")
        return kinds


class Fault(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: str
    spec: FaultSpec


def _unit(*parts: object) -> float:
    """A number in [0, 1) that depends only on `parts`."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class Injector:
    def __init__(self, specs: list[FaultSpec]) -> None:
        self.specs = {s.tool: s for s in specs}

    @classmethod
    def from_env(cls) -> Injector | None:
        path = os.environ.get("KEEL_FAULTS")
        if not path:
            return None
        specs = TypeAdapter(list[FaultSpec]).validate_json(Path(path).read_text())
        return cls(specs)

    def decide(self, tool: str, run_id: str, step: int, attempt: int) -> Fault | None:
        spec = self.specs.get(tool)
        if spec is None or step < 0 or attempt > spec.duration:
            return None
        if spec.events is not None:
            ranked = sorted(
                range(1, EVENT_STEPS + 1), key=lambda k: _unit(spec.seed, tool, run_id, k, "hit")
            )
            if step not in ranked[: spec.events]:
                return None
        elif _unit(spec.seed, tool, run_id, step, "hit") >= spec.rate:
            return None
        kinds = (
            spec.kinds
            or {
                "explicit": EXPLICIT,
                "implicit": IMPLICIT,
                "mixed": EXPLICIT + IMPLICIT,
            }[spec.mode]
        )
        pick = int(_unit(spec.seed, tool, run_id, step, "kind") * len(kinds))
        return Fault(kind=kinds[pick], spec=spec)


def raise_explicit(fault: Fault, tool: str) -> None:
    """Raise the explicit fault, if it is one (implicit ones change the result instead)."""
    kind = fault.kind
    if kind == "exception":
        raise ApplicationError(f"injected fault in {tool}", type="InjectedError")
    if kind == "timeout":
        raise ApplicationError(f"injected timeout in {tool}", type="InjectedTimeout")
    if kind == "unavailable":
        raise ApplicationError(f"injected HTTP 503 from {tool}", type="InjectedUnavailable")
    if kind == "non_retryable":
        raise ApplicationError(
            f"injected permanent failure in {tool}", type="InjectedPermanent", non_retryable=True
        )


def degrade(fault: Fault, value: Any) -> Any:
    """A plausible but wrong version of `value` (implicit faults)."""
    kind = fault.kind
    if kind == "truncate" and isinstance(value, list):
        return value[: len(value) // 2]
    if kind == "empty":
        return type(value)() if isinstance(value, list | dict | str) else None
    if kind == "factor":
        return _scale(value, fault.spec.factor)
    if kind == "swap" and isinstance(value, dict) and len(value) >= 2:
        keys = list(value)
        swapped = dict(value)
        swapped[keys[0]], swapped[keys[1]] = value[keys[1]], value[keys[0]]
        return swapped
    return _scale(value, fault.spec.factor)  # no list or dict to bend: numbers are off


def _scale(value: Any, factor: float) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value * factor)
    if isinstance(value, float):
        return value * factor
    if isinstance(value, dict):
        return {k: _scale(v, factor) for k, v in value.items()}
    if isinstance(value, list):
        return [_scale(v, factor) for v in value]
    return value


_active: list[Injector | None] = []  # [] until first asked: then from KEEL_FAULTS, or set


def current_injector() -> Injector | None:
    if not _active:
        _active.append(Injector.from_env())
    return _active[0]


def set_injector(injector: Injector | None) -> None:
    """Install faults in this worker process (the harness and tests; workers use KEEL_FAULTS)."""
    _active[:] = [injector]

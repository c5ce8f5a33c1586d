"""Argument rules (`amount > 100`), evaluated the same way for grants and approval gates, and
the one digest of a call (tool and arguments) that gates, decisions and loop detection use.

    holds(ArgRule(arg="amount", op=">", value=100), {"amount": 500}, uncomparable=True)  # True

A rule whose argument is missing never holds. A value the rule cannot compare (a string against
a number) falls to `uncomparable`, the fail-safe answer of the caller: a grant's rule then does
not hold (denied), an approval rule does (a human looks).
"""

from __future__ import annotations

import hashlib
import json
import operator
from collections.abc import Callable
from typing import Any

from keel.workflows.contracts import ArgRule

COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
    "in": lambda a, b: a in b,
    "not in": lambda a, b: a not in b,
}


def holds(rule: ArgRule, args: dict[str, Any], *, uncomparable: bool) -> bool:
    if rule.arg not in args:
        return False
    try:
        return bool(COMPARE[rule.op](args[rule.arg], rule.value))
    except TypeError:
        return uncomparable


def digest(value: Any) -> str:
    """16 hex digits of SHA-256 over canonical JSON: equal values, equal digests."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]

"""Authorization, outside the model: a tool's scopes, filled from the call's arguments, must each
match one of the agent's grants, and that grant's argument rules must hold.

Pure: the workflow checks before scheduling a call and the activity checks again with the same
function (defence in depth), so both say the same thing about the same call.

    authorize(spec, {"account": "mallory", "amount": 900}, grants)
    -> "post_entry needs 'ledger:write:mallory'; no grant covers it"
"""

from __future__ import annotations

import operator
import string
from collections.abc import Callable, Sequence
from fnmatch import fnmatchcase
from typing import Any

from workflows.contracts import ArgRule, Grant, ToolSpec

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


class _Args(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "?"  # a scope naming an argument the call lacks cannot match a narrow grant


def scopes_of(spec: ToolSpec, args: dict[str, Any]) -> list[str]:
    # Only plain {name} fields: a template cannot reach into attributes or indexes of args.
    values = _Args({k: str(v) for k, v in args.items()})
    out = []
    for template in spec.scopes:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f]
        out.append(
            template.format_map(values) if all(f.isidentifier() for f in fields) else template
        )
    return out


def allows(rule: ArgRule, args: dict[str, Any]) -> bool:
    """A grant's rule: the argument must be there and compare as stated (else: denied)."""
    if rule.arg not in args or rule.op not in COMPARE:
        return False
    try:
        return bool(COMPARE[rule.op](args[rule.arg], rule.value))
    except TypeError:
        return False


def authorize(spec: ToolSpec, args: dict[str, Any], grants: Sequence[Grant]) -> str | None:
    """Why the call is denied, or None when every scope it needs is granted."""
    for scope in scopes_of(spec, args):
        matching = [g for g in grants if fnmatchcase(scope, g.scope)]
        if not matching:
            return f"{spec.name} needs {scope!r}; no grant covers it"
        if not any(all(allows(rule, args) for rule in g.rules) for g in matching):
            rules = "; ".join(
                " and ".join(f"{r.arg} {r.op} {r.value!r}" for r in g.rules) for g in matching
            )
            return f"{spec.name} needs {scope!r}; its grant allows only calls where {rules}"
    return None

"""Authorization, outside the model: a tool's scopes, filled from the call's arguments, must each
match one of the agent's grants, and that grant's argument rules must hold.

A grant is a glob in which `*` and `?` never cross a path separator (`/`) and `**` crosses any
number of them: `fs:write:.keel/out/*` covers `.keel/out/a.json`, not `.keel/out/x/a.json`.
Only the grant is a pattern; an argument's value is matched as literal text, so metacharacters
in it never widen a match. A value filled into a scope that climbs a directory (a `..`
segment) is refused, and other path-like values are normalised (`a//./b` is `a/b`) first.

Pure: the workflow checks before scheduling a call and the activity checks again with the same
function (defence in depth), so both say the same thing about the same call.

    authorize(spec, {"account": "mallory", "amount": 900}, grants)
    -> "post_entry needs 'ledger:write:mallory'; no grant covers it"
"""

from __future__ import annotations

import posixpath
import re
import string
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from keel.shared.errors import Traversal
from keel.shared.rules import holds
from keel.workflows.contracts import ArgRule, Ceiling, Grant, ToolSpec


class _Args(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "?"  # a scope naming an argument the call lacks cannot match a narrow grant


def scope_value(value: Any) -> str:
    """An argument's value as it is matched in a scope: path-like values normalised, a value
    with a `..` segment refused (Traversal)."""
    text = str(value)
    if "/" not in text and "\\" not in text:
        return text
    if ".." in re.split(r"[/\\]", text):
        raise Traversal(f"{text!r} climbs out of its directory ('..')")
    return posixpath.normpath(text)


def scopes_of(spec: ToolSpec, args: dict[str, Any]) -> list[str]:
    """The scopes a call needs, filled from its arguments; Traversal for a climbing path."""
    # Only plain {name} fields: a template cannot reach into attributes or indexes of args.
    values = _Args({k: scope_value(v) for k, v in args.items()})
    out = []
    for template in spec.scopes:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f]
        out.append(
            template.format_map(values) if all(f.isidentifier() for f in fields) else template
        )
    return out


@lru_cache(maxsize=1024)
def _grant_pattern(glob: str) -> re.Pattern[str]:
    parts = re.split(r"(\*\*|\*|\?)", glob)
    wild = {"**": ".*", "*": "[^/]*", "?": "[^/]"}
    return re.compile("".join(wild.get(p) or re.escape(p) for p in parts), re.DOTALL)


def grant_covers(glob: str, scope: str) -> bool:
    """Whether a grant's glob covers a filled scope (see the module's docstring)."""
    return _grant_pattern(glob).fullmatch(scope) is not None


def allows(rule: ArgRule, args: dict[str, Any]) -> bool:
    """A grant's rule: the argument must be there and compare as stated (else: denied)."""
    return holds(rule, args, uncomparable=False)


def within_ceilings(
    spec: ToolSpec, args: dict[str, Any], ceilings: Sequence[Ceiling]
) -> str | None:
    """Why a delegated run may not make this call (a delegator may not), or None."""
    for ceiling in ceilings:
        if ceiling.tools and spec.name not in ceiling.tools:
            return f"{spec.name}: the delegating agent {ceiling.agent!r} may not use it"
        if (why := authorize(spec, args, ceiling.grants)) is not None:
            return f"{why} (delegated by {ceiling.agent!r}, whose powers bound this run)"
    return None


def authorize(spec: ToolSpec, args: dict[str, Any], grants: Sequence[Grant]) -> str | None:
    """Why the call is denied, or None when every scope it needs is granted."""
    try:
        scopes = scopes_of(spec, args)
    except Traversal as err:
        return f"{spec.name}: {err}; refused"
    for scope in scopes:
        matching = [g for g in grants if grant_covers(g.scope, scope)]
        if not matching:
            return f"{spec.name} needs {scope!r}; no grant covers it"
        if not any(all(allows(rule, args) for rule in g.rules) for g in matching):
            rules = "; ".join(
                " and ".join(f"{r.arg} {r.op} {r.value!r}" for r in g.rules) for g in matching
            )
            return f"{spec.name} needs {scope!r}; its grant allows only calls where {rules}"
    return None

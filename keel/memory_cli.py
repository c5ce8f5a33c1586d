"""`starter.py memory ...`: read and correct what agents remember (KEEL_MEMORY_URL, else
.keel/memory.db). No Temporal server is needed: this reads the store itself.

    python starter.py memory recall SCOPE [SUBJECT] [--predicate P] [--as-of T] [--known-at T]
    python starter.py memory history SCOPE SUBJECT PREDICATE
    python starter.py memory contested [SCOPE]
    python starter.py memory resolve FACT_ID [--reason TEXT]    (the side that stands)
    python starter.py memory forget SCOPE SUBJECT PREDICATE --reason TEXT

--as-of: what was true at that time; --known-at: as Keel believed it then (ISO dates or
times, e.g. 2024-06-01 or 2024-06-01T12:00:00Z). --json for scripts.
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import UTC, datetime
from typing import Any

from keel.activities.memory.store import canonical, open_memory
from keel.workflows.contracts.memory import Fact


def when(text: str) -> datetime:
    """An ISO date or time; UTC unless it says otherwise."""
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date or time like 2024-06-01 or 2024-06-01T12:00:00Z"
        ) from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def add_memory_command(sub: Any) -> None:
    memory = sub.add_parser("memory", help="what agents remember (see memory --help)")
    what = memory.add_subparsers(dest="memory_command", required=True)
    recall = what.add_parser("recall", help="facts true now (or --as-of), as believed")
    recall.add_argument("scope")
    recall.add_argument("subject", nargs="?")
    recall.add_argument("--predicate")
    recall.add_argument("--as-of", type=when, help="what was true at this time")
    recall.add_argument("--known-at", type=when, help="as Keel believed it at this time")
    recall.add_argument("--expired", action="store_true", help="expired facts too")
    history = what.add_parser("history", help="every version of one fact, oldest first")
    for name in ("scope", "subject", "predicate"):
        history.add_argument(name)
    contested = what.add_parser("contested", help="facts waiting for a human to pick a side")
    contested.add_argument("scope", nargs="?")
    resolve = what.add_parser("resolve", help="settle a contest: this fact stands")
    resolve.add_argument("fact_id")
    resolve.add_argument("--reason", default="")
    forget = what.add_parser("forget", help="stop believing a fact (kept in history)")
    for name in ("scope", "subject", "predicate"):
        forget.add_argument(name)
    forget.add_argument("--reason", required=True)
    for cmd in (recall, history, contested, resolve, forget):
        cmd.add_argument("--json", action="store_true", help="print JSON")
        if cmd in (resolve, forget):
            cmd.add_argument("--by", default=os.environ.get("USER", "someone"), help="who decides")


def memory_command(args: argparse.Namespace) -> int:
    store = open_memory()
    action = args.memory_command
    if action == "recall":
        facts = store.recall(
            args.scope,
            args.subject,
            args.predicate,
            valid_at=args.as_of,
            known_at=args.known_at,
            include_expired=args.expired,
        )
        return show(facts, args.json)
    if action == "history":
        return show(store.history(args.scope, args.subject, args.predicate), args.json)
    if action == "contested":
        return show(store.contested(args.scope), args.json)
    if action == "resolve":
        others = store.resolve(args.fact_id, by=f"human:{args.by}", reason=args.reason)
        said = {"stands": args.fact_id, "superseded": others}
    else:
        closed = store.forget(
            args.scope, args.subject, args.predicate, by=f"human:{args.by}", reason=args.reason
        )
        said = {"forgotten": closed}
    print(json.dumps(said) if args.json else " ".join(f"{k}: {v}" for k, v in said.items()))
    return 0


def show(facts: list[Fact], as_json: bool) -> int:
    if as_json:
        print(json.dumps([f.model_dump(mode="json") for f in facts], indent=2))
        return 0
    for f in facts:
        span = f"since {f.valid_from:%Y-%m-%d %H:%M:%S}"
        if f.valid_to is not None:
            span += f" until {f.valid_to:%Y-%m-%d %H:%M:%S}"
        flags = " [contested]" if f.contested else ""
        if f.superseded_at is not None:
            flags += f" [superseded {f.superseded_at:%Y-%m-%d %H:%M:%S}: {f.note}]"
        print(f"{f.subject} {f.predicate} {canonical(f.value)}  {span}{flags}  id={f.id}")
    if not facts:
        print("nothing")
    return 0

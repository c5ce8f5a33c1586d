"""The ledger clerk: an example agent whose tools make real effects in a SQLite ledger.

    python worker.py --tools examples.ledger
    python starter.py run ledger-clerk --wait \
        --goal "Pay alice 30 and bob 20, then write the statement to .keel/out/statement.json"
"""

from __future__ import annotations

import json
import re
import time
from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel, Field

from examples.ledger import store
from keel import (
    VERDICT,
    AcceptanceSpec,
    AgentSpec,
    ApprovalPolicy,
    ArgRule,
    Budget,
    CheckResult,
    Grant,
    ModelRef,
    ModelReply,
    ModelRequest,
    PlanSpec,
    RetrySpec,
    Route,
    Routes,
    StepSpec,
    ToolCallRequest,
    Usage,
    check,
    results_seen,
    scripted_model,
    scripted_planner,
    tool,
    tool_context,
)


@tool(
    effect="write",
    compensation="reverse_entry",
    retry=RetrySpec(max_attempts=5),
    timeout=10,
    heartbeat=2,
    scopes=("ledger:write:{account}",),
)
def post_entry(
    account: str, amount: int, memo: str = "", pause_s: float = Field(0.0, ge=0, le=5)
) -> dict[str, object]:
    """Post `amount` to `account`. Idempotent: a repeated delivery of the same call is a no-op.

    `pause_s` waits after the write is committed, like a slow remote API; the crash tests use it
    to kill a worker between an effect and its completion being recorded.
    """
    ctx = tool_context()
    new = store.post(ctx.idempotency_key, ctx.run_id, account, amount, memo, ctx.attempt)
    time.sleep(pause_s)
    return {"account": account, "balance": store.balance(account), "duplicate": not new}


class EntryArgs(BaseModel):
    """The arguments of the post_entry call being undone."""

    account: str
    amount: int
    memo: str = ""


@tool(effect="write", retry=RetrySpec(max_attempts=5), timeout=10)
def reverse_entry(args: EntryArgs, result: dict[str, object] | None = None) -> dict[str, object]:
    """Undo a post_entry by posting the opposite amount (post_entry's compensation).

    Keyed by its own idempotency key, so a reversal delivered twice reverses once.
    """
    ctx = tool_context()
    memo = f"reversal: {args.memo}"[:120]
    new = store.post(
        ctx.idempotency_key,
        ctx.run_id,
        args.account,
        -args.amount,
        memo,
        ctx.attempt,
        tool="reverse_entry",
    )
    return {"account": args.account, "balance": store.balance(args.account), "duplicate": not new}


@tool(effect="read", timeout=5, scopes=("ledger:read:{account}",))
def get_balance(account: str) -> int:
    """The account's balance."""
    return store.balance(account)


@tool(effect="write", timeout=10, scopes=("fs:write:{path}",))
def write_statement(path: str) -> dict[str, int]:
    """Write every account's balance to `path` as JSON."""
    balances = store.balances()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(balances, indent=2) + "\n", encoding="utf-8")
    tool_context().touched(path)
    return balances


@check
def run_posted(account: str, expected: int) -> CheckResult:
    """This run's entries for `account` add up to `expected`."""
    total = store.run_total(tool_context().run_id, account)
    return CheckResult(
        passed=total == expected, detail=f"{account}: {total} posted, {expected} expected"
    )


ledger_clerk = AgentSpec(
    name="ledger-clerk",
    description="Posts payments to the ledger and writes a statement.",
    tools=("post_entry", "get_balance", "write_statement"),
    # A payment above 100 waits for a human; with no decision in a day it is rejected and the
    # payments already made are reversed.
    approvals={
        "post_entry": ApprovalPolicy(
            rules=(ArgRule(arg="amount", op=">", value=100),), timeout=timedelta(days=1)
        )
    },
    # Any ledger account, and statements anywhere: `**` crosses directories, `*` does not
    # (narrow this to e.g. "fs:write:.keel/out/*").
    grants=(Grant(scope="ledger:*"), Grant(scope="fs:write:**")),
)

PAYMENT = re.compile(r"\b([A-Za-z][A-Za-z_]*)\s+(\d+)\b")
STATEMENT = re.compile(r"statement to (\S+?)[.,;]?(?:\s|$)")


@scripted_planner("ledger-clerk")
def plan_payments(goal: str) -> PlanSpec:
    """What an LLM would answer for the ledger clerk, computed from the goal's words."""
    payments = [(name.lower(), int(amount)) for name, amount in PAYMENT.findall(goal)]
    if not payments:
        raise ValueError(f"no payment ('NAME AMOUNT') in the goal: {goal!r}")
    steps = [
        StepSpec(
            title=f"Pay {name} {amount}",
            tool="post_entry",
            args={"account": name, "amount": amount, "memo": goal[:80]},
        )
        for name, amount in payments
    ]
    totals: dict[str, int] = {}
    for name, amount in payments:
        totals[name] = totals.get(name, 0) + amount
    acceptance = [
        AcceptanceSpec(
            criterion=f"{name} received {total}",
            check="run_posted",
            args={"account": name, "expected": total},
        )
        for name, total in totals.items()
    ]
    if match := STATEMENT.search(goal):
        path = match.group(1)
        steps.append(
            StepSpec(
                title=f"Write the statement to {path}", tool="write_statement", args={"path": path}
            )
        )
        acceptance.append(
            AcceptanceSpec(
                criterion="the statement exists and is JSON",
                check="file_exists",
                args={"path": path, "parses_as": "json"},
            )
        )
    return PlanSpec(goal=goal, steps=steps, acceptance=acceptance)


# --- the same clerk, acting step by step: a model call chooses each payment -------------------

ledger_agent = AgentSpec(
    name="ledger-agent",
    description="Pays what the goal asks, one model-chosen tool call at a time.",
    tools=("post_entry", "get_balance"),
    # Done means verified: a reviewing model reads what was done (here a scripted reviewer
    # that checks the ledger itself) and says whether the goal is met.
    routes=Routes(
        act=Route(models=(ModelRef(provider="scripted", model="ledger-react"),)),
        verify=Route(models=(ModelRef(provider="scripted", model="ledger-review"),)),
    ),
    budget=Budget(max_tool_calls=20, max_model_calls=25),
    approvals=ledger_clerk.approvals,
    # A model chooses the calls: reads anywhere, payments of at most 10,000 each.
    grants=(
        Grant(scope="ledger:read:*"),
        Grant(scope="ledger:write:*", rules=(ArgRule(arg="amount", op="<=", value=10_000),)),
    ),
)


@scripted_model("ledger-react")
def pay_one_at_a_time(request: ModelRequest) -> ModelReply:
    """What an LLM would answer, turn by turn: the next unpaid payment of the goal, then finish.

    Swap the route's ModelRef for `provider="openai"` (or "anthropic") to let a real model
    answer the same requests.
    """
    goal = next(m.content for m in request.messages if m.role == "user")
    payments = [(name.lower(), int(amount)) for name, amount in PAYMENT.findall(goal)]
    paid = results_seen(request.messages)  # those counted, not shown, in a long run included
    usage = Usage(input_tokens=sum(len(m.content) for m in request.messages) // 4, output_tokens=12)
    if paid < len(payments):
        account, amount = payments[paid]
        arguments = json.dumps({"account": account, "amount": amount, "memo": goal[:80]})
        call = ToolCallRequest(id=f"call-{paid + 1}", name="post_entry", arguments=arguments)
        return ModelReply(tool_calls=(call,), usage=usage, model="ledger-react")
    summary = ", ".join(f"{a} {n}" for a, n in payments) or "nothing to pay"
    finish = ToolCallRequest(
        id=f"call-{paid + 1}", name="finish", arguments=json.dumps({"summary": f"paid {summary}"})
    )
    return ModelReply(tool_calls=(finish,), usage=usage, model="ledger-react")


@scripted_model("ledger-review")
def review_payments(request: ModelRequest) -> ModelReply:
    """What a reviewing LLM would answer, checked against the world: the goal is met when every
    payment the run reports is in the ledger (it reads the facts the run sends, then the ledger)."""
    facts = json.loads(request.messages[-1].content)
    paid: dict[str, int] = {}
    for step in facts.get("steps", []):
        if step.get("tool") == "post_entry" and step.get("done"):
            account = step["args"]["account"]
            paid[account] = paid.get(account, 0) + int(step["args"]["amount"])
    short = [a for a, amount in paid.items() if store.balance(a) < amount]
    passed = bool(paid) and not short
    reason = (
        f"the ledger holds every payment ({len(paid)} accounts)"
        if passed
        else f"not in the ledger: {', '.join(short)}"
        if short
        else "nothing was paid"
    )
    verdict = ToolCallRequest(
        id="review", name=VERDICT, arguments=json.dumps({"passed": passed, "reason": reason})
    )
    return ModelReply(tool_calls=(verdict,), usage=Usage(input_tokens=50, output_tokens=8))

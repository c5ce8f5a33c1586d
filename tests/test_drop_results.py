"""Context the agent prunes itself (issue 19): drop_results removes named earlier tool results
from the model's view; the next request provably lacks them, the run's record keeps them."""

from __future__ import annotations

import json
from typing import Any

from temporalio.client import Client

from keel.shared.context_view import DROPPED
from keel.workflows.contracts import ActingPolicy
from tests.model_server import ModelServer, Reply, openai_call, openai_calls
from tests.test_parallel_calls import COMPLETIONS, act, model_key

__all__ = ["model_key"]  # the fixture, autouse here too


async def test_dropped_results_leave_the_next_request_and_stay_in_the_record(
    dev_client: Client,
) -> None:
    answers = iter(
        [
            openai_calls(
                ("nap", {"label": "bulky", "seconds": 0.01}),
                ("nap", {"label": "keep", "seconds": 0.01}),
            ),
            None,  # drop the bulky result: its call id is known only once asked
            openai_call("finish", summary="done"),
        ]
    )

    def answer(body: dict[str, Any]) -> Reply:
        reply = next(answers)
        if reply is not None:
            return reply
        bulky = next(
            m["tool_call_id"]
            for m in body["messages"]
            if m["role"] == "tool" and "bulky rested" in m["content"]
        )
        return openai_call("drop_results", call_ids=[bulky], reason="not needed any more")

    with ModelServer() as server:
        server.script(COMPLETIONS, answer)
        report = await act(dev_client, server, loop=ActingPolicy(drop_results=True))
        asked = [seen.body for seen in server.requests(COMPLETIONS)]
    assert report.status == "DONE", report.reason
    offered = [t["function"]["name"] for t in asked[0]["tools"]]
    assert "drop_results" in offered
    last = json.dumps(asked[2]["messages"])
    assert "bulky rested" not in last and DROPPED in last  # gone from the model's view
    assert "keep rested" in last
    assert "bulky rested" in json.dumps(asked[1]["messages"])  # it was there before
    bulky = next(s for s in report.steps if s.args.get("label") == "bulky")
    assert bulky.result == "bulky rested 0.01s"  # the record keeps it
    assert any("dropped 1 earlier result" in p.message for p in report.progress)


async def test_drop_results_is_offered_only_when_the_agent_allows_it(dev_client: Client) -> None:
    with ModelServer() as server:
        server.script(COMPLETIONS, [openai_call("finish", summary="done")])
        await act(dev_client, server)
        offered = [t["function"]["name"] for t in server.requests(COMPLETIONS)[0].body["tools"]]
    assert "drop_results" not in offered

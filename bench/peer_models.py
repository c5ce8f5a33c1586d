"""The fake model the OpenAI Agents SDK peer runs with (host side: it runs in the model
activity, so it stays out of the workflow module the sandbox re-imports)."""

from __future__ import annotations

import json
from typing import Any

from agents import Model, ModelProvider
from peer_pydantic_ai import calls_wanted
from temporalio.contrib.openai_agents.testing import ResponseBuilders


class CountingModel(Model):
    """Calls `peer_noop` until the conversation holds N results, then answers."""

    async def get_response(self, system_instructions: Any, input: Any, *args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
        items = [input] if isinstance(input, str) else list(input)
        prompt = next(
            item if isinstance(item, str) else str(item.get("content"))
            for item in items
            if isinstance(item, str) or item.get("role") == "user"
        )
        done = sum(
            1
            for item in items
            if not isinstance(item, str) and item.get("type") == "function_call_output"
        )
        if done < calls_wanted(prompt):
            return ResponseBuilders.tool_call(
                json.dumps({"i": done + 1}), "peer_noop", call_id=f"c{done}", item_id=f"i{done}"
            )
        return ResponseBuilders.output_message("done")

    def stream_response(self, *args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
        raise NotImplementedError


class CountingProvider(ModelProvider):
    def get_model(self, model_name: str | None) -> Model:
        return CountingModel()

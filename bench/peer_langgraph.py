"""LangGraph with a SQLite checkpointer, doing what bench/peers.py asks of Keel: a model node
that calls `noop` until the conversation holds N results, and a tool node that runs it.

The canonical ReAct graph (`add_messages` state of AIMessage tool calls and ToolMessages, model
node -> tool node -> model node), checkpointed to a SQLite file on disk by
`AsyncSqliteSaver`. `durability="sync"` writes each step's checkpoint before the next step
starts (the peer goal 3 of issue 21 names); `durability="exit"` writes once, when the run ends.
No Temporal server is involved: LangGraph's durability is its own database.

Needs the `peers` extra (`pip install -e '.[peers]'`).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, TypedDict

from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, ToolMessage
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from peer_pydantic_ai import calls_wanted


class ReactState(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


def noop(i: int) -> int:
    """The same trivial tool every system calls."""
    return i


def model(state: ReactState) -> dict[str, Any]:
    messages = state["messages"]
    prompt = next(str(m.content) for m in messages if isinstance(m, HumanMessage))
    done = sum(isinstance(m, ToolMessage) for m in messages)
    if done < calls_wanted(prompt):
        call = {"name": "noop", "args": {"i": done + 1}, "id": f"c{done}"}
        return {"messages": [AIMessage(content="", tool_calls=[call])]}
    return {"messages": [AIMessage(content="done")]}


def tools(state: ReactState) -> dict[str, Any]:
    last = state["messages"][-1]
    assert isinstance(last, AIMessage)
    results = [
        ToolMessage(content=str(noop(**call["args"])), tool_call_id=call["id"])
        for call in last.tool_calls
    ]
    return {"messages": results}


def route(state: ReactState) -> Literal["tools", "__end__"]:
    last = state["messages"][-1]
    return "tools" if isinstance(last, AIMessage) and last.tool_calls else END


def graph_builder() -> StateGraph:
    builder = StateGraph(ReactState)
    builder.add_node("model", model)
    builder.add_node("tools", tools)
    builder.add_edge(START, "model")
    builder.add_conditional_edges("model", route)
    builder.add_edge("tools", "model")
    return builder


Runner = Callable[[int, str], Awaitable[None]]  # (n, thread id) -> completes or raises
History = Callable[[str], Awaitable[tuple[int, int]]]  # thread id -> (rows, blob bytes)


async def open_langgraph(
    path: str, durability: Literal["sync", "exit"]
) -> tuple[Runner, History, Callable[[], Awaitable[None]]]:
    """A runner on a checkpointer at `path`, what it stored of a thread, and its closer."""
    if os.path.exists(path):
        os.remove(path)
    saver_cm = AsyncSqliteSaver.from_conn_string(path)
    saver = await saver_cm.__aenter__()
    graph = graph_builder().compile(checkpointer=saver)

    async def run(n: int, thread_id: str) -> None:
        final = await graph.ainvoke(
            {"messages": [HumanMessage(content=f"call the tool {n} times")]},
            config={"configurable": {"thread_id": thread_id}, "recursion_limit": 2 * n + 10},
            durability=durability,
        )
        done = sum(isinstance(m, ToolMessage) for m in final["messages"])
        if done != n:
            raise RuntimeError(f"langgraph made {done} calls, not {n}")

    async def stored(thread_id: str) -> tuple[int, int]:
        rows = size = 0
        for query in (
            "SELECT count(*), sum(length(checkpoint) + length(metadata)) FROM checkpoints "
            "WHERE thread_id = ?",
            "SELECT count(*), sum(length(value)) FROM writes WHERE thread_id = ?",
        ):
            async with saver.conn.execute(query, (thread_id,)) as cursor:
                count, total = await cursor.fetchone()  # type: ignore[misc]
            rows, size = rows + count, size + (total or 0)
        return rows, size

    async def close() -> None:
        await saver_cm.__aexit__(None, None, None)

    return run, stored, close

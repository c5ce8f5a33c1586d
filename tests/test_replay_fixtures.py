"""Histories recorded before a change still replay after it (issue 14's "no replay break").

tests/fixtures/histories holds histories recorded from the suite on 2026-11-28 (by running
tests with KEEL_RECORD_HISTORIES=tests/fixtures/histories; see conftest.replay_all): plans with
acceptance, compensation, approvals by update and by signal, a deadline with a reminder, agents
acting step by step on scripted and HTTP models (local and remote), continue-as-new, and a
cancel racing a write; and, recorded after issue 15: a run refused at admission
(update-with-start, NOT_DONE as a failed workflow), a typed output, streamed model text and a
retried attempt published by signal, and a continuation carrying live events. A change to
workflow code that would break a run in flight fails here; such a change goes behind
`workflow.patched`, and the old history keeps replaying.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from keel import KeelPlugin
from tests.conftest import REPLAY_TIMEOUT

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "histories").glob("*.json"))


def test_there_are_recorded_histories() -> None:
    assert len(FIXTURES) >= 10


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
async def test_a_recorded_history_replays(path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    replayer = Replayer(workflows=[], plugins=[KeelPlugin()])
    await asyncio.wait_for(replayer.replay_workflow(history), REPLAY_TIMEOUT)

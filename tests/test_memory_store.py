"""Memory's fact store (issue 18): the same tests on SQLite and on a private PostgreSQL cluster.
Each test writes under a scope of its own, so both stores are shared by the whole module."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keel.activities.memory.store import MemoryStore, PostgresMemory, SqliteMemory
from keel.shared.errors import MemoryUnavailable
from keel.workflows.contracts.memory import Assertion, PredicateSpec
from tests.postgres import private_cluster, server_bin


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    if server_bin() is None:
        pytest.skip("PostgreSQL's server binaries are not installed (.ci/run installs them)")
    with private_cluster() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> MemoryStore:
    if request.param == "sqlite":
        return SqliteMemory(tmp_path_factory.mktemp("memory") / "memory.db")
    return PostgresMemory(request.getfixturevalue("postgres_url"))


def scope() -> str:
    return f"user:{uuid.uuid4().hex[:8]}"


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def lives(where: str, user: str, since: str | None = None, **extra: object) -> Assertion:
    return Assertion(
        scope=user,
        subject="ann",
        predicate="lives_in",
        value=where,
        valid_from=at(since) if since else None,
        **extra,
    )


def test_a_move_closes_the_old_city_and_history_keeps_both(store: MemoryStore) -> None:
    user = scope()
    store.remember(lives("Seattle", user, "2020-01-01"), key=f"{user}:1")
    believed_seattle = datetime.now(UTC)
    time.sleep(0.01)
    moved = store.remember(lives("Portland", user, "2024-06-01"), key=f"{user}:2")
    assert len(moved.replaced) == 1 and not moved.contested_with
    now = store.recall(user, "ann")
    assert [f.value for f in now] == ["Portland"]  # one current value, not two
    history = store.history(user, "ann", "lives_in")
    assert [(f.value, f.valid_to is None, f.superseded_at is None) for f in history] == [
        ("Seattle", True, False),  # what was believed first: open-ended, now superseded
        ("Seattle", False, True),  # the closed interval: 2020 until the move
        ("Portland", True, True),
    ]
    assert history[1].valid_to == at("2024-06-01")
    # As of a time before the move: what was true then, and what Keel believed then.
    assert [f.value for f in store.recall(user, "ann", valid_at=at("2023-01-01"))] == ["Seattle"]
    earlier = store.recall(user, "ann", valid_at=at("2025-01-01"), known_at=believed_seattle)
    assert [f.value for f in earlier] == ["Seattle"]  # then, Seattle was believed open-ended
    # An assertion about an earlier time becomes history, not the current value.
    store.remember(lives("Boston", user, "2010-01-01"), key=f"{user}:3")
    assert [f.value for f in store.recall(user, "ann")] == ["Portland"]
    boston = store.recall(user, "ann", valid_at=at("2015-01-01"))
    assert [f.value for f in boston] == ["Boston"] and boston[0].valid_to == at("2020-01-01")


def test_a_repeated_key_records_once_and_a_known_value_adds_nothing(store: MemoryStore) -> None:
    user = scope()
    first = store.remember(lives("Oslo", user), key=f"{user}:k")
    again = store.remember(lives("Oslo", user), key=f"{user}:k")
    assert again.repeated and again.fact.id == first.fact.id
    same = store.remember(lives("Oslo", user), key=f"{user}:other")
    assert same.repeated and same.fact.id == first.fact.id
    assert len(store.history(user, "ann", "lives_in")) == 1


def test_expired_facts_are_not_recalled_and_consolidation_supersedes_them(
    store: MemoryStore,
) -> None:
    user = scope()
    rule = PredicateSpec(ttl=timedelta(hours=1))
    old = time.time() - 7200
    store.remember(lives("Lima", user, rule=rule), now=old)
    mood = Assertion(scope=user, subject="ann", predicate="mood", value="calm")
    store.remember(mood)
    assert [f.predicate for f in store.recall(user, "ann")] == ["mood"]
    assert len(store.recall(user, "ann", include_expired=True)) == 2
    gone = store.expire(user)
    assert len(gone) == 1
    assert store.history(user, "ann", "lives_in")[0].note == "expired"
    assert [e["action"] for e in store.log(gone[0])] == ["remember", "expire"]


def test_equal_claims_at_one_time_are_contested_until_a_human_resolves(
    store: MemoryStore,
) -> None:
    user = scope()
    store.remember(lives("Rome", user, "2024-01-01"), key=f"{user}:a")
    clash = store.remember(lives("Milan", user, "2024-01-01"), key=f"{user}:b")
    assert clash.contested_with and clash.fact.contested
    both = store.recall(user, "ann")
    assert sorted(f.value for f in both) == ["Milan", "Rome"] and all(f.contested for f in both)
    assert {f.value for f in store.contested(user)} == {"Milan", "Rome"}
    milan = next(f for f in both if f.value == "Milan")
    others = store.resolve(milan.id, by="ops", reason="she said so")
    assert len(others) == 1
    (left,) = store.recall(user, "ann")
    assert left.value == "Milan" and not left.contested
    assert store.contested(user) == []
    with pytest.raises(MemoryUnavailable, match="not contested"):
        store.resolve(milan.id, by="ops")
    # Higher confidence wins at once; a predicate that says "newest" never asks.
    doubt = store.remember(lives("Turin", user, "2024-01-01", confidence=0.4))
    assert not doubt.fact.contested and doubt.fact.note.startswith("lost to ")
    assert [f.value for f in store.recall(user, "ann")] == ["Milan"]  # recorded, not believed
    unsure = Assertion(scope=user, subject="bob", predicate="team", value="red", confidence=0.5)
    store.remember(unsure.model_copy(update={"valid_from": at("2024-01-01")}))
    surer = unsure.model_copy(
        update={"value": "blue", "confidence": 0.9, "valid_from": at("2024-01-01")}
    )
    store.remember(surer)
    assert [f.value for f in store.recall(user, "bob")] == ["blue"]
    newest = PredicateSpec(on_conflict="newest")
    store.remember(surer.model_copy(update={"value": "green", "rule": newest}))
    assert [f.value for f in store.recall(user, "bob")] == ["green"]


def test_multi_valued_predicates_keep_every_value_and_forget_closes(store: MemoryStore) -> None:
    user = scope()
    many = PredicateSpec(multi=True)
    for language in ("English", "French"):
        store.remember(
            Assertion(scope=user, subject="ann", predicate="speaks", value=language, rule=many)
        )
    assert sorted(f.value for f in store.recall(user, "ann", "speaks")) == ["English", "French"]
    before = datetime.now(UTC)
    time.sleep(0.01)
    closed = store.forget(user, "ann", "speaks", by="ann", reason="asked to")
    assert len(closed) == 2
    assert store.recall(user, "ann", "speaks") == []
    assert len(store.recall(user, "ann", "speaks", known_at=before)) == 2  # never erased
    assert all(f.note == "forgotten by ann: asked to" for f in store.history(user, "ann", "speaks"))


def test_concurrent_writers_leave_one_current_value_and_lose_nothing(store: MemoryStore) -> None:
    user = scope()
    writers, each = 6, 15
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for i in range(each):
                store.remember(lives(f"city-{n}-{i}", user), key=f"{user}:{n}:{i}")
        except BaseException as err:  # the test fails below, with it
            errors.append(err)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    current = store.recall(user, "ann")
    assert len(current) == 1 and not current[0].contested
    history = store.history(user, "ann", "lives_in")
    asserted = {f.value for f in history}
    assert asserted == {f"city-{n}-{i}" for n in range(writers) for i in range(each)}  # no loss
    open_ended = [f for f in history if f.superseded_at is None and f.valid_to is None]
    assert len(open_ended) == 1  # never two current values
    # The same value at the same time from two writers: one record, whoever came first.
    same = lives("Kyiv", user, "2030-01-01")
    threads = [
        threading.Thread(target=store.remember, args=(same,), kwargs={"key": f"{user}:s{n}"})
        for n in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len([f for f in store.history(user, "ann", "lives_in") if f.value == "Kyiv"]) == 1


def test_a_bad_memory_url_is_one_line(tmp_path: Path) -> None:
    from keel.activities.memory.store import open_memory

    with pytest.raises(MemoryUnavailable, match="must start with postgresql:// or sqlite:///"):
        open_memory("mysql://x")
    assert open_memory(f"sqlite:///{tmp_path}/m.db").count() == 0

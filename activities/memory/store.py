"""The fact store: SQLite by default (.keel/memory.db, no setup), PostgreSQL for workers on many
machines (KEEL_MEMORY_URL=postgresql://..., psycopg 3). One implementation over both: the same
SQL, the same rules, the same tests.

    store = open_memory()                       # KEEL_MEMORY_URL, else .keel/memory.db
    store.remember(Assertion(scope="user:ann", subject="ann", predicate="lives_in",
                             value="Portland"), key="run-1:3")
    store.recall("user:ann", "ann")             # what is true now, as Keel believes it now

Correct under concurrency and crashes: every write of one subject and predicate runs in one
transaction holding that key's lock (SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory lock), so
two writers never leave two current values or lose an update; a remember carries its call's
idempotency key, so a retried or crash-repeated call records once.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from keel.shared.errors import MemoryUnavailable
from keel.workflows.contracts.memory import Assertion, Fact, PredicateSpec, Remembered

DEFAULT_PATH = ".keel/memory.db"
COLUMNS = (
    "id, key, scope, subject, predicate, value, valid_from, valid_to, recorded_at, "
    "superseded_at, expires_at, source, confidence, contested, note"
)
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS facts (
        id TEXT PRIMARY KEY,
        key TEXT UNIQUE,
        scope TEXT NOT NULL,
        subject TEXT NOT NULL,
        predicate TEXT NOT NULL,
        value TEXT NOT NULL,
        valid_from DOUBLE PRECISION NOT NULL,
        valid_to DOUBLE PRECISION,
        recorded_at DOUBLE PRECISION NOT NULL,
        superseded_at DOUBLE PRECISION,
        expires_at DOUBLE PRECISION,
        source TEXT NOT NULL,
        confidence DOUBLE PRECISION NOT NULL,
        contested INTEGER NOT NULL,
        note TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS facts_by_key ON facts (scope, subject, predicate, superseded_at)",
    "CREATE INDEX IF NOT EXISTS facts_by_scope ON facts (scope, superseded_at)",
    """CREATE TABLE IF NOT EXISTS predicates (
        scope TEXT NOT NULL,
        predicate TEXT NOT NULL,
        rule TEXT NOT NULL,
        PRIMARY KEY (scope, predicate)
    )""",
    """CREATE TABLE IF NOT EXISTS memory_log (
        at DOUBLE PRECISION NOT NULL,
        action TEXT NOT NULL,
        fact_id TEXT NOT NULL,
        actor TEXT NOT NULL,
        detail TEXT NOT NULL
    )""",
)


def epoch(at: datetime | None) -> float | None:
    return None if at is None else at.timestamp()


def moment(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def lock_of(scope: str, subject: str, predicate: str) -> str:
    """The lock a write of one fact holds: writers of other facts do not wait on it."""
    return canonical([scope, subject, predicate])


def fact_of(row: tuple[Any, ...]) -> Fact:
    (fid, _, scope, subject, predicate, value, vf, vt, rec, sup, exp, src, conf, cont, note) = row
    return Fact(
        id=fid,
        scope=scope,
        subject=subject,
        predicate=predicate,
        value=json.loads(value),
        valid_from=moment(vf),
        valid_to=moment(vt),
        recorded_at=moment(rec),
        superseded_at=moment(sup),
        expires_at=moment(exp),
        source=src,
        confidence=conf,
        contested=bool(cont),
        note=note,
    )


def winner_of(old: Fact, new: Fact, rule: PredicateSpec) -> str:
    """Two values of one single-valued fact at the same valid time: "new", "old", or
    "contested" (equal confidence, and the rule asks a human)."""
    if rule.on_conflict == "newest":
        return "new"
    if new.confidence != old.confidence:
        return "new" if new.confidence > old.confidence else "old"
    return "contested"


class MemoryStore:
    """The rules, over a connection of either backend (see SqliteMemory, PostgresMemory)."""

    location = ""

    def _connect(self) -> Any:
        raise NotImplementedError

    @contextmanager
    def _transaction(self, lock: str | None) -> Iterator[Any]:
        raise NotImplementedError

    def _sql(self, text: str) -> str:
        return text

    def __init__(self) -> None:
        self._local = threading.local()

    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def _run(self, cur: Any, text: str, args: tuple[Any, ...] = ()) -> Any:
        cur.execute(self._sql(text), args)
        return cur

    def _insert(self, cur: Any, fact: Fact, key: str | None) -> None:
        self._run(
            cur,
            f"INSERT INTO facts ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                fact.id,
                key,
                fact.scope,
                fact.subject,
                fact.predicate,
                canonical(fact.value),
                epoch(fact.valid_from),
                epoch(fact.valid_to),
                epoch(fact.recorded_at),
                epoch(fact.superseded_at),
                epoch(fact.expires_at),
                fact.source,
                fact.confidence,
                int(fact.contested),
                fact.note,
            ),
        )

    def _supersede(self, cur: Any, fact_id: str, at: float, note: str) -> None:
        self._run(
            cur,
            "UPDATE facts SET superseded_at = ?, note = ? WHERE id = ? AND superseded_at IS NULL",
            (at, note, fact_id),
        )

    def _log(self, cur: Any, at: float, action: str, fact_id: str, actor: str, detail: str) -> None:
        self._run(
            cur,
            "INSERT INTO memory_log (at, action, fact_id, actor, detail) VALUES (?, ?, ?, ?, ?)",
            (at, action, fact_id, actor, detail[:2000]),
        )

    def _versions(
        self, cur: Any, scope: str, subject: str, predicate: str, current: bool
    ) -> list[Fact]:
        """One fact's versions, in the order Keel learned them (only the current ones)."""
        now = "AND superseded_at IS NULL " if current else ""
        rows = self._run(
            cur,
            f"SELECT {COLUMNS} FROM facts WHERE scope = ? AND subject = ? AND predicate = ? "
            f"{now}ORDER BY recorded_at, valid_from",
            (scope, subject, predicate),
        ).fetchall()
        return [fact_of(r) for r in rows]

    def _current(self, cur: Any, scope: str, subject: str, predicate: str) -> list[Fact]:
        return self._versions(cur, scope, subject, predicate, current=True)

    def remember(
        self, a: Assertion, key: str | None = None, now: float | None = None
    ) -> Remembered:
        """Record `a`; with `key`, at most once (a retry returns what the first call did)."""
        at = time.time() if now is None else now
        with self._transaction(lock_of(a.scope, a.subject, a.predicate)) as cur:
            if key is not None:
                row = self._run(cur, f"SELECT {COLUMNS} FROM facts WHERE key = ?", (key,))
                found = row.fetchone()
                if found is not None:
                    return Remembered(fact=fact_of(found), repeated=True)
            return self._remember(cur, a, key, at)

    def declare(self, scope: str, predicate: str, rule: PredicateSpec) -> None:
        """How `predicate` behaves in `scope` from now on (an agent's MemoryPolicy declares
        its predicates when its runs start)."""
        with self._transaction(lock_of(scope, "", predicate)) as cur:
            self._run(
                cur,
                "INSERT INTO predicates (scope, predicate, rule) VALUES (?, ?, ?) "
                "ON CONFLICT (scope, predicate) DO UPDATE SET rule = excluded.rule",
                (scope, predicate, rule.model_dump_json()),
            )

    def _rule(self, cur: Any, scope: str, predicate: str) -> PredicateSpec:
        row = self._run(
            cur, "SELECT rule FROM predicates WHERE scope = ? AND predicate = ?", (scope, predicate)
        ).fetchone()
        return PredicateSpec.model_validate_json(row[0]) if row else PredicateSpec()

    def supersede(self, fact_id: str, note: str) -> bool:
        """Stop believing one fact (kept in history with `note`); False if it was not current."""
        at = time.time()
        with self._transaction(None) as cur:
            done = self._run(
                cur,
                "UPDATE facts SET superseded_at = ?, note = ? WHERE id = ? "
                "AND superseded_at IS NULL",
                (at, note, fact_id),
            ).rowcount
            if done:
                self._log(cur, at, "supersede", fact_id, "keel", note)
        return bool(done)

    def _remember(self, cur: Any, a: Assertion, key: str | None, at: float) -> Remembered:
        rule = a.rule or self._rule(cur, a.scope, a.predicate)
        valid_from = a.valid_from.timestamp() if a.valid_from else at
        valid_to = epoch(a.valid_to)
        expires = epoch(a.expires_at)
        if expires is None and rule.ttl is not None:
            expires = at + rule.ttl.total_seconds()
        new = Fact(
            id=uuid.uuid4().hex,
            scope=a.scope,
            subject=a.subject,
            predicate=a.predicate,
            value=a.value,
            valid_from=moment(valid_from),
            valid_to=moment(valid_to),
            recorded_at=moment(at),
            expires_at=moment(expires),
            source=a.source,
            confidence=a.confidence,
        )
        done = Remembered(fact=new)
        current = self._current(cur, a.scope, a.subject, a.predicate)
        value = canonical(a.value)
        for old in current:
            holds = old.valid_from.timestamp() <= valid_from and (
                old.valid_to is None or old.valid_to.timestamp() > valid_from
            )
            if canonical(old.value) == value and holds:
                return Remembered(fact=old, repeated=True)  # already known: nothing new
        if not rule.multi:
            for old in current:
                if canonical(old.value) != value:
                    self._settle(cur, old, done, rule, at)
        self._insert(cur, new := done.fact, key)
        self._log(cur, at, "remember", new.id, a.source, f"{a.subject} {a.predicate} {value}")
        return done

    def _settle(
        self, cur: Any, old: Fact, done: Remembered, rule: PredicateSpec, at: float
    ) -> None:
        """A new value for a single-valued predicate meets an old one: time orders them, or
        confidence does, or the predicate's rule does; else both stand, contested."""
        new = done.fact
        if old.valid_to is not None and old.valid_to <= new.valid_from:
            return  # already over when the new value begins
        if new.valid_to is not None and new.valid_to <= old.valid_from:
            return
        if old.valid_from < new.valid_from:
            # The old value held until the new one began: its interval closes (a new version
            # of it is recorded; the open-ended one is superseded, never erased).
            self._supersede(cur, old.id, at, f"closed by {new.id}")
            closed = old.model_copy(
                update={
                    "id": uuid.uuid4().hex,
                    "valid_to": new.valid_from,
                    "recorded_at": moment(at),
                    "contested": False,
                }
            )
            self._insert(cur, closed, None)
            done.replaced.append(old.id)
        elif old.valid_from > new.valid_from:
            # The new assertion is about an earlier time: it is history until the old began.
            done.fact = done.fact.model_copy(update={"valid_to": old.valid_from})
        else:
            winner = winner_of(old, new, rule)
            if winner == "new":
                self._supersede(cur, old.id, at, f"replaced by {new.id}")
                done.replaced.append(old.id)
            elif winner == "old":
                done.fact = done.fact.model_copy(
                    update={"superseded_at": moment(at), "note": f"lost to {old.id}"}
                )
            else:
                self._run(cur, "UPDATE facts SET contested = 1 WHERE id = ?", (old.id,))
                done.fact = done.fact.model_copy(update={"contested": True})
                done.contested_with.append(old.id)

    def recall(
        self,
        scope: str,
        subject: str | None = None,
        predicate: str | None = None,
        *,
        valid_at: datetime | None = None,
        known_at: datetime | None = None,
        include_expired: bool = False,
        limit: int = 1000,
    ) -> list[Fact]:
        """The facts true at `valid_at` (default now) as Keel believed them at `known_at`
        (default now); expired ones only when asked."""
        now = time.time()
        valid = valid_at.timestamp() if valid_at else now
        known = known_at.timestamp() if known_at else now
        where = ["scope = ?"]
        args: list[Any] = [scope]
        if subject is not None:
            where.append("subject = ?")
            args.append(subject)
        if predicate is not None:
            where.append("predicate = ?")
            args.append(predicate)
        where += [
            "recorded_at <= ?",
            "(superseded_at IS NULL OR superseded_at > ?)",
            "valid_from <= ?",
            "(valid_to IS NULL OR valid_to > ?)",
        ]
        args += [known, known, valid, valid]
        if not include_expired:
            where.append("(expires_at IS NULL OR expires_at > ?)")
            args.append(valid)  # expired as of the time asked about (default: now)
        query = (
            f"SELECT {COLUMNS} FROM facts WHERE {' AND '.join(where)} "
            f"ORDER BY subject, predicate, recorded_at LIMIT {int(limit)}"
        )
        with self._transaction(None) as cur:
            return [fact_of(r) for r in self._run(cur, query, tuple(args)).fetchall()]

    def history(self, scope: str, subject: str, predicate: str) -> list[Fact]:
        """Every version ever recorded, in the order Keel learned them."""
        with self._transaction(None) as cur:
            return self._versions(cur, scope, subject, predicate, current=False)

    def contested(self, scope: str | None = None) -> list[Fact]:
        """The current facts waiting for a human (or a rule) to pick a side."""
        query = f"SELECT {COLUMNS} FROM facts WHERE contested = 1 AND superseded_at IS NULL"
        args: tuple[Any, ...] = ()
        if scope is not None:
            query += " AND scope = ?"
            args = (scope,)
        with self._transaction(None) as cur:
            rows = self._run(cur, query + " ORDER BY scope, subject, predicate", args).fetchall()
        return [fact_of(r) for r in rows]

    def get(self, fact_id: str) -> Fact | None:
        with self._transaction(None) as cur:
            row = self._run(cur, f"SELECT {COLUMNS} FROM facts WHERE id = ?", (fact_id,)).fetchone()
        return fact_of(row) if row else None

    def resolve(self, fact_id: str, by: str, reason: str = "") -> list[str]:
        """Settle a contest for `fact_id`: the other sides are superseded (kept in history);
        the ids superseded."""
        fact = self.get(fact_id)
        if fact is None:
            raise MemoryUnavailable(f"no fact with id {fact_id!r}")
        at = time.time()
        with self._transaction(lock_of(fact.scope, fact.subject, fact.predicate)) as cur:
            sides = [
                f
                for f in self._current(cur, fact.scope, fact.subject, fact.predicate)
                if f.contested
            ]
            if fact_id not in {f.id for f in sides}:
                raise MemoryUnavailable(f"fact {fact_id!r} is not contested (or no longer current)")
            others = [f.id for f in sides if f.id != fact_id]
            for other in others:
                self._supersede(cur, other, at, f"resolved for {fact_id} by {by}: {reason}")
            self._run(cur, "UPDATE facts SET contested = 0 WHERE id = ?", (fact_id,))
            self._log(cur, at, "resolve", fact_id, by, reason)
        return others

    def forget(
        self, scope: str, subject: str, predicate: str, by: str, reason: str = ""
    ) -> list[str]:
        """Close what is currently believed (never erased, and audited); the ids closed."""
        at = time.time()
        with self._transaction(lock_of(scope, subject, predicate)) as cur:
            gone = [f.id for f in self._current(cur, scope, subject, predicate)]
            for fact_id in gone:
                self._supersede(cur, fact_id, at, f"forgotten by {by}: {reason}")
                self._log(cur, at, "forget", fact_id, by, reason)
        return gone

    def expire(self, scope: str | None, now: float | None = None) -> list[str]:
        """Supersede what passed its expiry (the consolidation pass); the ids expired."""
        at = time.time() if now is None else now
        query = (
            "SELECT id FROM facts WHERE superseded_at IS NULL AND expires_at IS NOT NULL "
            "AND expires_at <= ?"
        )
        args: tuple[Any, ...] = (at,)
        if scope is not None:
            query += " AND scope = ?"
            args = (at, scope)
        with self._transaction(None) as cur:
            gone = [r[0] for r in self._run(cur, query, args).fetchall()]
            for fact_id in gone:
                self._supersede(cur, fact_id, at, "expired")
                self._log(cur, at, "expire", fact_id, "keel", "")
        return gone

    def log(self, fact_id: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT at, action, fact_id, actor, detail FROM memory_log"
        args: tuple[Any, ...] = ()
        if fact_id is not None:
            query += " WHERE fact_id = ?"
            args = (fact_id,)
        with self._transaction(None) as cur:
            rows = self._run(cur, query + " ORDER BY at", args).fetchall()
        keys = ("at", "action", "fact_id", "actor", "detail")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def import_facts(self, facts: list[Fact]) -> None:
        """Insert facts as they are, in one transaction, with no rules applied (a migration
        from another store, or bench/memory.py filling a store)."""
        with self._transaction(None) as cur:
            for fact in facts:
                self._insert(cur, fact, None)
        with self._transaction(None) as cur:
            # Fresh statistics: PostgreSQL's planner would otherwise scan a table it thinks
            # is small (remember at 100,000 facts: 9.6 ms before, see bench/memory.py).
            cur.execute("ANALYZE facts")

    def count(self) -> int:
        with self._transaction(None) as cur:
            return int(self._run(cur, "SELECT COUNT(*) FROM facts").fetchone()[0])


class SqliteMemory(MemoryStore):
    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.location = str(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._transaction(None) as cur:
            for statement in SCHEMA:
                cur.execute(statement)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")  # readers do not wait on the writer
        conn.execute("PRAGMA busy_timeout=60000")
        return conn

    @contextmanager
    def _transaction(self, lock: str | None) -> Iterator[sqlite3.Cursor]:
        conn = self._conn()
        cur = conn.cursor()
        # A writer takes the database's write lock up front: two writers of one fact are
        # serialized, never interleaved between their read and their write.
        cur.execute("BEGIN IMMEDIATE" if lock is not None else "BEGIN")
        try:
            yield cur
        except BaseException:
            conn.rollback()
            raise
        conn.commit()


class PostgresMemory(MemoryStore):
    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.location = url.split("@")[-1]  # never the password
        with self._transaction(None) as cur:
            cur.execute("SELECT pg_advisory_xact_lock(7151)")  # one schema creator at a time
            for statement in SCHEMA:
                cur.execute(statement)

    def _connect(self) -> Any:
        try:
            import psycopg  # type: ignore[import-not-found,unused-ignore]
        except ImportError as err:
            raise MemoryUnavailable(
                "KEEL_MEMORY_URL names PostgreSQL, but psycopg is not installed: "
                "pip install 'keel[postgres]'"
            ) from err
        try:
            return psycopg.connect(self.url)
        except psycopg.Error as err:
            raise MemoryUnavailable(f"cannot reach PostgreSQL at {self.location}: {err}") from err

    def _sql(self, text: str) -> str:
        return text.replace("?", "%s")

    @contextmanager
    def _transaction(self, lock: str | None) -> Iterator[Any]:
        conn = self._conn()
        with conn.transaction(), conn.cursor() as cur:
            if lock is not None:
                # Writers of one subject and predicate queue on this key's lock until commit.
                cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (lock,))
            yield cur


def open_memory(url: str | None = None) -> MemoryStore:
    """The store KEEL_MEMORY_URL names (postgresql://..., sqlite:///path), else the SQLite file
    .keel/memory.db under the working directory."""
    url = url or os.environ.get("KEEL_MEMORY_URL") or ""
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresMemory(url)
    if url.startswith("sqlite:///"):
        return SqliteMemory(Path(url.removeprefix("sqlite:///")))
    if url:
        raise MemoryUnavailable(
            f"KEEL_MEMORY_URL must start with postgresql:// or sqlite:///, not {url[:20]!r}"
        )
    return SqliteMemory(Path(DEFAULT_PATH))

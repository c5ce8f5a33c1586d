"""The example's external system: a SQLite ledger, so a newcomer can count what happened.

Every entry is keyed by the idempotency key of the call that wrote it, so a write delivered
twice (an activity retried after a worker crash) lands once. Every execution of a tool is
logged too, so a test can tell "ran again but changed nothing" from "never ran again".
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY, run_id TEXT NOT NULL, account TEXT NOT NULL,
    amount INTEGER NOT NULL, memo TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS executions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, tool TEXT NOT NULL,
    attempt INTEGER NOT NULL
);
"""


def ledger_path() -> Path:
    return Path(os.environ.get("KEEL_LEDGER_DB", ".keel/ledger.sqlite"))


def connect() -> sqlite3.Connection:
    path = ledger_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    conn.executescript(SCHEMA)
    return conn


def post(
    key: str,
    run_id: str,
    account: str,
    amount: int,
    memo: str,
    attempt: int,
    tool: str = "post_entry",
) -> bool:
    """Record the execution and the entry in one transaction; False if the key was seen."""
    with closing(connect()) as conn:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT INTO executions (key, tool, attempt) VALUES (?, ?, ?)",
            (key, tool, attempt),
        )
        cur = conn.execute(
            "INSERT OR IGNORE INTO entries (key, run_id, account, amount, memo) "
            "VALUES (?, ?, ?, ?, ?)",
            (key, run_id, account, amount, memo),
        )
        conn.execute("COMMIT")
        return cur.rowcount == 1


def balance(account: str) -> int:
    with closing(connect()) as conn:
        row = conn.execute(
            "SELECT COALESCE(SUM(amount), 0) FROM entries WHERE account = ?", (account,)
        ).fetchone()
        return int(row[0])


def balances() -> dict[str, int]:
    with closing(connect()) as conn:
        rows = conn.execute(
            "SELECT account, SUM(amount) FROM entries GROUP BY account ORDER BY account"
        ).fetchall()
        return {account: int(total) for account, total in rows}


def run_total(run_id: str, account: str) -> int:
    with closing(connect()) as conn:
        row = conn.execute(
            "SELECT COALESCE(SUM(amount), 0) FROM entries WHERE run_id = ? AND account = ?",
            (run_id, account),
        ).fetchone()
        return int(row[0])

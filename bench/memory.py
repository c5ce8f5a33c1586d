"""Memory's latency with many facts: recall and remember at 10,000 and 100,000 facts, on SQLite
and on PostgreSQL (a private cluster from Debian's server binaries, as the tests start one).

    python bench/memory.py [--sizes 10000,100000] [--ops 300] [--quick]

Each store is filled (import_facts, one transaction) with facts of one scope: 1 subject per 10
facts, 5 predicates, about half of them already superseded (history). Then, alternating, `--ops`
recalls of one subject (all its current facts) and `--ops` remembers of a new value for an
existing subject and predicate (the path that closes the old interval: a read, a supersede,
an insert of the closed copy and of the new fact, in one transaction under the key's lock).
Figures: median and p95 in ms per operation.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from keel.activities.memory.store import MemoryStore, PostgresMemory, SqliteMemory  # noqa: E402
from keel.workflows.contracts.memory import Assertion, Fact  # noqa: E402
from tests.postgres import private_cluster, server_bin  # noqa: E402

SCOPE = "user:bench"
PREDICATES = ("lives_in", "works_at", "likes", "team", "phone")


def fill(store: MemoryStore, size: int) -> int:
    """`size` facts; returns the number of subjects."""
    subjects = max(1, size // 10)
    start = datetime(2020, 1, 1, tzinfo=UTC)
    facts = []
    for n in range(size):
        subject, predicate = f"s{n % subjects}", PREDICATES[n % len(PREDICATES)]
        old = n % 2 == 1
        facts.append(
            Fact(
                id=uuid.uuid4().hex,
                scope=SCOPE,
                subject=subject,
                predicate=predicate,
                value=f"v{n}",
                valid_from=start + timedelta(minutes=n),
                recorded_at=start + timedelta(minutes=n),
                superseded_at=start + timedelta(minutes=n + 1) if old else None,
                note="closed by bench" if old else "",
            )
        )
    for at in range(0, len(facts), 10_000):
        store.import_facts(facts[at : at + 10_000])
    return subjects


def timed(op: Callable[[], object]) -> float:
    began = time.perf_counter()
    op()
    return (time.perf_counter() - began) * 1000


def measure(store: MemoryStore, size: int, ops: int) -> tuple[list[float], list[float]]:
    subjects = fill(store, size)
    rng = random.Random(7)
    recalls, remembers = [], []
    for i in range(ops):
        subject = f"s{rng.randrange(subjects)}"
        recalls.append(timed(lambda s=subject: store.recall(SCOPE, s)))
        new = Assertion(scope=SCOPE, subject=subject, predicate=PREDICATES[i % 5], value=f"new-{i}")
        remembers.append(timed(lambda a=new, k=f"bench:{size}:{i}": store.remember(a, key=k)))
    return recalls, remembers


def row(backend: str, size: int, recalls: list[float], remembers: list[float]) -> str:
    def p95(values: list[float]) -> float:
        return sorted(values)[int(0.95 * (len(values) - 1))]

    return (
        f"{backend:>10} {size:>8} {statistics.median(recalls):>10.2f} {p95(recalls):>8.2f} "
        f"{statistics.median(remembers):>12.2f} {p95(remembers):>8.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--ops", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="1,000 facts, 50 operations")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.quick:
        sizes, args.ops = [1000], 50
    print("   backend    facts  recall_ms  p95_ms  remember_ms  p95_ms")
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            store = SqliteMemory(Path(tmp) / f"m{size}.db")
            print(row("sqlite", size, *measure(store, size, args.ops)), flush=True)
    if server_bin() is None:
        print("postgres: skipped (no PostgreSQL server binaries)")
        return
    for size in sizes:
        with private_cluster() as url:
            print(row("postgres", size, *measure(PostgresMemory(url), size, args.ops)), flush=True)


if __name__ == "__main__":
    main()

"""The benchmarks' --quick modes still run: a benchmark nobody can run measures nothing.

Figures are printed, never asserted (timings belong in bench/README.md, not in unit tests);
what is asserted is that each finishes and that its table has a row of numbers.
"""

from __future__ import annotations

import sys

import pytest

from tests.processes import run


@pytest.mark.parametrize(
    ("script", "row_start"),
    [
        ("bench/overhead.py", "   20 "),
        ("bench/approvals.py", " keel   1000   100 "),
        ("bench/react_history.py", "    50 "),
        ("bench/faults.py", "        on     E2   0.3 "),
        (
            "bench/chaos.py",
            "runs finished DONE: 4; runs lost: 0; runs with a payment applied twice: 0",
        ),
        ("bench/load.py", " keel   100 "),
        ("bench/supervisors.py", "       20     0.10 "),
        ("bench/jobs.py", "  keel/raw: fire lag "),
        ("bench/memory.py", "    sqlite     1000 "),
        ("bench/parallel.py", "   together "),
        ("bench/skills.py", "   catalog only "),
        # The peers need the optional `peers` extra: CI measures Keel and raw temporalio only.
        ("bench/peers.py --no-peers", "   20 keel-react-lm "),
    ],
)
async def test_quick_mode_runs(script: str, row_start: str) -> None:
    result = await run(sys.executable, *script.split(), "--quick", env={}, timeout=170)
    assert result.code == 0, result.err[-2000:]
    rows = [line for line in result.out.splitlines() if line.startswith(row_start)]
    assert len(rows) == 1, result.out
    print(f"\n{script} --quick:\n{result.out}")

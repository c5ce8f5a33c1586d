"""Model input with 30 skills: the catalog only (progressive loading) against every body inlined.

    python bench/skills.py [--skills 30] [--body-chars 3000] [--quick]

Builds `--skills` skills in the Agent Skills format (a one-line description each, a body of
`--body-chars` characters of instructions), finds them as a worker does, and measures the first
model request of an agent that may use them all, as Keel builds it (the system prompt and the
tool schemas, serialized as the OpenAI adapter sends them): with the catalog only (Keel's
load_skill description) and with every body in the system prompt (what an agent without
progressive loading carries on every call). Tokens are estimated at 4 characters each.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from keel.activities.catalog import Catalog  # noqa: E402
from keel.activities.skills import front_matter  # noqa: E402
from keel.workflows.contracts import SkillInfo  # noqa: E402
from keel.workflows.loop import system_prompt, tool_schemas  # noqa: E402

TOPICS = ("invoices", "refunds", "payroll", "tax", "audits", "vendors", "budgets", "forecasts")


def make_skills(folder: Path, count: int, body_chars: int) -> None:
    for n in range(count):
        topic = TOPICS[n % len(TOPICS)]
        name = f"{topic}-{n}"
        line = f"When handling {topic}, check the ledger first, then follow step {n}. "
        body = (line * (body_chars // len(line) + 1))[:body_chars]
        (folder / name).mkdir()
        (folder / name / "SKILL.md").write_text(
            f"---\nname: {name}\ndescription: How to handle {topic} case {n}; use it when a "
            f"goal mentions {topic}.\n---\n{body}\n"
        )


def request_bytes(system: str, tools: object) -> int:
    return len(json.dumps({"system": system, "tools": tools}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skills", type=int, default=30)
    parser.add_argument("--body-chars", type=int, default=3000)
    parser.add_argument("--quick", action="store_true", help="the defaults (it is quick)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        make_skills(Path(tmp), args.skills, args.body_chars)
        catalog = Catalog.of()
        names = catalog.add_skills(Path(tmp))
        skills = tuple(
            SkillInfo(name=s.name, description=s.description)
            for s in (catalog.skills[n] for n in names)
        )
        bodies = [front_matter(catalog.skills[n].root / "SKILL.md")[1] for n in names]
    goal = "Reconcile last month's invoices"
    schemas = [s.model_dump() for s in tool_schemas({}, (), skills=skills)]
    catalog_only = request_bytes(system_prompt(goal, ""), schemas)
    everything = request_bytes(
        system_prompt(goal, "\n\n".join(bodies)), [s.model_dump() for s in tool_schemas({}, ())]
    )
    print(f"{len(names)} skills, bodies of {args.body_chars} characters")
    print("   context          bytes  ~tokens")
    print(f"   catalog only  {catalog_only:>8}  {catalog_only // 4:>7}")
    print(f"   all bodies    {everything:>8}  {everything // 4:>7}")
    print(f"   ratio         {everything / catalog_only:>8.1f}")


if __name__ == "__main__":
    main()

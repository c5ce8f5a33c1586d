"""Skills on the worker: found in directories (worker.py --skills DIR), loaded for a run by an
activity that snapshots the skill's files into the blob store, so the run reads what it loaded
even if the skill is edited later (and a replay reads nothing: the result is in the history).

    skills = find_skills(Path("skills"))      # each a directory with a SKILL.md
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from temporalio import activity
from temporalio.exceptions import ApplicationError

from keel.activities.store import BlobStore
from keel.shared.errors import CatalogError
from keel.workflows.contracts.skills import (
    RESOURCE_CHARS,
    SKILL_BODY_CHARS,
    SKILL_NAME,
    ResourceRequest,
)

SKILL_FILE = "SKILL.md"
TOOLS_FILE = "tools.py"  # Keel's extension: @tools offered once the skill is loaded
MAX_FILES, MAX_BYTES = 200, 4_000_000  # what one skill may hold, snapshotted whole


@dataclass(frozen=True)
class Skill:
    name: str
    description: str
    root: Path
    tools: tuple[str, ...] = ()


def split_front_matter(text: str) -> tuple[str, str] | None:
    """A SKILL.md's front matter (YAML text) and body; None without front matter."""
    if not text.startswith("---"):
        return None
    _, head, *rest = text.split("---", 2)
    return head, (rest[0] if rest else "").strip()


def front_matter(path: Path) -> tuple[dict[str, object], str]:
    """SKILL.md's YAML front matter, parsed, and its Markdown body."""
    import yaml  # here: a worker that serves no skills need not hold it (~1 MB)

    split = split_front_matter(path.read_text(encoding="utf-8"))
    if split is None:
        raise CatalogError(f"{path}: no YAML front matter (a SKILL.md starts with ---)")
    head, body = split
    try:
        meta = yaml.safe_load(head) or {}
    except yaml.YAMLError as err:
        raise CatalogError(f"{path}: its front matter is not YAML: {err}") from None
    if not isinstance(meta, dict):
        raise CatalogError(f"{path}: its front matter must be a mapping (name, description)")
    return meta, body


def read_skill(root: Path) -> Skill:
    """One skill directory, checked as the Agent Skills format asks."""
    meta, _ = front_matter(root / SKILL_FILE)
    name, description = meta.get("name"), meta.get("description")
    if not isinstance(name, str) or not SKILL_NAME.match(name):
        raise CatalogError(
            f"{root / SKILL_FILE}: name must be 1-64 lowercase letters, digits and single "
            f"hyphens, not {name!r}"
        )
    if name != root.name:
        raise CatalogError(f"{root / SKILL_FILE}: name {name!r} must match its directory")
    if not isinstance(description, str) or not 1 <= len(description) <= 1024:
        raise CatalogError(f"{root / SKILL_FILE}: description must be 1-1024 characters")
    return Skill(name=name, description=description.strip(), root=root)


def find_skills(where: Path) -> list[Skill]:
    """The skill in `where`, or the skills in its subdirectories."""
    if not where.is_dir():
        raise CatalogError(f"no skills directory {where}")
    if (where / SKILL_FILE).exists():
        return [read_skill(where)]
    return [read_skill(d) for d in sorted(where.iterdir()) if (d / SKILL_FILE).exists()]


def files_of(skill: Skill) -> list[Path]:
    files = [
        p
        for p in sorted(skill.root.rglob("*"))
        if p.is_file()
        and not any(part.startswith(".") or part == "__pycache__" for part in p.parts)
    ]
    if len(files) > MAX_FILES or sum(p.stat().st_size for p in files) > MAX_BYTES:
        raise ApplicationError(
            f"skill {skill.name} holds more than {MAX_FILES} files or {MAX_BYTES} bytes",
            type="SkillTooLarge",
            non_retryable=True,
        )
    return files


def snapshot(skill: Skill, run_id: str) -> tuple[str, list[str], str]:
    """Store every file of the skill (content-addressed, pinned to the run); the manifest's
    reference, the resource paths and the body as loaded."""
    store = BlobStore.from_env()
    files = {
        p.relative_to(skill.root).as_posix(): store.put(p.read_bytes(), run_id)
        for p in files_of(skill)
    }
    manifest = store.put(json.dumps(files, sort_keys=True).encode(), run_id)
    text = store.get(files[SKILL_FILE]).decode("utf-8", errors="replace")
    body = (split_front_matter(text) or ("", text))[1][:SKILL_BODY_CHARS]
    resources = [p for p in files if p != SKILL_FILE]
    return manifest, resources, body


@activity.defn(name="keel.read_skill_resource")
async def read_skill_resource(request: ResourceRequest) -> str:
    """One file of a skill as the run loaded it (an unknown path lists the valid ones)."""
    store = BlobStore.from_env()
    files: dict[str, str] = json.loads(store.get(request.manifest))
    ref = files.get(request.path.removeprefix("./"))
    if ref is None:
        known = ", ".join(p for p in files if p != SKILL_FILE) or "none"
        return f"no resource {request.path!r} in skill {request.skill}; its resources: {known}"
    text = store.get(ref).decode("utf-8", errors="replace")
    if len(text) > RESOURCE_CHARS:
        text = text[:RESOURCE_CHARS] + f"\n[... {len(text) - RESOURCE_CHARS} more characters]"
    return text

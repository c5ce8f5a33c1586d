"""Skills: packaged knowledge an agent loads on demand (the Agent Skills format: a directory with
a SKILL.md of YAML front matter, `name` and `description`, and a Markdown body; optional
resource files; as Keel's extension, a `tools.py` of @tools offered once the skill is loaded).

The model first sees only each skill's name and description; `load_skill` adds the body (and
the skill's tools) to its context; `read_skill_resource` reads one file. What a run loaded is
snapshotted in the blob store by content hash, so a replay, and a resource read later in the
run, see what the run saw even when the skill is edited meanwhile.
"""

from __future__ import annotations

import re
from datetime import datetime

from pydantic import Field

from keel.workflows.contracts.base import _Frozen, _Strict
from keel.workflows.contracts.policy import ToolSpec

SKILL_NAME = re.compile(r"^(?=.{1,64}$)[a-z0-9]+(-[a-z0-9]+)*$")
LOAD_SKILL, READ_SKILL_RESOURCE = "load_skill", "read_skill_resource"
SKILL_BODY_CHARS = 64_000  # a skill's instructions, at most (the model reads them whole)
RESOURCE_CHARS = 64_000  # one resource, as the model gets it


class SkillInfo(_Frozen):
    """What the model is shown of a skill before it loads it."""

    name: str
    description: str


class SkillRequest(_Strict):
    agent: str
    skill: str


class LoadedSkill(_Strict):
    name: str
    manifest: str  # the blob of {path: blob ref} the run snapshotted: its content hash
    body: str
    resources: list[str] = Field(default_factory=list)
    tools: dict[str, ToolSpec] = Field(default_factory=dict)


class SkillState(_Strict):
    """A skill a run has loaded (the report, and what a continuation carries on with)."""

    name: str
    manifest: str
    tools: list[str] = Field(default_factory=list)
    loaded_at: datetime


class ResourceRequest(_Strict):
    skill: str
    manifest: str
    path: str

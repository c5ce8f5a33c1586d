"""Model providers. The offline scripted model is the default; it needs no key and no network."""

from keel.activities.models.scripted import (
    ScriptedModel,
    ScriptedPlanner,
    scripted_model,
    scripted_planner,
)

__all__ = ["ScriptedModel", "ScriptedPlanner", "scripted_model", "scripted_planner"]

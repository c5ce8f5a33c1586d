"""Model providers. The offline scripted model is the default; it needs no key and no network."""

from activities.models.scripted import ScriptedPlanner, scripted_planner

__all__ = ["ScriptedPlanner", "scripted_planner"]

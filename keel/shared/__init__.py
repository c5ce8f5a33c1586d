"""Pure helpers both layers use, the workflow (deterministic orchestration) and the activities
(side effects): authorization and argument rules, the call digest, payload bounds, the model's
view of a conversation, span helpers. No I/O, no clocks, no module state: workflow code imports
them through ``imports_passed_through``, so a replay computes exactly what the run did.
"""

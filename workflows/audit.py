"""The run's audit trail: who did what and when, kept in the report (newest AUDIT_KEPT) and
exported as JSON lines by `starter.py audit RUN_ID`. Workflow code: times are workflow time."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from keel.workflows.contracts import AuditEntry, RunReport, audit_kept


def audit(report: RunReport, **fields: object) -> None:
    report.audit.append(AuditEntry.model_validate({"at": workflow.now(), **fields}))
    if len(report.audit) > audit_kept():
        del report.audit[0]
        report.audit_dropped += 1

"""Keel's errors: one base, KeelError, so a script can catch everything Keel refuses or cannot
reach with one `except`; each subclass says what went wrong in its message, in one line.

    import keel
    try:
        report = await keel.get(client, "pay-1").report()
    except keel.RunNotFound:
        ...

Defined here, with the helpers both layers share (pure, no imports), so workflow code,
activities and the client side raise the same classes.
"""

from __future__ import annotations


class KeelError(Exception):
    """Anything Keel refuses or cannot do; the message says why."""


class DecisionRefused(KeelError, ValueError):
    """A decision that does not apply (unknown request, choice not offered, approver not on the
    list, already decided, ...); nothing was changed."""


class DecisionNotConfirmed(KeelError):
    """A decision was handed to the server but no run answered for it (sent as a signal, or no
    worker took the update in time): it may still apply, or be refused, when a worker runs."""


class Traversal(KeelError, ValueError):
    """An argument filled into a scope climbs out of its directory (a `..` segment)."""


class CatalogError(KeelError):
    """A tools module could not be loaded, declares something twice or invalid, or names a tool,
    check or agent the catalog lacks."""


class SettingError(KeelError):
    """A KEEL_* variable holds a value Keel cannot use; the message names it and what fits."""


class BlobCorrupted(KeelError):
    """A blob's bytes do not hash to its reference: tampered with or damaged."""


class StoreUnavailable(KeelError):
    """The blob store cannot be reached or is misconfigured (KEEL_STORE_URL, KEEL_STORE_DIR)."""


class CodecError(KeelError, ValueError):
    """Payload encryption is misconfigured, or a payload cannot be decrypted with the keys."""


class TracingUnavailable(KeelError):
    """Traces were asked for (OTEL_* variables) but the exporter cannot be set up."""


class ConnectionFailed(KeelError):
    """The Temporal server could not be reached."""


class RunNotFound(KeelError):
    """No run has that id in this namespace (or the namespace does not exist)."""


class RunExists(KeelError):
    """A run with that id exists (running or closed) and no rerun was asked for."""


class RunRefused(KeelError):
    """The worker refused the run (unknown agent, a plan it will not run): nothing ran."""


class RunClosed(KeelError):
    """The run has already ended; a cancel has nothing to stop."""


class StatusAttributeMissing(KeelError):
    """The namespace lacks the KeelStatus search attribute, so waiting runs cannot be listed."""


class RegistryError(KeelError):
    """A jobs registry file Keel refuses: the message names the file, the job and the field."""


class JobNotFound(KeelError):
    """No job of that name has a schedule on the server (sync the registry first)."""


class MemoryUnavailable(KeelError):
    """The memory store cannot be reached or read (bad KEEL_MEMORY_URL, no server, no such
    fact)."""

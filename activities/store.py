"""A content-addressed blob store for what is too large, or too repetitive, for workflow history.

Temporal caps a payload at 2 MB and a history at 50 MB, so a tool result larger than
KEEL_INLINE_LIMIT bytes is written here and the history keeps only its hash and a preview; a
model's conversation and its system prompt and tool schemas are kept here too (by reference).

    ref = BlobStore.from_env().put(b"...", run_id="order-42")   # "sha256:..."

Two backends, chosen by the environment of the worker (and of `starter.py prune`):
- a directory (`KEEL_STORE_DIR`, default `.keel/blobs`): one machine, or a filesystem that
  every worker mounts;
- an S3-compatible bucket (`KEEL_STORE_URL=s3://bucket/prefix`, activities/store_s3.py): workers
  on many machines. Endpoint and credentials come from the standard AWS variables
  (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, ...), never from a workflow.

Each blob written for a run is pinned to it, so `prune` can keep whatever a run still open
references and remove the rest by age. Only activities and the command line use a store: a
replay reads nothing from it.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

from keel.activities.settings import env_count
from keel.shared.errors import BlobCorrupted

DEFAULT_INLINE_LIMIT = 4096


def inline_limit() -> int:
    return env_count("KEEL_INLINE_LIMIT", DEFAULT_INLINE_LIMIT)


def blob_ref(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def digest_of(ref: str) -> str:
    """The hex digest of a reference; refuses anything else (a reference never names a path)."""
    algo, _, digest = ref.partition(":")
    if algo != "sha256" or len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
        raise ValueError(f"not a blob reference: {ref!r}")
    return digest


def run_key(run_id: str) -> str:
    """A run's pin name: run ids are free text, pin names must be safe file and key names."""
    return hashlib.sha256(run_id.encode()).hexdigest()[:32]


@dataclass
class PruneResult:
    blobs_removed: int = 0
    bytes_removed: int = 0
    blobs_kept_for_open_runs: int = 0
    blobs_kept_young: int = 0
    pins_removed: int = 0


@dataclass
class Pin:
    """What a run pins: its id, the references, when it last pinned one, and the backend's
    handle to remove it."""

    handle: str
    run_id: str
    refs: set[str]
    modified: float


@dataclass
class Blob:
    ref: str
    size: int
    modified: float  # last written: a blob written again is young again


class BlobStore(ABC):
    """The interface every backend implements; `prune` is the same for all of them."""

    # A store on this machine's disk answers a small read or write in well under a millisecond;
    # one across the network (a bucket) may take tens: see small_store_io.
    on_local_disk = False

    @classmethod
    def from_env(cls) -> BlobStore:
        url = os.environ.get("KEEL_STORE_URL", "")
        if url:
            from keel.activities.store_s3 import S3Store  # boto3 only where a bucket is asked for

            return S3Store.for_url(url)
        return _directory_store(os.environ.get("KEEL_STORE_DIR", ".keel/blobs"))

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the blobs are, for messages."""

    @abstractmethod
    def put(self, data: bytes, run_id: str | None = None) -> str:
        """Store `data` (pinned to `run_id` when given) and return its reference."""

    def get(self, ref: str) -> bytes:
        """The blob's bytes, checked against the hash its reference names: BlobCorrupted when
        they differ (a tampered or damaged store is never used silently), FileNotFoundError
        when the store does not have it."""
        data = self._read(ref)
        if blob_ref(data) != ref:
            raise BlobCorrupted(
                f"blob {ref} in {self.location} does not match its hash: the store was "
                "changed outside Keel; it is not used"
            )
        return data

    @abstractmethod
    def _read(self, ref: str) -> bytes:
        """The blob's bytes as stored; FileNotFoundError when the store does not have it."""

    @abstractmethod
    def pin(self, run_id: str, ref: str) -> None:
        """Record that `run_id` references `ref` (safe from several workers at once)."""

    @abstractmethod
    def pins(self) -> Iterator[Pin]: ...

    @abstractmethod
    def blobs(self) -> Iterator[Blob]: ...

    @abstractmethod
    def remove_pin(self, pin: Pin) -> None: ...

    @abstractmethod
    def remove_blob(self, ref: str) -> None: ...

    def prune(
        self,
        open_runs: set[str],
        older_than: float,
        dry_run: bool = False,
        now: float | None = None,
    ) -> PruneResult:
        """Remove blobs last written more than `older_than` seconds ago that no open run pins,
        and the pins of closed runs as old. `open_runs` must come from the server: a run
        missing from it loses its blobs once they are old."""
        cutoff = (time.time() if now is None else now) - older_than
        result = PruneResult()
        keep: set[str] = set()
        for pin in self.pins():
            if pin.run_id in open_runs:
                keep |= pin.refs
            elif pin.modified < cutoff:
                result.pins_removed += 1
                if not dry_run:
                    self.remove_pin(pin)
        for blob in self.blobs():
            if blob.ref in keep:
                result.blobs_kept_for_open_runs += 1
            elif blob.modified >= cutoff:
                result.blobs_kept_young += 1
            else:
                result.blobs_removed += 1
                result.bytes_removed += blob.size
                if not dry_run:
                    self.remove_blob(blob.ref)
        return result


class DirectoryStore(BlobStore):
    """Blobs as files under `root` (root/ab/abcd...), pins as one file a run
    (root/pins/<digest of the run id>: a `run` line, then one reference a line)."""

    on_local_disk = True  # KEEL_STORE_DIR is taken as local; a network store has its URL

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def location(self) -> str:
        return str(self.root)

    def path_of(self, ref: str) -> Path:
        digest = digest_of(ref)
        return self.root / digest[:2] / digest

    def put(self, data: bytes, run_id: str | None = None) -> str:
        ref = blob_ref(data)
        path = self.path_of(ref)
        if path.exists():
            os.utime(path)  # a blob written again is young again: its age is its last use
        else:
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            try:
                tmp.write_bytes(data)
            except FileNotFoundError:  # made when first needed, not checked at every write
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp.write_bytes(data)
            tmp.replace(path)  # atomic: a reader never sees half a blob
        if run_id is not None:
            self.pin(run_id, ref)
        return ref

    def pin(self, run_id: str, ref: str) -> None:
        pin = self.root / "pins" / run_key(run_id)
        try:
            out = pin.open("a", encoding="utf-8")  # appends: safe from several workers
        except FileNotFoundError:
            pin.parent.mkdir(parents=True, exist_ok=True)
            out = pin.open("a", encoding="utf-8")
        with out:
            new = out.tell() == 0  # opened for appending: at its end
            out.write((f"run {run_id}\n" if new else "") + ref + "\n")

    def _read(self, ref: str) -> bytes:
        return self.path_of(ref).read_bytes()

    def pins(self) -> Iterator[Pin]:
        folder = self.root / "pins"
        if not folder.is_dir():
            return
        for path in folder.iterdir():
            lines = path.read_text(encoding="utf-8").splitlines()
            run_id = next((line[4:] for line in lines if line.startswith("run ")), "")
            refs = {line for line in lines if line.startswith("sha256:")}
            yield Pin(str(path), run_id, refs, path.stat().st_mtime)

    def blobs(self) -> Iterator[Blob]:
        if not self.root.is_dir():
            return
        for folder in self.root.iterdir():
            if folder.is_dir() and len(folder.name) == 2:
                for path in folder.iterdir():
                    if len(path.name) == 64:
                        stat = path.stat()
                        yield Blob("sha256:" + path.name, stat.st_size, stat.st_mtime)

    def remove_pin(self, pin: Pin) -> None:
        Path(pin.handle).unlink(missing_ok=True)

    def remove_blob(self, ref: str) -> None:
        self.path_of(ref).unlink(missing_ok=True)


@functools.lru_cache(maxsize=16)
def _directory_store(folder: str) -> DirectoryStore:
    """One store a folder (a model call asks for the store several times a step)."""
    return DirectoryStore(Path(folder))


P = ParamSpec("P")
T = TypeVar("T")


async def small_store_io(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run `fn`, small reads and writes of the configured blob store (a model call's context
    link, a few KB): inline when the store is on this machine's disk, where a hop to a thread
    and back costs more than the file work (~0.25 ms each way on a busy 2-core machine, two a
    model call: a fifth of a local step); in a thread when it is across the network, off the
    worker's event loop."""
    if BlobStore.from_env().on_local_disk:
        return fn(*args, **kwargs)
    return await asyncio.to_thread(fn, *args, **kwargs)

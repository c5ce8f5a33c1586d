"""A content-addressed blob store for what is too large, or too repetitive, for workflow history.

Temporal caps a payload at 2 MB and a history at 50 MB, so a tool result larger than
KEEL_INLINE_LIMIT bytes is written here and the history keeps only its hash and a preview; a
model's conversation and its system prompt and tool schemas are kept here too (by reference).

    ref = BlobStore.from_env().put(b"...", run_id="order-42")   # "sha256:..."

Each blob written for a run is pinned to it (pins/<digest of the run id>, one reference a
line), so `prune` can keep whatever a run still open references and remove the rest by age.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DEFAULT_INLINE_LIMIT = 4096


def inline_limit() -> int:
    return int(os.environ.get("KEEL_INLINE_LIMIT", DEFAULT_INLINE_LIMIT))


@dataclass
class PruneResult:
    blobs_removed: int = 0
    bytes_removed: int = 0
    blobs_kept_for_open_runs: int = 0
    blobs_kept_young: int = 0
    pins_removed: int = 0


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def from_env(cls) -> BlobStore:
        return cls(Path(os.environ.get("KEEL_STORE_DIR", ".keel/blobs")))

    def _path(self, ref: str) -> Path:
        algo, _, digest = ref.partition(":")
        if (
            algo != "sha256"
            or len(digest) != 64
            or not all(c in "0123456789abcdef" for c in digest)
        ):
            raise ValueError(f"not a blob reference: {ref!r}")
        return self.root / digest[:2] / digest

    def _pin_path(self, run_id: str) -> Path:
        return self.root / "pins" / hashlib.sha256(run_id.encode()).hexdigest()[:32]

    def put(self, data: bytes, run_id: str | None = None) -> str:
        ref = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self._path(ref)
        if path.exists():
            os.utime(path)  # a blob written again is young again: its age is its last use
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(data)
            tmp.replace(path)  # atomic: a reader never sees half a blob
        if run_id is not None:
            self.pin(run_id, ref)
        return ref

    def pin(self, run_id: str, ref: str) -> None:
        """Record that `run_id` references `ref` (appends: safe from several workers)."""
        pin = self._pin_path(run_id)
        pin.parent.mkdir(parents=True, exist_ok=True)
        new = not pin.exists()
        with pin.open("a", encoding="utf-8") as out:
            out.write((f"run {run_id}\n" if new else "") + ref + "\n")

    def get(self, ref: str) -> bytes:
        return self._path(ref).read_bytes()

    def _pins(self) -> Iterator[tuple[Path, str, set[str]]]:
        folder = self.root / "pins"
        if not folder.is_dir():
            return
        for pin in folder.iterdir():
            lines = pin.read_text(encoding="utf-8").splitlines()
            run_id = next((line[4:] for line in lines if line.startswith("run ")), "")
            yield pin, run_id, {line for line in lines if line.startswith("sha256:")}

    def _blobs(self) -> Iterator[Path]:
        if not self.root.is_dir():
            return
        for folder in self.root.iterdir():
            if folder.is_dir() and len(folder.name) == 2:
                yield from (p for p in folder.iterdir() if len(p.name) == 64)

    def prune(self, open_runs: set[str], older_than: float, dry_run: bool = False) -> PruneResult:
        """Remove blobs last written more than `older_than` seconds ago that no open run pins,
        and the pins of closed runs as old. `open_runs` must come from the server: a run
        missing from it loses its blobs once they are old."""
        cutoff = time.time() - older_than
        result = PruneResult()
        keep: set[str] = set()
        for pin, run_id, refs in self._pins():
            if run_id in open_runs:
                keep |= refs
            elif pin.stat().st_mtime < cutoff:
                result.pins_removed += 1
                if not dry_run:
                    pin.unlink(missing_ok=True)
        for blob in self._blobs():
            ref = "sha256:" + blob.name
            if ref in keep:
                result.blobs_kept_for_open_runs += 1
                continue
            stat = blob.stat()
            if stat.st_mtime >= cutoff:
                result.blobs_kept_young += 1
                continue
            result.blobs_removed += 1
            result.bytes_removed += stat.st_size
            if not dry_run:
                blob.unlink(missing_ok=True)
        return result

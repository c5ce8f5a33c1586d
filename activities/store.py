"""A content-addressed blob store for results too large to keep in workflow history.

Temporal caps a payload at 2 MB and a history at 50 MB, so a tool result larger than
KEEL_INLINE_LIMIT bytes is written here and the history keeps only its hash and a preview.

    ref = BlobStore.from_env().put(b"...")   # "sha256:..."
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

DEFAULT_INLINE_LIMIT = 4096


def inline_limit() -> int:
    return int(os.environ.get("KEEL_INLINE_LIMIT", DEFAULT_INLINE_LIMIT))


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

    def put(self, data: bytes) -> str:
        ref = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self._path(ref)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(data)
            tmp.replace(path)  # atomic: a reader never sees half a blob
        return ref

    def get(self, ref: str) -> bytes:
        return self._path(ref).read_bytes()

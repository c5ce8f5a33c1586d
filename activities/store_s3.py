"""The blob store in an S3-compatible bucket (AWS S3, MinIO, Cloudflare R2, ...), for workers
on many machines. Needs the `s3` extra (boto3).

    KEEL_STORE_URL=s3://my-bucket/keel/      # bucket and key prefix
    AWS_ENDPOINT_URL=http://minio:9000       # only for a service other than AWS
    AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_REGION, or any source boto3 reads

Layout under the prefix: `blobs/<sha256>` (a blob written again is written again, so its
LastModified is its last use), `pins/<digest of the run id>/<sha256>` (empty: one object a
reference, so pinning from several workers needs no append) and `pins/<digest of the run
id>/run` holding the run id.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

from keel.activities.store import Blob, BlobStore, Pin, blob_ref, digest_of, run_key
from keel.shared.errors import StoreUnavailable

_stores: dict[str, S3Store] = {}
_stores_lock = threading.Lock()
RUNS_REMEMBERED = 10_000  # runs whose `run` object this process already wrote


class S3Store(BlobStore):
    def __init__(self, bucket: str, prefix: str = "", client: Any = None) -> None:
        if client is None:
            client = _client()
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = client
        self._runs_written: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def for_url(cls, url: str) -> S3Store:
        """One store (and one boto3 client, which is thread-safe) per URL in this process."""
        with _stores_lock:
            if url not in _stores:
                parsed = urlparse(url)
                if parsed.scheme != "s3" or not parsed.netloc:
                    raise StoreUnavailable(f"KEEL_STORE_URL={url!r} is not s3://bucket/prefix")
                _stores[url] = cls(parsed.netloc, parsed.path)
            return _stores[url]

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def _blob_key(self, ref: str) -> str:
        return f"{self.prefix}blobs/{digest_of(ref)}"

    def put(self, data: bytes, run_id: str | None = None) -> str:
        ref = blob_ref(data)
        self.client.put_object(Bucket=self.bucket, Key=self._blob_key(ref), Body=data)
        if run_id is not None:
            self.pin(run_id, ref)
        return ref

    def pin(self, run_id: str, ref: str) -> None:
        folder = f"{self.prefix}pins/{run_key(run_id)}/"
        with self._lock:
            known = run_id in self._runs_written
        if not known:
            self.client.put_object(Bucket=self.bucket, Key=folder + "run", Body=run_id.encode())
            with self._lock:
                self._runs_written[run_id] = None
                while len(self._runs_written) > RUNS_REMEMBERED:
                    self._runs_written.popitem(last=False)
        self.client.put_object(Bucket=self.bucket, Key=folder + digest_of(ref), Body=b"")

    def _read(self, ref: str) -> bytes:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self._blob_key(ref))
        except self.client.exceptions.NoSuchKey:
            raise FileNotFoundError(f"{ref} is not in {self.location}") from None
        return answer["Body"].read()

    def _objects(self, under: str) -> Iterator[dict[str, Any]]:
        pages = self.client.get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=self.bucket, Prefix=self.prefix + under):
            yield from page.get("Contents", [])

    def pins(self) -> Iterator[Pin]:
        found: dict[str, Pin] = {}
        for item in self._objects("pins/"):
            folder, _, name = item["Key"][len(self.prefix) + len("pins/") :].partition("/")
            pin = found.setdefault(folder, Pin(folder, "", set(), 0.0))
            pin.modified = max(pin.modified, item["LastModified"].timestamp())
            if name == "run":
                key = f"{self.prefix}pins/{folder}/run"
                body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
                pin.run_id = body.decode()
            elif len(name) == 64:
                pin.refs.add("sha256:" + name)
        yield from found.values()

    def blobs(self) -> Iterator[Blob]:
        for item in self._objects("blobs/"):
            name = item["Key"].rpartition("/")[2]
            if len(name) == 64:
                yield Blob("sha256:" + name, item["Size"], item["LastModified"].timestamp())

    def remove_pin(self, pin: Pin) -> None:
        keys = [{"Key": item["Key"]} for item in self._objects(f"pins/{pin.handle}/")]
        for start in range(0, len(keys), 1000):  # DeleteObjects takes 1,000 keys at most
            self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": keys[start : start + 1000], "Quiet": True}
            )

    def remove_blob(self, ref: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._blob_key(ref))


def _client() -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError as err:
        raise StoreUnavailable(
            "KEEL_STORE_URL names an S3 bucket but boto3 is not installed: pip install 'keel[s3]'"
        ) from err
    # Bounded: the activity's own retry policy sits above these attempts.
    config = Config(
        connect_timeout=5, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"}
    )
    return boto3.session.Session().client("s3", config=config)

"""Payload encryption: AES-256-GCM over every payload the client and worker send to Temporal, so
the history at rest (inputs, results, memos, failure messages) is unreadable without the key.

    KEEL_CODEC_KEYS="k2:<base64 32 bytes>,k1:<base64 32 bytes>"   # the first one encrypts

Each encrypted payload names its key id in its metadata, so a rotation is: put the new key
first and keep the old ones after it for as long as histories written under them matter. A
payload whose key id is unknown, or that does not decrypt under its key, is an explicit error.

    codec = AesGcmCodec.from_env()                  # None when KEEL_CODEC_KEYS is unset
    plugin = KeelPlugin(catalog, codec=codec)       # also encodes failure messages and traces

With keys, a plaintext payload is refused (a run started by a client without the keys would
otherwise run with its goal and arguments in clear in the history); KEEL_CODEC_ALLOW_PLAINTEXT=1
accepts it while histories written before encryption still matter. Without keys, KeelPlugin
uses `EncryptedPayloadGuard`, which says in one line that a run is encrypted and names
KEEL_CODEC_KEYS instead of failing on an unknown encoding.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Sequence

from temporalio.api.common.v1 import Payload
from temporalio.converter import DefaultFailureConverter, PayloadCodec

from keel.shared.errors import CodecError

ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
NONCE_BYTES = 12


class EncodedFailureConverter(DefaultFailureConverter):
    """Failure messages and stack traces go into an encoded payload too, so an exception that
    quotes an argument leaks nothing into the history."""

    def __init__(self) -> None:
        super().__init__(encode_common_attributes=True)


def parse_keys(text: str) -> list[tuple[str, bytes]]:
    keys: list[tuple[str, bytes]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key_id, sep, encoded = item.partition(":")
        if not sep or not key_id:
            raise CodecError("KEEL_CODEC_KEYS is a list of ID:BASE64KEY, comma-separated")
        try:
            key = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise CodecError(f"key {key_id!r} is not base64") from None
        if len(key) != 32:
            raise CodecError(f"key {key_id!r} must be 32 bytes (AES-256), not {len(key)}")
        keys.append((key_id, key))
    if not keys:
        raise CodecError("KEEL_CODEC_KEYS holds no key")
    return keys


def new_key() -> str:
    """A fresh key, base64, for KEEL_CODEC_KEYS."""
    return base64.b64encode(os.urandom(32)).decode()


class AesGcmCodec(PayloadCodec):
    def __init__(self, keys: Sequence[tuple[str, bytes]], *, allow_plaintext: bool = False) -> None:
        if not keys:
            raise CodecError("a codec needs at least one key")
        # Imported here: cryptography costs a worker ~6 MB, and most workers hold no key.
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.current = keys[0][0]
        self.keys = {key_id: AESGCM(key) for key_id, key in keys}
        self.allow_plaintext = allow_plaintext

    @classmethod
    def from_env(cls) -> AesGcmCodec | None:
        text = os.environ.get("KEEL_CODEC_KEYS", "").strip()
        allow = os.environ.get("KEEL_CODEC_ALLOW_PLAINTEXT", "0").strip()
        if allow not in ("0", "1"):
            raise CodecError(f"KEEL_CODEC_ALLOW_PLAINTEXT must be 0 or 1, not {allow!r}")
        return cls(parse_keys(text), allow_plaintext=allow == "1") if text else None

    def encrypt(self, payload: Payload) -> Payload:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self.keys[self.current].encrypt(nonce, payload.SerializeToString(), None)
        return Payload(
            metadata={"encoding": ENCODING, KEY_ID: self.current.encode()}, data=nonce + sealed
        )

    def decrypt(self, payload: Payload) -> Payload:
        from cryptography.exceptions import InvalidTag

        if payload.metadata.get("encoding") != ENCODING:
            if self.allow_plaintext:
                return payload  # written before the codec was on: left as it is
            raise CodecError(
                "refused a plaintext payload: this side encrypts (KEEL_CODEC_KEYS), so the run "
                "was started or signalled by a client without the keys; start it with "
                "KEEL_CODEC_KEYS set, or set KEEL_CODEC_ALLOW_PLAINTEXT=1 while migrating"
            )
        key_id = payload.metadata.get(KEY_ID, b"").decode()
        key = self.keys.get(key_id)
        if key is None:
            raise CodecError(
                f"payload encrypted with key id {key_id!r}, which is not among the keys "
                f"({', '.join(self.keys)}): add it to KEEL_CODEC_KEYS after the current key"
            )
        try:
            plain = key.decrypt(payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:], None)
        except InvalidTag:
            raise CodecError(
                f"payload does not decrypt with key {key_id!r}: a wrong key under that id, or "
                "corrupted data"
            ) from None
        out = Payload()
        out.ParseFromString(plain)
        return out

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(p) for p in payloads]


class EncryptedPayloadGuard(PayloadCodec):
    """For a client or worker without keys: payloads pass as they are, and an encrypted one is
    one clear error naming KEEL_CODEC_KEYS (not an unknown-encoding KeyError)."""

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return list(payloads)

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        if any(p.metadata.get("encoding") == ENCODING for p in payloads):
            raise CodecError(
                "this run's payloads are encrypted: set KEEL_CODEC_KEYS to the keys its "
                "workers use to read it"
            )
        return list(payloads)

"""A codec server, so the Temporal web UI (or `temporal` CLI) shows decrypted payloads to someone
who holds the key:

    KEEL_CODEC_KEYS=... KEEL_CODEC_TOKEN=... python -m keel.codec_server [--port 8081]

It speaks the codec-server protocol (POST /encode and /decode with {"payloads": [...]}) and
decrypts histories, so it is a key holder's tool, not a public service: every request must
carry the token. The web UI cannot send one (its codec setting is an endpoint URL, nothing
more), so the token goes in the endpoint's path, a capability URL: set the UI's codec endpoint
(or the dev server's --ui-codec-endpoint) to http://localhost:8081/<KEEL_CODEC_TOKEN>. Scripts
and the CLI may send `Authorization: Bearer <token>` to /decode instead. Browsers may call it
only from the UI's origin (--origin, default the dev server's UI); it listens on loopback only.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads

from keel.activities.settings import OneLineParser, env_count
from keel.codec import ENCODING, AesGcmCodec
from keel.shared.errors import CodecError, SettingError

DEFAULT_ORIGIN = "http://localhost:8233"  # the dev server's web UI


def make_server(codec: AesGcmCodec, token: str, port: int, origin: str) -> ThreadingHTTPServer:
    if not token:
        raise CodecError("the codec server needs KEEL_CODEC_TOKEN: it decrypts histories")

    def shown(payload: Payload) -> Payload:
        # The UI asks to decode whatever it shows, search attributes and other plaintext
        # included: those pass as they are (refusing plaintext guards workers, not viewers).
        return codec.decrypt(payload) if payload.metadata.get("encoding") == ENCODING else payload

    class Handler(BaseHTTPRequestHandler):
        def _headers(self, status: int, body: bytes = b"") -> None:
            self.send_response(status)
            self.send_header("access-control-allow-origin", origin)
            # The UI's requests carry headers of its own (x-namespace, and more in newer UIs):
            # the preflight allows what it asks for; the token, not a header list, guards.
            asked = self.headers.get("access-control-request-headers", "")
            self.send_header(
                "access-control-allow-headers", asked or "authorization,content-type,x-namespace"
            )
            self.send_header("access-control-allow-methods", "POST,OPTIONS")
            self.send_header("access-control-allow-credentials", "true")
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _reply(self, status: int, value: Any) -> None:
            self._headers(status, json.dumps(value).encode())

        def do_OPTIONS(self) -> None:  # CORS preflight from the web UI carries no token
            self._headers(200)

        def do_POST(self) -> None:
            # The UI adds a query (?preserveStorageRefs=true); the endpoint is the path.
            path = urlsplit(self.path).path
            prefix, _, endpoint = path.rpartition("/")
            bearer = self.headers.get("authorization", "")
            allowed = hmac.compare_digest(prefix.encode(), f"/{token}".encode()) or (
                prefix == "" and hmac.compare_digest(bearer.encode(), f"Bearer {token}".encode())
            )
            if not allowed:
                return self._reply(401, {"error": "unauthorized"})
            if endpoint not in ("encode", "decode"):
                return self._reply(404, {"error": f"no such endpoint /{endpoint}"})
            length = int(self.headers.get("content-length", "0"))
            try:
                payloads = json_format.Parse(self.rfile.read(length), Payloads())
                change = codec.encrypt if endpoint == "encode" else shown
                out = Payloads(payloads=[change(p) for p in payloads.payloads])
            except (json_format.ParseError, CodecError) as err:
                return self._reply(400, {"error": str(err)})
            self._reply(200, json_format.MessageToDict(out))

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", port), Handler)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m keel.codec_server")
    parser.add_argument("--port", type=int, default=None, help="default: $KEEL_CODEC_PORT or 8081")
    parser.add_argument("--origin", default=os.environ.get("KEEL_CODEC_ORIGIN", DEFAULT_ORIGIN))
    args = parser.parse_args(argv)
    try:
        if args.port is None:
            args.port = env_count("KEEL_CODEC_PORT", 8081)
        codec = AesGcmCodec.from_env()
        if codec is None:
            raise CodecError("KEEL_CODEC_KEYS is not set")
        server = make_server(codec, os.environ.get("KEEL_CODEC_TOKEN", ""), args.port, args.origin)
    except (CodecError, SettingError, OSError) as err:
        print(f"codec_server: error: {err}", file=sys.stderr)
        return 1
    print(
        f"keel codec server on http://127.0.0.1:{args.port} for the web UI at {args.origin}; "
        f"its codec endpoint: http://localhost:{args.port}/<KEEL_CODEC_TOKEN>",
        flush=True,
    )
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())

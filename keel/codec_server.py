"""A codec server, so the Temporal web UI (or `temporal` CLI) shows decrypted payloads to someone
who holds the key:

    KEEL_CODEC_KEYS=... KEEL_CODEC_TOKEN=... python -m keel.codec_server [--port 8081]

then set the UI's codec endpoint to http://localhost:8081 and its token to KEEL_CODEC_TOKEN.
It speaks the codec-server protocol (POST /encode and /decode with {"payloads": [...]}) and
refuses every request without `Authorization: Bearer <KEEL_CODEC_TOKEN>` (401): the endpoint
decrypts histories, so it is a key holder's tool, not a public service.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf import json_format
from temporalio.api.common.v1 import Payloads

from keel.activities.settings import OneLineParser, env_count
from keel.codec import AesGcmCodec
from keel.shared.errors import CodecError, SettingError

DEFAULT_ORIGIN = "http://localhost:8233"  # the dev server's web UI


def make_server(codec: AesGcmCodec, token: str, port: int, origin: str) -> ThreadingHTTPServer:
    if not token:
        raise CodecError("the codec server needs KEEL_CODEC_TOKEN: it decrypts histories")

    class Handler(BaseHTTPRequestHandler):
        def _headers(self, status: int, body: bytes = b"") -> None:
            self.send_response(status)
            self.send_header("access-control-allow-origin", origin)
            self.send_header(
                "access-control-allow-headers", "authorization,content-type,x-namespace"
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
            given = self.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return self._reply(401, {"error": "unauthorized"})
            if self.path not in ("/encode", "/decode"):
                return self._reply(404, {"error": f"no such endpoint {self.path}"})
            length = int(self.headers.get("content-length", "0"))
            try:
                payloads = json_format.Parse(self.rfile.read(length), Payloads())
                change = codec.encrypt if self.path == "/encode" else codec.decrypt
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
    print(f"keel codec server on http://127.0.0.1:{args.port} (origin {args.origin})", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())

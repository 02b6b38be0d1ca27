"""Helpers of the authn tests: keys, token minting, a fake clock, a real local JWKS server."""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True)
class SigningKey:
    """A private key, the algorithm it signs with and its public JWK."""

    kid: str
    alg: str
    private: PrivateKey

    def jwk(self, *, with_alg: bool = False) -> dict[str, Any]:
        key = self.private.public_key()
        if isinstance(key, rsa.RSAPublicKey):
            out = RSAAlgorithm.to_jwk(key, as_dict=True)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            out = ECAlgorithm.to_jwk(key, as_dict=True)
        else:
            out = OKPAlgorithm.to_jwk(key, as_dict=True)
        out["kid"] = self.kid
        if with_alg:
            out["alg"] = self.alg
        return out

    def sign(self, claims: dict[str, Any], **headers: Any) -> bytes:
        merged: dict[str, Any] = {"kid": self.kid, **headers}
        hdrs = {k: v for k, v in merged.items() if v is not None}
        return jwt.encode(claims, self.private, algorithm=self.alg, headers=hdrs).encode()

    def bearer(self, claims: dict[str, Any], **headers: Any) -> bytes:
        return b"Bearer " + self.sign(claims, **headers)


def jwks(*keys: SigningKey) -> bytes:
    return json.dumps({"keys": [k.jwk() for k in keys]}).encode()


def b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def raw_token(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> bytes:
    """A token with whatever header and signature the test wants."""
    return b".".join(
        [b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()), b64(signature)]
    )


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class JwksServer:
    """A stdlib HTTP server in a thread answering GET /jwks with ``body``."""

    body: bytes = b'{"keys": []}'
    status: int = 200
    cache_control: str | None = None
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: HTTPServer | None = None
    thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/jwks"

    def start(self) -> None:
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with state.lock:
                    state.requests += 1
                    body, status, cc = state.body, state.status, state.cache_control
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if cc is not None:
                    self.send_header("Cache-Control", cc)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        """Shut the server down and close its socket (connections are then refused)."""
        if self.server is not None and self.thread is not None:
            self.server.shutdown()
            self.thread.join(timeout=10)
            self.server.server_close()
            self.thread = None

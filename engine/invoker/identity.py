"""Request identity: every request to a deployment is signed, as restate-server does when it holds a key.

With ``invoker.request_identity_private_key_pem_file`` set (an Ed25519 private key in PKCS#8 PEM, e.g. from
``openssl genpkey -algorithm ed25519``), each attempt (``POST /invoke/{service}/{handler}``) and each discovery
(``GET /discover``), over HTTP and in-process alike, carries:

- ``x-restate-signature-scheme: v1``
- ``x-restate-jwt-v1: <JWT>``: header ``{"alg": "EdDSA", "typ": "JWT", "kid": "publickeyv1_..."}``, claims ``aud`` =
  the request path below the deployment's URI (``/invoke/Greeter/greet``, ``/discover``, also for a deployment
  registered as ``http://host/prefix``), ``iat`` = now, ``nbf`` = now - 60 s, ``exp`` = now + 60 s
  (restate-server's window). The SDKs check the signature, the time window with zero leeway, and ``aud`` against
  the path they serve minus their mount point.

SDKs configured with the identity key ``publickeyv1_<base58 of the 32-byte public key>`` (Python:
``restate.app(services, identity_keys=[...])``) answer 401 to any request not signed by that key. The key id is
logged once at start-up; the private key itself is never logged or shown (``repr`` shows the key id only).

A token is reused for the same path for :data:`TOKEN_REUSE_S` seconds (it stays valid for at least 50 s more),
so signing costs one Ed25519 signature per path every few seconds, not one per attempt.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final, final

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from engine.errors import ConfigError

__all__ = [
    "JWT_HEADER",
    "PUBLIC_KEY_PREFIX",
    "SCHEME_HEADER",
    "SCHEME_V1",
    "RequestSigner",
    "b58encode",
    "public_key_id",
]

SCHEME_HEADER: Final = "x-restate-signature-scheme"
JWT_HEADER: Final = "x-restate-jwt-v1"
SCHEME_V1: Final = "v1"
PUBLIC_KEY_PREFIX: Final = "publickeyv1_"
# nbf and exp lie this far before and after iat (restate-server's LEEWAY_SECONDS).
TOKEN_WINDOW_S: Final = 60
# A token signed for a path is sent again for this long (well inside its window).
TOKEN_REUSE_S: Final = 10
# Distinct paths are bounded by the registered handlers; the cache is cleared past this many anyway.
TOKEN_CACHE_LIMIT: Final = 4096

_B58_ALPHABET: Final = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def b58encode(data: bytes) -> str:
    """Base58 with the Bitcoin alphabet (what the SDKs decode in ``publickeyv1_`` keys); leading zero bytes
    become ``1``."""
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_B58_ALPHABET[r])
    zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * zeros + "".join(reversed(out))


def public_key_id(public_key: Ed25519PublicKey) -> str:
    """``publickeyv1_<base58 of the raw 32-byte key>``: the identity key to configure in SDK deployments."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PUBLIC_KEY_PREFIX + b58encode(raw)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@final
class RequestSigner:
    """Signs requests to deployments with one Ed25519 key (scheme ``v1``). Build with :meth:`from_pem_file`."""

    def __init__(self, private_key: Ed25519PrivateKey, *, clock: Callable[[], float] = time.time) -> None:
        self._key = private_key
        self._clock = clock
        self.key_id = public_key_id(private_key.public_key())
        # Signed once per key: the JWT header carries the key id (the SDKs ignore it; it names the signer).
        self._header = _b64url(
            json.dumps({"typ": "JWT", "alg": "EdDSA", "kid": self.key_id}, separators=(",", ":")).encode()
        )
        self._cache: dict[str, tuple[int, tuple[tuple[str, str], ...]]] = {}

    @classmethod
    def from_pem(cls, pem: bytes, *, source: str = "PEM data") -> RequestSigner:
        """Load an unencrypted PKCS#8 PEM Ed25519 private key. Raises ``ConfigError`` naming ``source`` only
        (never the key material)."""
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise ConfigError(
                f"request identity key {source}: not an unencrypted PEM private key ({type(exc).__name__})"
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"request identity key {source}: expected an Ed25519 key, got {type(key).__name__}")
        return cls(key)

    @classmethod
    def from_pem_file(cls, path: Path) -> RequestSigner:
        """Read ``path`` (blocking: call it at start-up, off the event loop)."""
        try:
            pem = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read the request identity key {path}: {exc.strerror or exc}") from None
        return cls.from_pem(pem, source=str(path))

    def headers(self, path: str) -> tuple[tuple[str, str], ...]:
        """The two identity headers for a request to ``path`` (below the deployment's URI: ``/discover``,
        ``/invoke/{service}/{handler}``)."""
        now = int(self._clock())
        cached = self._cache.get(path)
        if cached is not None and 0 <= now - cached[0] < TOKEN_REUSE_S:
            return cached[1]
        claims = {"aud": path, "exp": now + TOKEN_WINDOW_S, "iat": now, "nbf": now - TOKEN_WINDOW_S}
        signing_input = self._header + "." + _b64url(json.dumps(claims, separators=(",", ":")).encode())
        token = signing_input + "." + _b64url(self._key.sign(signing_input.encode("ascii")))
        headers = ((SCHEME_HEADER, SCHEME_V1), (JWT_HEADER, token))
        if len(self._cache) >= TOKEN_CACHE_LIMIT:
            self._cache.clear()
        self._cache[path] = (now, headers)
        return headers

    def __repr__(self) -> str:
        return f"RequestSigner({self.key_id})"

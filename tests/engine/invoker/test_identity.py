"""Request identity (engine/invoker/identity.py): the key id format, the JWT, and the SDK's own verifier.

The verifier is the official Python SDK's (``restate._internal.PyIdentityVerifier``, the check behind
``restate.app(..., identity_keys=[...])``), so these tests pin what real deployments accept.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from restate._internal import IdentityVerificationException, PyIdentityVerifier

from engine.errors import ConfigError
from engine.invoker.identity import (
    JWT_HEADER,
    SCHEME_HEADER,
    TOKEN_REUSE_S,
    TOKEN_WINDOW_S,
    RequestSigner,
    b58encode,
)
from engine.invoker.transport_asgi import AsgiTransport
from tests.services.signed_app import make_app

# The key pair of Restate's request-signing end-to-end test (sdk-test-suite ProxyRequestSigning): the private key
# and the identity key the SDK is configured with there.
RESTATE_TEST_PEM = (
    b"-----BEGIN PRIVATE KEY-----\n"
    b"MC4CAQAwBQYDK2VwBCIEIHsQRVQ+AZX9/Yy1b0Zw+OA+bb7xDxGsAd5kB45jZhoc\n"
    b"-----END PRIVATE KEY-----\n"
)
RESTATE_TEST_KEY_ID = "publickeyv1_ChjENKeMvCtRnqG2mrBK1HmPKufgFUc98K8B3ononQvp"


def _pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def test_key_id_matches_restates_test_vector() -> None:
    assert RequestSigner.from_pem(RESTATE_TEST_PEM).key_id == RESTATE_TEST_KEY_ID


def test_base58() -> None:
    assert b58encode(b"") == ""
    assert b58encode(b"\0\0\x01") == "112"
    assert b58encode(b"hello world") == "StV1DL6CwTryKyV"


def test_jwt_header_and_claims() -> None:
    key = Ed25519PrivateKey.generate()
    signer = RequestSigner(key, clock=lambda: 1_000_000.5)
    headers = dict(signer.headers("/invoke/Greeter/greet"))
    assert headers[SCHEME_HEADER] == "v1"
    head, claims, signature = headers[JWT_HEADER].split(".")
    assert json.loads(_b64decode(head)) == {"typ": "JWT", "alg": "EdDSA", "kid": signer.key_id}
    assert json.loads(_b64decode(claims)) == {
        "aud": "/invoke/Greeter/greet",
        "iat": 1_000_000,
        "nbf": 1_000_000 - TOKEN_WINDOW_S,
        "exp": 1_000_000 + TOKEN_WINDOW_S,
    }
    public: Ed25519PublicKey = key.public_key()
    public.verify(_b64decode(signature), f"{head}.{claims}".encode())  # raises if the signature is wrong


def test_token_reused_per_path_then_renewed() -> None:
    now = [2_000_000.0]
    signer = RequestSigner(Ed25519PrivateKey.generate(), clock=lambda: now[0])
    first = signer.headers("/invoke/A/a")
    assert signer.headers("/invoke/A/a") is first
    assert signer.headers("/invoke/B/b") != first
    now[0] += TOKEN_REUSE_S
    assert signer.headers("/invoke/A/a") != first


def test_the_sdk_verifier_accepts_signed_requests_only() -> None:
    signer = RequestSigner.from_pem(_pem(Ed25519PrivateKey.generate()))
    verifier = PyIdentityVerifier([signer.key_id])
    verifier.verify(list(signer.headers("/invoke/Greeter/greet")), "/invoke/Greeter/greet")
    verifier.verify(list(signer.headers("/discover")), "/discover")
    with pytest.raises(IdentityVerificationException):
        verifier.verify([], "/discover")  # unsigned
    with pytest.raises(IdentityVerificationException):
        verifier.verify(list(signer.headers("/discover")), "/invoke/Greeter/greet")  # signed for another path
    # Behind a mount point the SDK checks the path below it: the audience is never the deployment's prefix.
    verifier.verify(list(signer.headers("/invoke/Greeter/greet")), "/prefix/invoke/Greeter/greet")
    with pytest.raises(IdentityVerificationException):
        verifier.verify(list(signer.headers("/prefix/discover")), "/prefix/discover")
    other = RequestSigner(Ed25519PrivateKey.generate())
    with pytest.raises(IdentityVerificationException):
        verifier.verify(list(other.headers("/discover")), "/discover")  # another key
    stale = RequestSigner(Ed25519PrivateKey.generate(), clock=lambda: 1_000.0)
    with pytest.raises(IdentityVerificationException):
        PyIdentityVerifier([stale.key_id]).verify(list(stale.headers("/discover")), "/discover")  # expired


async def test_in_process_app_with_identity_keys() -> None:
    """A mounted SDK app configured with identity keys: discovery works signed (also under a root path) and is
    rejected with 401 unsigned."""
    signer = RequestSigner(Ed25519PrivateKey.generate())
    app = make_app(signer.key_id)
    signed = await AsgiTransport(app, signer=signer).discover()
    assert {s.name for s in signed.manifest.services} == {"Greeter", "Counter", "Steps"}
    mounted = await AsgiTransport(app, root_path="/mount/", signer=signer).discover()
    assert mounted.manifest.services
    with pytest.raises(Exception, match="401"):
        await AsgiTransport(app).discover()


def test_bad_keys_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the request identity key"):
        RequestSigner.from_pem_file(tmp_path / "missing.pem")
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWJ5dGVz\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key") as info:
        RequestSigner.from_pem_file(garbage)
    assert "c2VjcmV0" not in str(info.value)
    rsa_pem = tmp_path / "rsa.pem"
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_pem.write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(ConfigError, match="expected an Ed25519 key"):
        RequestSigner.from_pem_file(rsa_pem)


def test_repr_shows_the_public_key_only() -> None:
    key = Ed25519PrivateKey.generate()
    signer = RequestSigner.from_pem(_pem(key))
    assert repr(signer) == f"RequestSigner({signer.key_id})"
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    assert base64.b64encode(raw).decode() not in repr(signer)

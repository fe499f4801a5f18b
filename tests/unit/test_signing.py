from __future__ import annotations

import pytest

from forwarder import RPCAuthError
from forwarder.rpc.signing import SignatureVerifier, sign

SECRET = b"s3cret"
BODY = b'{"args":[],"kwargs":{}}'


def verifier() -> SignatureVerifier:
    return SignatureVerifier(SECRET, max_age=60)


def test_valid_signature_passes_once() -> None:
    check = verifier()
    header = sign(SECRET, "POST", "/_forwarder/rpc/f", BODY, now=1000, request_id="abc")
    assert check.verify(header, "POST", "/_forwarder/rpc/f", BODY, now=1001) == "abc"
    with pytest.raises(RPCAuthError, match="replayed"):
        check.verify(header, "POST", "/_forwarder/rpc/f", BODY, now=1002)


@pytest.mark.parametrize(
    ("secret", "method", "path", "body"),
    [
        (b"other", "POST", "/_forwarder/rpc/f", BODY),
        (SECRET, "PUT", "/_forwarder/rpc/f", BODY),
        (SECRET, "POST", "/_forwarder/rpc/g", BODY),
        (SECRET, "POST", "/_forwarder/rpc/f", BODY + b" "),
    ],
)
def test_any_change_breaks_the_signature(secret: bytes, method: str, path: str, body: bytes) -> None:
    header = sign(secret, method, path, body, now=1000)
    with pytest.raises(RPCAuthError, match="invalid signature"):
        verifier().verify(header, "POST", "/_forwarder/rpc/f", BODY, now=1000)


def test_expired_and_future_timestamps_are_refused() -> None:
    header = sign(SECRET, "POST", "/p", BODY, now=1000)
    with pytest.raises(RPCAuthError, match="expired"):
        verifier().verify(header, "POST", "/p", BODY, now=1061)
    with pytest.raises(RPCAuthError, match="expired"):
        verifier().verify(header, "POST", "/p", BODY, now=939)


@pytest.mark.parametrize("header", [None, "", "garbage", "t=abc,id=x,v1=00", "t=1000,v1=00", "t=1000,id=x"])
def test_missing_or_malformed_headers_are_refused(header: str | None) -> None:
    with pytest.raises(RPCAuthError, match="missing|malformed"):
        verifier().verify(header, "POST", "/p", BODY, now=1000)


def test_ids_are_forgotten_only_after_their_timestamps_expire() -> None:
    check = verifier()
    old = sign(SECRET, "POST", "/p", BODY, now=1000, request_id="old")
    check.verify(old, "POST", "/p", BODY, now=1000)
    check.verify(sign(SECRET, "POST", "/p", BODY, now=1200), "POST", "/p", BODY, now=1200)
    assert "old" not in check._seen
    with pytest.raises(RPCAuthError, match="expired"):
        check.verify(old, "POST", "/p", BODY, now=1200)


def test_fresh_ids_for_each_call() -> None:
    assert sign(SECRET, "POST", "/p", BODY) != sign(SECRET, "POST", "/p", BODY)


def test_empty_secret_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="FORWARDER_SECRET"):
        SignatureVerifier(b"")

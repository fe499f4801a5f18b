"""HMAC signatures on calls between nodes, with at-most-once request ids.

Header: `Forwarder-Signature: t=<unix seconds>,id=<request uuid>,v1=<hex HMAC-SHA256>`, the MAC
taken over `t`, `id`, the method, the path and the SHA-256 of the body, joined by newlines.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass

from ..exceptions import RPCAuthError

__all__ = ["SIGNATURE_HEADER", "Signature", "SignatureVerifier", "sign"]

SIGNATURE_HEADER = "forwarder-signature"

_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_HEX_MAC = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Signature:
    """A well-formed, unexpired `Forwarder-Signature` whose MAC is still to be checked."""

    timestamp: str
    request_id: str
    mac: str


def _mac(secret: bytes, timestamp: str, request_id: str, method: str, path: str, body: bytes) -> str:
    message = "\n".join([timestamp, request_id, method.upper(), path, hashlib.sha256(body).hexdigest()])
    return hmac.new(secret, message.encode(), hashlib.sha256).hexdigest()


def sign(
    secret: bytes, method: str, path: str, body: bytes, *, now: float | None = None, request_id: str | None = None
) -> str:
    """The `Forwarder-Signature` header value for one call. Each call gets a fresh request id."""
    timestamp = str(int(time.time() if now is None else now))
    request_id = request_id or uuid.uuid4().hex
    return f"t={timestamp},id={request_id},v1={_mac(secret, timestamp, request_id, method, path, body)}"


class SignatureVerifier:
    """Checks signatures on the primary and remembers request ids so each executes at most once.

    Ids are remembered for twice `max_age` (the window in which a timestamp is accepted), so a
    captured request can never be replayed: while its id is remembered it is refused as a replay,
    and after that its timestamp is refused as expired.
    """

    def __init__(self, secret: bytes, *, max_age: float = 60.0, max_ids: int = 1_000_000) -> None:
        if not secret:
            raise ValueError("the RPC secret is empty; set FORWARDER_SECRET to the same random value on every node")
        self._secret = secret
        self._max_age = max_age
        self._max_ids = max_ids
        self._seen: OrderedDict[str, float] = OrderedDict()

    @property
    def max_age(self) -> float:
        return self._max_age

    def parse(self, header: str | None, *, now: float | None = None) -> Signature:
        """Check the header's presence, form and age, before anything else is read (`RPCAuthError`)."""
        now = time.time() if now is None else now
        if not header:
            raise RPCAuthError("missing Forwarder-Signature header: calls must be signed with FORWARDER_SECRET")
        fields: dict[str, str] = {}
        for part in header.split(","):
            key, sep, value = part.strip().partition("=")
            if sep:
                fields[key] = value
        timestamp, request_id, mac = fields.get("t", ""), fields.get("id", ""), fields.get("v1", "")
        if not (_TIMESTAMP.fullmatch(timestamp) and _REQUEST_ID.fullmatch(request_id) and _HEX_MAC.fullmatch(mac)):
            raise RPCAuthError(
                "malformed Forwarder-Signature header: expected t=<unix seconds>,id=<uuid>,v1=<64 hex digits>"
            )
        if abs(now - int(timestamp)) > self._max_age:
            raise RPCAuthError(
                f"expired signature: timestamp is {now - int(timestamp):+.0f}s from this node's clock "
                f"(window {self._max_age:g}s); check the nodes' clocks"
            )
        return Signature(timestamp, request_id, mac)

    def check(self, signature: Signature, method: str, path: str, body: bytes) -> None:
        """Check the MAC over the call (`RPCAuthError` when it does not match)."""
        expected = _mac(self._secret, signature.timestamp, signature.request_id, method, path, body)
        if not hmac.compare_digest(expected, signature.mac):
            raise RPCAuthError(
                "invalid signature: the nodes do not share the same FORWARDER_SECRET, or the call was altered"
            )

    def expires(self, signature: Signature) -> int:
        """Unix time after which this signature is refused as expired (its id can be forgotten then)."""
        return int(signature.timestamp) + int(self._max_age) + 1

    def verify(self, header: str | None, method: str, path: str, body: bytes, *, now: float | None = None) -> str:
        """Return the request id of a valid, fresh, first-seen call; otherwise raise `RPCAuthError`.

        Remembers ids in this object's memory; the server uses `parse`, `check` and the node's
        durable `SeenCalls` instead.
        """
        now = time.time() if now is None else now
        signature = self.parse(header, now=now)
        self.check(signature, method, path, body)
        request_id = signature.request_id
        self._forget_before(now - 2 * self._max_age)
        if request_id in self._seen:
            raise RPCAuthError(f"replayed call: request id {request_id} was already executed")
        self._seen[request_id] = now
        while len(self._seen) > self._max_ids:
            self._seen.popitem(last=False)
        return request_id

    def _forget_before(self, cutoff: float) -> None:
        seen = self._seen
        while seen:
            oldest = next(iter(seen.values()))
            if oldest >= cutoff:
                break
            seen.popitem(last=False)

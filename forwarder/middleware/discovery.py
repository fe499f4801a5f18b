"""Late write discovery: the app tried to write on a replica, and nothing was sent yet."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Generator, Iterator
from typing import Protocol

from starlette.types import Message, Receive, Send

from ..exceptions import LocalWriteAfterResponse, MustRunOnPrimary
from ..txid import Txid

__all__ = [
    "BodyRecorder",
    "CallStamp",
    "HeldErrorResponse",
    "LocalWriteAfterResponse",
    "chain",
    "needs_primary",
    "replica_unavailable",
]

# SQLite's messages for a write on a read-only replica: a `mode=ro` connection or a LiteFS
# rollback-journal replica says the first, a LiteFS WAL replica the second.
_READONLY_MESSAGES = ("attempt to write a readonly database", "disk i/o error")


# SQLite's messages when the replica's copy cannot be read right now: the follower holds the lock
# (it applies a batch, or it is frozen in the middle of one), or the file is not there.
_UNAVAILABLE_NAMES = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_CANTOPEN")
_UNAVAILABLE_MESSAGES = ("database is locked", "unable to open database file", "database table is locked")


def chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and every exception linked to it: `__cause__`/`__context__`, exception groups and
    wrappers with `.orig` (SQLAlchemy), because frameworks re-raise database errors wrapped."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            stack.extend(current.exceptions)
        for linked in (current.__cause__, current.__context__, getattr(current, "orig", None)):
            if isinstance(linked, BaseException):
                stack.append(linked)


def needs_primary(exc: BaseException) -> str | None:
    """Why `exc` means "run this on the primary" ("readonly", "endpoint"), or None."""
    for current in chain(exc):
        if isinstance(current, MustRunOnPrimary):
            return "endpoint"
        if isinstance(current, sqlite3.OperationalError):
            name = getattr(current, "sqlite_errorname", "")
            if name.startswith("SQLITE_READONLY") or str(current).lower() in _READONLY_MESSAGES:
                return "readonly"
    return None


def replica_unavailable(exc: BaseException, *, restoring: bool) -> str | None:
    """Return "unavailable" when `exc` says the replica's copy could not be read right now, else None.

    That is SQLite's lock not granted within the replica busy timeout (the follower is applying
    a batch, or frozen in one), the file missing (a restore in progress), or, while `restoring`,
    a missing table (the copy has no schema yet). Such a read is served by the primary instead:
    the replication engine must never turn a read into an error.
    """
    for current in chain(exc):
        if isinstance(current, sqlite3.OperationalError):
            name = getattr(current, "sqlite_errorname", "")
            message = str(current).lower()
            if name.startswith(_UNAVAILABLE_NAMES) or message in _UNAVAILABLE_MESSAGES:
                return "unavailable"
            if restoring and message.startswith("no such table"):
                return "unavailable"
    return None


class BodyRecorder:
    """Wraps `receive`, keeping the request body (up to `limit`) so the request can be re-sent."""

    def __init__(self, receive: Receive, limit: int) -> None:
        self._receive = receive
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        self.complete = False
        self.overflow = False

    async def __call__(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            self._size += len(chunk)
            if self._size > self._limit:
                self.overflow = True
                self._chunks.clear()
            elif not self.overflow:
                self._chunks.append(chunk)
            if not message.get("more_body", False):
                self.complete = True
        return message

    async def rest(self) -> bytes | None:
        """The whole body, reading what the app did not; None if it exceeds the limit."""
        while not self.complete and not self.overflow:
            message = await self()
            if message["type"] == "http.disconnect":
                return None
        return None if self.overflow else b"".join(self._chunks)


class CallStamp(Protocol):
    """What stamps a response with the txid of the request's `@primary_only` calls (`CallTracking`)."""

    txid: Txid | None
    stale: bool

    def stamp(self, message: Message) -> None: ...


class HeldErrorResponse:
    """Wraps `send`, holding back a 5xx response until the app finishes.

    Starlette's `ServerErrorMiddleware` sends a 500 and then re-raises; holding it lets the
    middleware drop it and forward the request instead when the error says "run on the primary".

    `local_writes`, when given, counts the writes the replica's file has seen; a count other than
    `seen` (the count when the request began) means the file was written while the request ran
    (the app on a writable URL): such a response is held too (`wrote` is then True), so the
    request can run on the primary instead and the local write, which no other node will ever
    see, is never acknowledged. If the write comes after the response has started, its last
    message is not sent: `LocalWriteAfterResponse` breaks the connection, and the client sees
    an error, not a success. Any other response passes straight through.
    """

    def __init__(
        self,
        send: Send,
        stamp: list[tuple[bytes, bytes]],
        calls: CallStamp,
        local_writes: Callable[[], int] | None = None,
        seen: int = 0,
    ) -> None:
        self._send = send
        self._stamp = stamp  # headers added to the response (Forwarder-Node, ...)
        self._calls = calls  # ... and, as it goes out, the txid of the request's @primary_only calls
        self._local_writes = local_writes
        self._seen = seen
        self._held: list[Message] = []
        self.started = False  # something reached the client
        self.wrote = False

    def __call__(self, message: Message) -> Awaitable[None]:
        # Not a coroutine: it returns the wrapped send's own awaitable (or one already done), so a
        # replica's response pays no extra coroutine per message (about 1.7 us each, measured).
        if self._held:
            self._held.append(message)
            return _DONE
        kind = message["type"]
        # The local-write test is written out in both places: a frame for it, twice per response,
        # cost more than the test itself.
        if kind == "http.response.start":
            # A new list: the app may reuse its own (a Response's raw_headers).
            message["headers"] = [*message.get("headers", ()), *self._stamp]
            if message["status"] >= 500:
                self._held.append(message)
                return _DONE
            counter = self._local_writes
            if counter is not None and counter() != self._seen:
                self.wrote = True
            if self.wrote:
                self._held.append(message)
                return _DONE
            self.started = True
            if self._calls.txid is not None or self._calls.stale:  # rarely: no frame of `stamp` on the way otherwise
                self._calls.stamp(message)
        elif kind == "http.response.body" and not message.get("more_body", False):
            counter = self._local_writes
            if counter is not None and counter() != self._seen:
                self.wrote = True
            if self.wrote:
                raise LocalWriteAfterResponse(
                    "the app wrote to this replica's database file while streaming a response; the response "
                    "is cut off, because that write will never reach the primary"
                )
        return self._send(message)

    async def release(self) -> None:
        held, self._held = self._held, []
        if held:
            self.started = True
            self._calls.stamp(held[0])  # the response start
        for message in held:
            await self._send(message)

    @property
    def holding(self) -> bool:
        """Whether a response is held back (then `release()` or `discard()` it)."""
        return bool(self._held)

    def discard(self) -> None:
        self._held.clear()

    def passed(self, message: Message) -> Awaitable[None]:
        """Send `message` at once, stamped, never held: the middleware's own answer instead of the app's."""
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), *self._stamp]
            self.started = True
            self._calls.stamp(message)
        return self._send(message)


class _Done:
    """An awaitable that is already done: what a held message's `send` returns."""

    __slots__ = ()

    def __await__(self) -> Generator[None, None, None]:
        return
        yield  # a generator that ends at once: `await _DONE` returns None without suspending


_DONE = _Done()

"""A forwarded request's body, read so that slow clients cannot hold connections to the primary.

A body of up to `buffer_body` bytes is read in full before a connection to the primary is taken.
A larger one streams, but only `max_streamed_uploads` of them at once per node (below the pool
size), so buffered requests always find a connection. Every read waits at most `body_timeout`
seconds: a body that stalls is cut off (408).
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
from starlette.types import Receive

from ..exceptions import PrimaryUnavailable
from ..runtime import Forwarder

__all__ = ["BodyStalled", "ClientDisconnected", "ForwardBody", "read_forward_body", "upload_slot"]


class ClientDisconnected(Exception):
    """The client went away while its body was being read or streamed to the primary."""


class BodyStalled(Exception):
    """The client sent no part of its body for `body_timeout` seconds."""

    def __init__(self, timeout: float) -> None:
        super().__init__(
            f"the request body stalled: nothing received for {timeout:g}s (FORWARDER_BODY_TIMEOUT); not forwarded"
        )


@dataclass
class ForwardBody:
    """The part read so far and whether it is the whole body."""

    prefix: bytes
    complete: bool


async def _next_chunk(receive: Receive, timeout: float) -> tuple[bytes, bool]:
    with anyio.move_on_after(timeout) as scope:
        message = await receive()
    if scope.cancelled_caught:
        raise BodyStalled(timeout)
    if message["type"] == "http.disconnect":
        raise ClientDisconnected()
    return message.get("body", b""), bool(message.get("more_body", False))


async def read_forward_body(receive: Receive, limit: int, timeout: float) -> ForwardBody:
    """Read up to `limit` bytes (more only if one message brings them), each read bounded by `timeout`."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk, more = await _next_chunk(receive, timeout)
        chunks.append(chunk)
        size += len(chunk)
        if not more:
            return ForwardBody(b"".join(chunks), True)
        if size > limit:
            return ForwardBody(b"".join(chunks), False)


async def stream_rest(prefix: bytes, receive: Receive, timeout: float) -> AsyncIterator[bytes]:
    """The prefix already read, then the rest of the body as it arrives (each read bounded)."""
    if prefix:
        yield prefix
    while True:
        chunk, more = await _next_chunk(receive, timeout)
        if chunk:
            yield chunk
        if not more:
            return


_slots: weakref.WeakKeyDictionary[Forwarder, anyio.Semaphore] = weakref.WeakKeyDictionary()


@asynccontextmanager
async def upload_slot(forwarder: Forwarder) -> AsyncIterator[None]:
    """One of the node's `max_streamed_uploads` slots for a streamed body, or `PrimaryUnavailable`."""
    slots = _slots.get(forwarder)
    if slots is None:
        slots = _slots[forwarder] = anyio.Semaphore(forwarder.security.max_streamed_uploads)
    with anyio.move_on_after(forwarder.connect_timeout) as waited:
        await slots.acquire()
    if waited.cancelled_caught:
        raise PrimaryUnavailable(
            f"{forwarder.security.max_streamed_uploads} large uploads are already streaming to the primary "
            "(FORWARDER_MAX_STREAMED_UPLOADS); retry shortly"
        )
    try:
        yield
    finally:
        slots.release()

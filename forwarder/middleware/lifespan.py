"""The ASGI lifespan around the app: start and stop the node with it, and hold the app's own
start-up on a replica until the follower's first restore has finished."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..exceptions import ForwarderError, ReplicationTimeout
from ..runtime import Forwarder
from ..txid import Txid

__all__ = ["run_lifespan"]

logger = logging.getLogger("forwarder.middleware")


async def run_lifespan(app: ASGIApp, forwarder: Forwarder, scope: Scope, receive: Receive, send: Send) -> None:
    """Run the app's lifespan, starting `forwarder` before the app's start-up and closing it after shutdown."""
    startup_failed = False
    deferred = False  # the server was told "started" before the app's own start-up ran

    async def receive_and_start() -> Message:
        nonlocal startup_failed, deferred
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                await forwarder.start()
            except Exception as exc:
                if isinstance(exc, ForwarderError):
                    # Ours name the cause and the fix: the message is the whole story.
                    logger.error("forwarder failed to start: %s", exc)
                else:
                    logger.exception("forwarder failed to start")
                startup_failed = True
                await send({"type": "lifespan.startup.failed", "message": f"forwarder failed to start: {exc}"})
                # Tell the app to shut down; the server exits because startup failed.
                return {"type": "lifespan.shutdown"}
            if not forwarder.engine.restored:
                # The app's start-up must not open a database the follower has not restored (an
                # empty file left there makes the restore fail). Serve meanwhile: health says
                # `restoring`, requests go to the primary.
                deferred = True
                await send({"type": "lifespan.startup.complete"})
                shutdown = await _until_restored(forwarder, receive)
                if shutdown is not None:
                    await forwarder.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    await asyncio.Event().wait()  # the server exits; the app never started
        return message

    async def send_and_stop(message: Message) -> None:
        if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            await forwarder.aclose()
            if startup_failed:
                return
        if startup_failed and message["type"].startswith("lifespan.startup"):
            return
        if deferred and message["type"] == "lifespan.startup.complete":
            logger.info("the app has started, after the follower's first restore")
            return
        if deferred and message["type"] == "lifespan.startup.failed":
            forwarder.startup_problem = f"the app's start-up failed: {message.get('message', '')}"
            logger.error("%s", forwarder.startup_problem)
            return
        await send(message)

    await app(scope, receive_and_start, send_and_stop)


async def _until_restored(forwarder: Forwarder, receive: Receive) -> Message | None:
    """Wait until the replica's first restore is done; return a shutdown message that came first."""
    logger.warning(
        "node %s waits for the follower's first restore of %s before the app starts; requests go to the primary",
        forwarder.topology.node_id,
        forwarder.database.path if forwarder.database is not None else "the database",
    )

    async def restored() -> None:
        while not forwarder.engine.restored:
            with contextlib.suppress(ReplicationTimeout):
                await forwarder.tracker.wait_for(Txid(forwarder.tracker.position + 1), 1.0)

    waiting = asyncio.ensure_future(restored())
    receiving = asyncio.ensure_future(receive())
    try:
        await asyncio.wait({waiting, receiving}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (waiting, receiving):
            task.cancel()
    if receiving.done() and not receiving.cancelled():
        return receiving.result()
    return None

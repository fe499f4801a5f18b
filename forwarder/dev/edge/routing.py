"""Which node takes a request: the first reachable node of a choice, then every replay it answers
with, up to the limits Fly's proxy has (PA01 body size, PA02 hop count, PA04 other apps)."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import anyio
from starlette.types import Scope

from .regions import Choice, EdgeNode, browser_regions, fallback_choice, first_choice, parse_region_list, replay_choice
from .replay import ReplayInstruction
from .request import Headers, NodeRequest, apply_transform

__all__ = ["EdgeError", "NoTarget", "Replay", "Router", "SendTo", "Unreachable", "describe"]

logger = logging.getLogger("forwarder.dev.edge")

T = TypeVar("T")

_RETRY_INTERVAL = 0.1

# These exceptions are the edge's own control flow between its modules: none leaves the edge
# (each ends as a 502/503 answer), so they live here rather than in forwarder.exceptions.


class EdgeError(Exception):
    """An answer the edge gives itself (plain text, 502 or 503 like Fly's proxy)."""

    def __init__(self, status: int, message: str, node: EdgeNode | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.node = node


class Unreachable(Exception):
    """The node refused or dropped the connection before the request reached it: safe to try another."""


class NoTarget(Exception):
    """No node of a choice could be reached; `reason` uses the words of Fly's `fly-replay-failed`."""

    def __init__(self, reason: str, failures: list[str]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.failures = failures


class Replay(Exception):
    """A node answered with `fly-replay`; its response is already discarded."""

    def __init__(self, instruction: ReplayInstruction, node: EdgeNode) -> None:
        super().__init__(instruction.source)
        self.instruction = instruction
        self.node = node


SendTo = Callable[[EdgeNode, NodeRequest, Headers], Awaitable[T]]
"""Send a request to one node: its answer, or raise `Unreachable`, `Replay` or `EdgeError`."""


def describe(node: EdgeNode) -> str:
    """A node as error messages name it."""
    return f"node {node.id} ({node.region}, {node.url})"


class Router:
    """Routes requests over `nodes`: round robin, the client's routing headers, replays, simulated latency."""

    def __init__(
        self, nodes: tuple[EdgeNode, ...], *, latency: dict[str, float], max_replays: int, max_replay_body: int
    ) -> None:
        self.nodes = nodes
        self.latency = latency
        self.max_replays = max_replays
        self.max_replay_body = max_replay_body
        self._round_robin = itertools.count()

    def rotation(self) -> tuple[EdgeNode, ...]:
        """The nodes in this request's round-robin order."""
        start = next(self._round_robin) % len(self.nodes)
        return self.nodes[start:] + self.nodes[:start]

    def first_choice(self, scope: Scope, rotation: Sequence[EdgeNode]) -> Choice:
        """Nodes for a new request from its routing headers; raises `EdgeError` (503) for a forced miss."""
        headers = {name.lower(): value.decode("latin-1").strip() for name, value in scope["headers"]}
        force_instance = headers.get(b"fly-force-instance-id")
        force_regions = parse_region_list(headers.get(b"fly-force-region", ""))
        prefer_regions = parse_region_list(headers.get(b"fly-prefer-region", "")) or browser_regions(
            scope.get("query_string", b""), scope["headers"]
        )
        choice = first_choice(
            rotation,
            force_instance=force_instance,
            prefer_instance=headers.get(b"fly-prefer-instance-id"),
            force_regions=force_regions,
            prefer_regions=prefer_regions,
        )
        if not choice.nodes and force_instance is not None:
            raise EdgeError(503, f"fly-force-instance-id: no node {force_instance!r}; nodes: {self._known()}")
        if not choice.nodes:
            raise EdgeError(503, f"fly-force-region: no node in {', '.join(force_regions)}; nodes: {self._known()}")
        return choice

    def _known(self) -> str:
        return ", ".join(f"{node.id} ({node.region})" for node in self.nodes)

    async def route(
        self, request: NodeRequest, choice: Choice, rotation: Sequence[EdgeNode], send_to: SendTo[T]
    ) -> tuple[EdgeNode, T]:
        """Send `request` to the first reachable node of `choice`, then follow replays; the final answer."""
        try:
            return await self._reach(choice, request, [], send_to, timeout=None)
        except NoTarget as exc:
            raise EdgeError(503, f"no node could be reached: {'; '.join(exc.failures)}") from None
        except Replay as replay:
            current = replay
        while True:
            instruction, source = current.instruction, current.node
            self._check_replayable(request, instruction, source)
            request.replays += 1
            apply_transform(request, instruction)
            src = f"instance={source.id};region={source.region};t={time.time_ns() // 1000}"
            src += f";state={instruction.state}" if instruction.state is not None else ""
            started = time.monotonic()
            target = replay_choice(rotation, instruction, source)
            logger.debug(
                "edge: %s %s: %s replays it (%s)", request.method, request.target, source.id, instruction.source
            )
            try:
                try:
                    header = (b"fly-replay-src", src.encode())
                    return await self._reach(target, request, [header], send_to, timeout=instruction.timeout)
                except NoTarget as exc:
                    return await self._fall_back(request, instruction, source, exc, started, rotation, send_to)
            except Replay as replay:
                current = replay

    def _check_replayable(self, request: NodeRequest, instruction: ReplayInstruction, node: EdgeNode) -> None:
        said = f"{describe(node)} answered with fly-replay {instruction.source!r}"
        if not request.body.replayable:
            raise EdgeError(
                502,
                f"PA01 Requests larger than 1MB cannot be replayed: {said} but the body is over "
                f"{self.max_replay_body} bytes; send large uploads where they belong (fly-prefer-region) "
                "or proxy them instead of replaying",
                node,
            )
        if request.replays >= self.max_replays:
            raise EdgeError(
                502,
                f"PA02 Excess fly-replay headers: {said} after {request.replays} replays (limit {self.max_replays}); "
                "a replay loop? A node should not replay a request that carries fly-replay-src",
                node,
            )
        if instruction.app is not None:
            raise EdgeError(
                502, f"PA04 replay target app not found: {said}; the edge serves one app and has no 'app' routing", node
            )

    async def _fall_back(
        self,
        request: NodeRequest,
        instruction: ReplayInstruction,
        source: EdgeNode,
        failure: NoTarget,
        started: float,
        rotation: Sequence[EdgeNode],
        send_to: SendTo[T],
    ) -> tuple[EdgeNode, T]:
        """Deliver a replay that found no target back to its source (`fallback=`), or fail with 502."""
        detail = f"fly-replay {instruction.source!r} from {describe(source)}: {failure.reason}"
        detail += f" ({'; '.join(failure.failures)})" if failure.failures else ""
        if instruction.fallback is None:
            raise EdgeError(502, f"no candidate for {detail}; add fallback=prefer_self to get it back", source)
        target = instruction.instance or instruction.prefer_instance
        parts = [f"instance={target}"] if target else []
        parts += [f"region={','.join(instruction.regions)}"] if instruction.regions else []
        parts += [f"replay_source={source.id}", f"reason={failure.reason}"]
        parts += [f"elapsed_ms={round((time.monotonic() - started) * 1000)}"]
        header = (b"fly-replay-failed", ";".join(parts).encode())
        try:
            choice = fallback_choice(rotation, instruction.fallback, source)
            return await self._reach(choice, request, [header], send_to, timeout=None)
        except NoTarget as exc:
            raise EdgeError(502, f"{detail}, and fallback={instruction.fallback} failed too: {exc.failures}") from None
        except Replay as again:
            raise EdgeError(
                502,
                f"PA02 fallback request cannot be replayed: {describe(again.node)} got the request back after "
                f"{detail} and answered with fly-replay {again.instruction.source!r}; handle requests carrying "
                "fly-replay-failed without replaying them",
                again.node,
            ) from None

    async def _reach(
        self, choice: Choice, request: NodeRequest, extra: Headers, send_to: SendTo[T], *, timeout: float | None
    ) -> tuple[EdgeNode, T]:
        """Try the nodes of `choice` in order until one takes the request; keep trying until `timeout`."""
        if not choice.nodes:
            raise NoTarget("no_candidate", [])
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            failures: list[str] = []
            for node in choice.nodes:
                await anyio.sleep(self.latency.get(node.region, 0.0))
                try:
                    extra_for_node = extra + [(k.encode(), v.encode()) for k, v in choice.extra_headers(node)]
                    return node, await send_to(node, request, extra_for_node)
                except Unreachable as exc:
                    failures.append(f"{describe(node)}: {exc}")
            if deadline is None:
                raise NoTarget("retries_exhausted", failures)
            if time.monotonic() >= deadline:
                raise NoTarget("timeout", failures)
            await anyio.sleep(min(_RETRY_INTERVAL, max(0.0, deadline - time.monotonic())))

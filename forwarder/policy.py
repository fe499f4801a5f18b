"""How the middleware treats each request: modes, read methods, path rules, lag policy, cookie."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fnmatch import translate
from functools import cached_property
from typing import Literal

__all__ = ["CookiePolicy", "Mode", "OnLag", "RoutingPolicy"]

Mode = Literal["auto", "proxy", "replay"]
OnLag = Literal["forward", "error", "stale"]

REPLAY_BODY_LIMIT = 1024 * 1024  # Fly: "Requests larger than 1MB cannot be replayed"


@dataclass(frozen=True)
class CookiePolicy:
    """The read-your-writes cookie the primary sets on write responses.

    Same name as the LiteFS proxy's, so an app can move from it without logging users out.
    `secure=None` adds `Secure` only when the request came over https.
    """

    name: str = "__txid"
    max_age: int = 300
    path: str = "/"
    same_site: Literal["lax", "strict", "none"] = "lax"
    secure: bool | None = None
    http_only: bool = True


@dataclass(frozen=True)
class RoutingPolicy:
    """Which requests are writes, how writes reach the primary, and what a lagging replica does.

    - `mode`: `proxy` streams writes to the primary; `replay` answers `fly-replay` and lets the Fly
      proxy re-deliver them; `auto` replays when the request came through the Fly proxy with a
      body known to be under 1 MB, and proxies otherwise.
    - `read_methods`: served locally on a replica; every other method is a write.
    - `passthrough`: path globs served locally on any node, with no forwarding, waiting or cookie.
    - `always_forward`: path globs sent to the primary whatever the method.
    - `on_lag`: when a read's cookie asks for a txid the replica does not reach in time:
      `forward` it to the primary, answer 504 (`error`), or serve it `stale` (`Forwarder-Stale: 1`).
    - `replay_timeout`, `replay_fallback`: the `timeout` and `fallback` fields of `fly-replay`. The
      default `prefer_self` brings a replay that cannot reach the primary back to this node, which
      proxies it (503 with `Retry-After` when the primary is down, not the Fly proxy's bare 5xx);
      None leaves the field out.
    - `max_buffered_body`: how much of a request body is kept so a request can still be forwarded
      after the app raised SQLite's read-only error.
    """

    mode: Mode = "auto"
    read_methods: frozenset[str] = frozenset({"GET", "HEAD", "OPTIONS"})
    passthrough: tuple[str, ...] = ()
    always_forward: tuple[str, ...] = ()
    on_lag: OnLag = "forward"
    cookie: CookiePolicy = field(default_factory=CookiePolicy)
    replay_timeout: str | None = None
    replay_fallback: Literal["prefer_self", "force_self"] | None = "prefer_self"
    max_buffered_body: int = REPLAY_BODY_LIMIT

    def is_passthrough(self, path: str) -> bool:
        return self._passthrough is not None and self._passthrough.match(path) is not None

    def is_always_forward(self, path: str) -> bool:
        return self._always_forward is not None and self._always_forward.match(path) is not None

    # One compiled regex per list, built once: this runs on every request.
    @cached_property
    def _passthrough(self) -> re.Pattern[str] | None:
        return _compile(self.passthrough)

    @cached_property
    def _always_forward(self) -> re.Pattern[str] | None:
        return _compile(self.always_forward)


def _compile(globs: tuple[str, ...]) -> re.Pattern[str] | None:
    return re.compile("|".join(f"(?:{translate(glob)})" for glob in globs)) if globs else None

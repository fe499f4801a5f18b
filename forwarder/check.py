"""`forwarder check`: validate a node's environment the way the app would load it, one line per problem.

```
$ FORWARDER_PRIMARY_URL=http://10.0.0.2:8080 forwarder check
forwarder check: FORWARDER_SECRET is not set: a replica signs its calls to the primary with it. ...
forwarder check: the primary at http://10.0.0.2:8080 did not answer GET /_forwarder/health within 2s ...
```

What it checks, in order (a step that cannot run without the one before is skipped):

1. the settings (`ForwarderSettings.load`): every bad variable, and a missing secret or primary URL;
2. the engine:
   - Litestream primary: the control socket answers `GET /txid`;
   - Litestream replica: the follower's `<db>-txid` exists and holds a txid, or its directory
     exists and is writable (the first restore is still running);
   - LiteFS: the mount exists, `<db>-pos` and `.primary` (when present) hold what LiteFS writes,
     and the API answers `GET /info`;
3. from a replica, the primary answers `GET /_forwarder/health` (skipped with `primary=False`,
   as at start-up, when a replica must start even if the primary is down for a moment), and
   accepts this node's signed node-channel handshake: a `403` there means the two nodes hold
   different secrets, which also breaks RPC and node headers. A primary that does not serve the
   channel at all is no problem: forwards then go over HTTP.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI

from .channel.client import Websocket
from .channel.server import REFUSAL
from .channel.transport import channel_url, refusal_text, signed_handshake
from .engines.litefs_files import PRIMARY_FILE, Unreadable, parse_pos, pos_file, read_pos_text, read_primary
from .exceptions import ConfigurationError, EngineError, InvalidTxid
from .settings import ForwarderSettings
from .settings_errors import settings_problems
from .txid import Txid

__all__ = ["TIMEOUT", "check_node", "check_settings"]

TIMEOUT = 2.0
"""Seconds each network check (control socket, LiteFS API, primary) waits for an answer."""


def check_settings(environ: Mapping[str, str] | None = None) -> tuple[ForwarderSettings | None, list[str]]:
    """The settings of `environ` (default: this process's) and their problems; None if they do not load."""
    saved = dict(os.environ)
    if environ is not None:  # pydantic-settings reads os.environ; give it exactly `environ`
        os.environ.clear()
        os.environ.update(environ)
    try:
        no_overrides: dict[str, Any] = {}  # everything from the environment, as the app reads it
        try:
            settings = ForwarderSettings(**no_overrides)
        except ValidationError as exc:
            return None, [settings_problems(exc, ForwarderSettings)]
        except ConfigurationError as exc:
            return None, [str(exc)]
        return settings, settings.problems()
    finally:
        if environ is not None:
            os.environ.clear()
            os.environ.update(saved)


async def check_node(
    environ: Mapping[str, str] | None = None, *, primary: bool = True, timeout: float = TIMEOUT
) -> list[str]:
    """Every problem of the node `environ` describes, one line each; empty when it is ready to start."""
    settings, problems = check_settings(environ)
    if settings is None:
        return problems
    if settings.engine == "litestream":
        problems += await _litestream(settings, timeout)
    elif settings.engine == "litefs":
        problems += await _litefs(settings, timeout)
    if primary:
        url = _primary_url(settings)
        if url is not None:
            problems += await _primary(url, timeout)
            if not problems and settings.node_channel and settings.secret is not None:
                problems += await _channel(url, settings.secret.get_secret_value(), settings.node_id, timeout)
    return problems


async def _litestream(settings: ForwarderSettings, timeout: float) -> list[str]:
    if settings.resolved_role == "primary":
        return await _control_socket(settings.socket_path, settings.database, timeout)
    return _follower(settings.database)


async def _control_socket(socket: Path, database: Path, timeout: float) -> list[str]:
    if not socket.exists():
        return [
            f"Litestream's control socket {socket} does not exist: start `litestream replicate` (with "
            "`socket: enabled: true` at that path, or set FORWARDER_LITESTREAM_SOCKET) before the app"
        ]
    transport = httpx.AsyncHTTPTransport(uds=str(socket))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://litestream", timeout=timeout) as client:
            response = await client.get("/txid", params={"path": str(database.absolute())})
    except httpx.HTTPError as exc:
        return [
            f"Litestream's control socket {socket} did not answer GET /txid ({type(exc).__name__}: {exc}): "
            "is `litestream replicate` running?"
        ]
    if response.status_code != 200:
        return [
            f"Litestream's control socket {socket} answered GET /txid with {response.status_code} "
            f"({response.text.strip()[:120]}): does litestream.yml replicate {database.absolute()}?"
        ]
    return []


def _follower(database: Path) -> list[str]:
    txid_path = database.with_name(database.name + "-txid")
    try:
        text = txid_path.read_text("ascii").strip()
    except FileNotFoundError:
        directory = database.parent
        if not directory.is_dir():
            return [
                f"the replica's directory {directory} does not exist: create it (FORWARDER_DATABASE is "
                f"{database}), and run `litestream restore -f -o {database}` into it"
            ]
        if not os.access(directory, os.W_OK):
            return [f"the replica's directory {directory} is not writable: the Litestream follower restores into it"]
        return []  # the first restore is still running: the app waits for it
    except (OSError, UnicodeDecodeError) as exc:
        return [f"cannot read the follower's position {txid_path} ({exc})"]
    try:
        Txid.parse(text)
    except InvalidTxid:
        return [
            f"{txid_path} holds {text[:40]!r}, not a txid (16 hex digits): is it written by "
            "`litestream restore -f`? Remove it and restart the follower"
        ]
    return []


async def _litefs(settings: ForwarderSettings, timeout: float) -> list[str]:
    mount, name = settings.database.parent, settings.database.name
    problems: list[str] = []
    if not mount.is_dir():
        problems.append(
            f"the LiteFS mount {mount} does not exist: is LiteFS running, and is it litefs.yml's `fuse.dir` "
            f"(FORWARDER_DATABASE is {settings.database})?"
        )
    else:
        path = pos_file(mount, name)
        try:
            text = read_pos_text(path, mount)
            if text:
                parse_pos(text, path, mount, name)
        except EngineError as exc:
            problems.append(str(exc))
        primary = read_primary(mount / PRIMARY_FILE)
        if isinstance(primary, Unreadable):
            problems.append(primary.problem)
    try:
        async with httpx.AsyncClient(base_url=settings.litefs_api, timeout=timeout, trust_env=False) as client:
            response = await client.get("/info")
        response.raise_for_status()
        if not isinstance(response.json(), dict):
            raise ValueError("not a JSON object")
    except (httpx.HTTPError, ValueError) as exc:
        problems.append(
            f"the LiteFS API at {settings.litefs_api} did not answer GET /info ({type(exc).__name__}: {exc}): "
            "is LiteFS running, and is FORWARDER_LITEFS_API its `http.addr`?"
        )
    return problems


def _primary_url(settings: ForwarderSettings) -> str | None:
    """The primary to probe: the configured URL on a replica (LiteFS learns it at run time: not probed)."""
    if settings.resolved_role == "replica" and settings.primary_url:
        return settings.primary_url
    return None


async def _primary(url: str, timeout: float) -> list[str]:
    health = url.rstrip("/") + "/_forwarder/health"
    try:
        async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:
            response = await client.get(health)
    except httpx.HTTPError as exc:
        return [
            f"the primary at {url} did not answer GET /_forwarder/health within {timeout:g}s "
            f"({type(exc).__name__}: {exc}): is it running, and is FORWARDER_PRIMARY_URL its internal address?"
        ]
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict) or "role" not in data:
        return [
            f"{health} answered {response.status_code} without forwarder's health report: is "
            "FORWARDER_PRIMARY_URL a forwarder node (the app wrapped in ForwarderMiddleware)?"
        ]
    if data.get("role") != "primary":
        return [
            f"the node at {url} is a {data.get('role')}, not the primary: point FORWARDER_PRIMARY_URL at the primary"
        ]
    return []


async def _channel(url: str, secret: str, node_id: str, timeout: float) -> list[str]:
    target = str(channel_url(httpx.URL(url)))
    try:
        connection = await Websocket.connect(
            target, signed_handshake(secret.encode(), node_id), timeout=timeout, max_size=1024
        )
    except InvalidStatus as exc:
        body = refusal_text(exc)
        if exc.response.status_code != 403 or not body.startswith(REFUSAL):
            return []  # no channel served there (a bare 403 is any ASGI app's unknown websocket): HTTP then
        return [
            f"the primary at {url} refused this node's signed channel handshake (403: {body}): "
            "set the same FORWARDER_SECRET on every node"
        ]
    except (OSError, TimeoutError, InvalidHandshake, InvalidURI):
        return []  # the health check above reached it; the channel is optional
    await connection.close()
    return []

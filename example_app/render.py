"""Server-side HTML of the board: the whole page, and the live fragment pushed over `/live`.

The live fragment is a list of elements marked `data-slot="..."`; the client replaces each
element of the page that has the same slot. The page itself is built from the same slot
renderers, so a page without JavaScript shows exactly what a live one does.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape

from forwarder import Forwarder, Txid

from .board import PAGE, Message

__all__ = ["NodeStatus", "render_live", "render_page"]


@dataclass(frozen=True)
class NodeStatus:
    """What the page says about the node that served it, taken at one instant."""

    node_id: str
    region: str
    role: str
    primary_id: str | None
    primary_region: str | None
    txid: Txid
    lag: float

    @classmethod
    def of(cls, forwarder: Forwarder) -> NodeStatus:
        """The node's status now. Call it on the event loop, before reading the rows it describes."""
        topology = forwarder.topology
        return cls(
            node_id=topology.node_id,
            region=topology.region,
            role=topology.role.value,
            primary_id=topology.primary_id,
            primary_region=topology.primary_region,
            txid=forwarder.tracker.position,
            lag=forwarder.lag(),
        )


def format_lag(seconds: float) -> str:
    """Lag for people: milliseconds below one second, then seconds."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.1f} s"


def _stat(label: str, value: str, *, title: str = "", css: str = "") -> str:
    title_attr = f' title="{escape(title)}"' if title else ""
    return (
        f'<div class="stat{" " + css if css else ""}"{title_attr}>'
        f'<span class="stat-label">{escape(label)}</span>'
        f'<span class="stat-value">{escape(value)}</span></div>'
    )


def render_status(status: NodeStatus) -> str:
    """The node's id, region, role, txid and lag (the `status` slot)."""
    if status.role == "primary":
        role_title = "this node holds the writable database"
    else:
        where = f" in {status.primary_region}" if status.primary_region else ""
        role_title = f"read replica of {status.primary_id or 'the primary'}{where}; writes go to the primary"
    lag_css = "stat-lag" + (" is-lagging" if status.lag >= 0.5 else "")
    stats = [
        _stat("node", status.node_id, title="the node that served this page"),
        _stat("region", status.region),
        _stat("role", status.role, title=role_title, css=f"stat-role role-{status.role}"),
        _stat("txid", str(status.txid), title="replication position of this node's database", css="stat-txid"),
        _stat("lag", format_lag(status.lag), title="how far this replica is behind the primary", css=lag_css),
    ]
    return (
        f'<div class="status" data-slot="status" data-node="{escape(status.node_id)}" '
        f'data-region="{escape(status.region)}" data-txid="{status.txid}">{"".join(stats)}</div>'
    )


def _time(created_at: str) -> str:
    try:
        when = datetime.fromisoformat(created_at)
    except ValueError:
        return f"<time>{escape(created_at)}</time>"
    return f'<time datetime="{escape(created_at)}" title="{escape(created_at)}">{when:%H:%M:%S}</time>'


def render_message(message: Message) -> str:
    """One message as a list item; every user-supplied string is escaped."""
    hue = zlib.crc32(message.author.encode()) % 360
    initial = escape(message.author[:1].upper())
    return (
        f'<li class="message" id="m-{message.id}" data-id="{message.id}">'
        f'<span class="avatar" style="--hue: {hue}" aria-hidden="true">{initial}</span>'
        f'<div class="message-body"><div class="message-meta">'
        f'<span class="author">{escape(message.author)}</span>{_time(message.created_at)}'
        f'<span class="message-id">#{message.id}</span></div>'
        f'<p class="text">{escape(message.text)}</p></div></li>'
    )


def render_messages(messages: Sequence[Message]) -> str:
    """The board, newest first (the `messages` slot)."""
    if not messages:
        items = '<li class="empty">No messages yet. Say hello!</li>'
    else:
        items = "".join(render_message(m) for m in messages)
    return f'<ol class="messages" data-slot="messages" aria-live="polite" data-count="{len(messages)}">{items}</ol>'


def render_live(status: NodeStatus, messages: Sequence[Message]) -> str:
    """The fragment sent in each `render` event: every slot of the page that changes."""
    return render_status(status) + render_messages(messages)


def render_page(
    status: NodeStatus,
    messages: Sequence[Message],
    *,
    script_url: str,
    style_url: str,
    notice: str | None = None,
    author: str = "",
    text: str = "",
) -> str:
    """The whole page. It works without JavaScript: the form posts to `POST /` and the page reloads."""
    notice_html = (
        f'<p class="notice is-error" id="notice" role="alert">{escape(notice)}</p>'
        if notice
        else '<p class="notice" id="notice" role="status" hidden></p>'
    )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Board · {escape(status.node_id)} ({escape(status.region)})</title>
<link rel="stylesheet" href="{escape(style_url)}">
<script src="{escape(script_url)}" defer></script>
</head>
<body>
<header class="topbar">
  <div class="topbar-row">
    <h1 class="brand"><span class="brand-mark" aria-hidden="true"></span>forwarder board</h1>
    <span class="badge" id="connection" hidden>connecting…</span>
  </div>
  {render_status(status)}
</header>
<main class="wrap">
  <form class="composer" id="composer" method="post" action="/">
    <div class="composer-row">
      <input class="author" id="author" name="author" value="{escape(author)}" placeholder="Your name"
             maxlength="40" required autocomplete="nickname" aria-label="Your name">
      <textarea id="text" name="text" rows="2" maxlength="500" required placeholder="Write a message…"
                aria-label="Message">{escape(text)}</textarea>
      <button type="submit" id="send">Post</button>
    </div>
    {notice_html}
  </form>
  {render_messages(messages)}
</main>
<footer class="footer">
  The newest {PAGE} messages, rendered by this node from its own replica. Writes run on the primary;
  this page updates as soon as this node's replica holds them.
</footer>
</body>
</html>
"""

"""The node channel: one websocket from a replica to the primary carrying its forwarded requests and RPC calls."""

from .transport import CHANNEL_PATH, ChannelTransport

__all__ = ["CHANNEL_PATH", "ChannelTransport"]

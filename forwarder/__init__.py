"""forwarder: run an ASGI app on a replicated SQLite database, many nodes acting as one.

Reads stay local; writes go to the primary (forwarded requests or `@primary_only` calls); the
node that forwarded a write answers only once its own replica holds it.
"""

from __future__ import annotations

from .database import Database
from .endpoints import primary_endpoint
from .engines.base import Engine, PrimaryInfo, Role
from .engines.memory import MemoryEngine, MemoryLog
from .exceptions import (
    ConfigurationError,
    EngineError,
    EngineUnavailable,
    ForwarderError,
    InvalidTxid,
    LocalWriteAfterResponse,
    MustRunOnPrimary,
    OutcomeUnknown,
    PositionFormatError,
    PrimaryUnavailable,
    RemoteError,
    ReplicationTimeout,
    RPCAuthError,
    RPCError,
    RPCOutcomeUnknown,
    RPCValidationError,
    UnknownFunction,
)
from .middleware import ForwarderMiddleware
from .rpc.registry import Registry, primary_only
from .runtime import Forwarder
from .settings import ForwarderSettings
from .topology import Topology
from .tracker import Tracker
from .txid import Txid

__version__ = "0.1.0"

__all__ = [
    "ConfigurationError",
    "Database",
    "Engine",
    "EngineError",
    "EngineUnavailable",
    "Forwarder",
    "ForwarderError",
    "ForwarderMiddleware",
    "ForwarderSettings",
    "InvalidTxid",
    "LocalWriteAfterResponse",
    "MemoryEngine",
    "MemoryLog",
    "MustRunOnPrimary",
    "OutcomeUnknown",
    "PositionFormatError",
    "PrimaryInfo",
    "PrimaryUnavailable",
    "RPCAuthError",
    "RPCError",
    "RPCOutcomeUnknown",
    "RPCValidationError",
    "Registry",
    "RemoteError",
    "ReplicationTimeout",
    "Role",
    "Topology",
    "Tracker",
    "Txid",
    "UnknownFunction",
    "__version__",
    "primary_endpoint",
    "primary_only",
]

"""The one place where httpx errors become forwarder errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from .exceptions import OutcomeUnknown, PrimaryUnavailable

__all__ = ["talking_to_primary"]


@contextmanager
def talking_to_primary(what: str, url: str, *, unknown: type[OutcomeUnknown] = OutcomeUnknown) -> Iterator[None]:
    """Translate httpx errors raised while `what` talks to the primary at `url`.

    Errors before any byte could reach the primary become `PrimaryUnavailable` (safe to try again
    later); errors after the request may have arrived become `unknown` (never retried).
    """
    try:
        yield
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol) as exc:
        raise PrimaryUnavailable(
            f"{what}: cannot connect to the primary at {url} ({type(exc).__name__}: {exc}); "
            "is the primary running and is FORWARDER_PRIMARY_URL right?"
        ) from exc
    except httpx.TimeoutException as exc:
        raise unknown(
            f"{what}: the primary at {url} did not answer in time ({type(exc).__name__}); "
            "the request may have been executed, so it was not retried"
        ) from exc
    except httpx.TransportError as exc:
        raise unknown(
            f"{what}: the connection to the primary at {url} failed mid-request ({type(exc).__name__}: {exc}); "
            "the request may have been executed, so it was not retried"
        ) from exc

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    # uvicorn and websockets are asyncio-only.
    return "asyncio"


@pytest.fixture(autouse=True)
def clean_environ() -> Iterator[None]:
    """Tests never see FORWARDER_* or FLY_* variables of the shell that runs them."""
    saved = dict(os.environ)
    for name in list(os.environ):
        if name.startswith(("FORWARDER_", "FLY_")) or name == "PRIMARY_REGION":
            del os.environ[name]
    yield
    os.environ.clear()
    os.environ.update(saved)

"""forwarder.sqlalchemy under ForwarderMiddleware, in one process: a replica's write becomes a forward."""

# No `from __future__ import annotations`: FastAPI must resolve the handlers' local `SessionDep`.

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import Engine
from sqlmodel import Field, Session, SQLModel, select
from starlette.types import ASGIApp

from forwarder.sqlalchemy import create_engine

from .nodes import two_nodes

pytestmark = pytest.mark.anyio


class Counter(SQLModel, table=True):
    name: str = Field(primary_key=True)
    value: int = 0


def counter_app(url: str) -> tuple[FastAPI, Engine]:
    # One engine for both nodes, with no forwarder= : each request uses the forwarder of the
    # node handling it (ForwarderMiddleware sets it), as each node's own process would.
    engine = create_engine(url, connect_args={"check_same_thread": False})

    def get_session() -> Iterator[Session]:
        with Session(engine) as session:
            yield session

    SessionDep = Annotated[Session, Depends(get_session)]
    api = FastAPI()

    @api.get("/counters/{name}/hit")
    def hit(name: str, session: SessionDep) -> dict[str, int]:  # a GET that writes
        counter = session.get(Counter, name) or Counter(name=name)
        counter.value += 1
        session.add(counter)
        session.commit()
        return {"value": counter.value}

    @api.get("/counters")
    def counters(session: SessionDep) -> dict[str, int]:
        return {c.name: c.value for c in session.exec(select(Counter))}

    return api, engine


async def test_a_write_on_a_replica_is_forwarded_and_reads_stay_local(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/counters.db"
    api, engine = counter_app(url)
    SQLModel.metadata.create_all(engine)  # no forwarder running yet: a plain engine

    def make_app() -> ASGIApp:
        return api

    async with two_nodes(make_app) as nodes, nodes.client(nodes.replica_app) as replica:
        for expected in (1, 2, 3):
            response = await replica.get("/counters/a/hit")
            assert response.status_code == 200, response.text
            assert response.json() == {"value": expected}
            assert response.headers["forwarder-node"] == "node-p"  # it ran on the primary
            listed = await replica.get("/counters")
            assert listed.headers["forwarder-node"] == "node-r"
            assert listed.json() == {"a": expected}

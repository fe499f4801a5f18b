"""The SQLModel benchmarks' app: one FastAPI + SQLModel app, on a forwarder node or bare.

`BENCH_WRAPPED=1`: the README's glue (`forwarder.sqlalchemy.create_engine`, `ForwarderMiddleware`)
as a Litestream replica following `BENCH_DATABASE`; with `BENCH_ROLE=primary` as the node
`FORWARDER_*` describes (a Litestream primary in `bench.write_instructions`, its txids as
`BENCH_COMMIT` says: `bench.apps.commit_modes`). `0`: the same app with SQLModel's own
`create_engine` (SQLAlchemy's default pool) on a single node. The handlers are SQLModel's
tutorial ones: read a book, list books, and create one from its JSON (`POST /books/`). A node that
may write creates the table at start-up, as the tutorial does.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException
from sqlmodel import Field, Session, SQLModel, create_engine as sqlmodel_create_engine, select
from starlette.types import ASGIApp

from bench.apps.commit_modes import apply_commit_mode, outcomes as commit_outcomes
from forwarder import Forwarder, ForwarderMiddleware, Role, Topology
from forwarder.engines.litestream import LitestreamEngine
from forwarder.sqlalchemy import create_engine as forwarder_create_engine

DATABASE = Path(os.environ.get("BENCH_DATABASE", "bench.db")).absolute()
WRAPPED = os.environ.get("BENCH_WRAPPED") == "1"
PRIMARY = os.environ.get("BENCH_ROLE") == "primary"


class Book(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    title: str
    author: str


create_engine: Any = forwarder_create_engine if WRAPPED else sqlmodel_create_engine
engine = create_engine(f"sqlite:///{DATABASE}", connect_args={"check_same_thread": False})


def get_session() -> Iterator[Session]:
    with Session(engine) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    if PRIMARY or not WRAPPED:
        SQLModel.metadata.create_all(engine)
    yield


api = FastAPI(lifespan=lifespan)
forwarder: Forwarder | None = None


@api.post("/books/")
def create_book(book: Book, session: SessionDep) -> Book:
    session.add(book)
    session.commit()
    session.refresh(book)
    return book


@api.get("/books/{book_id}")
def read_book(book_id: int, session: SessionDep) -> Book:
    book = session.get(Book, book_id)
    if not book:
        raise HTTPException(status_code=404, detail="Book not found")
    return book


@api.get("/books/")
def read_books(session: SessionDep) -> list[Book]:
    return list(session.exec(select(Book).limit(20)).all())


@api.get("/outcomes")
def outcomes() -> dict[str, Any]:
    """How a forwarder primary's txids were found (`bench.write_instructions`)."""
    return commit_outcomes(forwarder)


def create() -> ASGIApp:
    global forwarder
    if not WRAPPED:
        return api
    if PRIMARY:
        forwarder = Forwarder.from_settings()
        apply_commit_mode(forwarder)
        return ForwarderMiddleware(api, forwarder=forwarder)
    forwarder = Forwarder(
        engine=LitestreamEngine(DATABASE, Role.REPLICA),
        topology=Topology("bench-replica", "ams", Role.REPLICA, primary_url="http://127.0.0.1:9", primary_id="p"),
        secret="bench",
    )
    return ForwarderMiddleware(api, forwarder=forwarder)


app = create()

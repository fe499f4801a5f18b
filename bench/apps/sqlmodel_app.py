"""The SQLModel benchmark's app: one FastAPI + SQLModel app, on a forwarder replica or bare.

`BENCH_WRAPPED=1`: the README's glue (`forwarder.sqlalchemy.create_engine`, `ForwarderMiddleware`)
as a Litestream replica following `BENCH_DATABASE`. `0`: the same app with SQLModel's own
`create_engine` (SQLAlchemy's default pool) on a single node.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException
from sqlmodel import Field, Session, SQLModel, create_engine as sqlmodel_create_engine, select
from starlette.types import ASGIApp

from forwarder import Forwarder, ForwarderMiddleware, Role, Topology
from forwarder.engines.litestream import LitestreamEngine
from forwarder.sqlalchemy import create_engine as forwarder_create_engine

DATABASE = Path(os.environ.get("BENCH_DATABASE", "bench.db")).absolute()
WRAPPED = os.environ.get("BENCH_WRAPPED") == "1"


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
api = FastAPI()


@api.get("/books/{book_id}")
def read_book(book_id: int, session: SessionDep) -> Book:
    book = session.get(Book, book_id)
    if not book:
        raise HTTPException(status_code=404, detail="Book not found")
    return book


@api.get("/books/")
def read_books(session: SessionDep) -> list[Book]:
    return list(session.exec(select(Book).limit(20)).all())


def create() -> ASGIApp:
    if not WRAPPED:
        return api
    forwarder = Forwarder(
        engine=LitestreamEngine(DATABASE, Role.REPLICA),
        topology=Topology("bench-replica", "ams", Role.REPLICA, primary_url="http://127.0.0.1:9", primary_id="p"),
        secret="bench",
    )
    return ForwarderMiddleware(api, forwarder=forwarder)


app = create()

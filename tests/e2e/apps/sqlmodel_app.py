"""A FastAPI + SQLModel CRUD app, as SQLModel's documentation shapes one, plus forwarder's glue.

Books with create / read / list / patch / delete, and a page-hit counter whose GET writes.
The glue: `Forwarder.from_settings()`, `create_engine` from `forwarder.sqlalchemy`, tables
created on the primary only, and `ForwarderMiddleware` around the app.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Query
from sqlmodel import Field, Session, SQLModel, select

from forwarder import Forwarder, ForwarderMiddleware
from forwarder.sqlalchemy import create_engine


class BookBase(SQLModel):
    title: str = Field(index=True)
    author: str
    year: int | None = Field(default=None, index=True)


class Book(BookBase, table=True):
    id: int | None = Field(default=None, primary_key=True)


class BookCreate(BookBase):
    pass


class BookPublic(BookBase):
    id: int


class BookUpdate(SQLModel):
    title: str | None = None
    author: str | None = None
    year: int | None = None


class Page(SQLModel, table=True):
    slug: str = Field(primary_key=True)
    hits: int = 0


forwarder = Forwarder.from_settings()

database_url = f"sqlite:///{os.environ['FORWARDER_DATABASE']}"
engine = create_engine(database_url, connect_args={"check_same_thread": False})


def get_session() -> Iterator[Session]:
    with Session(engine) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    if forwarder.is_primary:
        SQLModel.metadata.create_all(engine)
    yield


api = FastAPI(lifespan=lifespan)


@api.post("/books/", response_model=BookPublic, status_code=201)
def create_book(book: BookCreate, session: SessionDep) -> Book:
    db_book = Book.model_validate(book)
    session.add(db_book)
    session.commit()
    session.refresh(db_book)
    return db_book


@api.get("/books/", response_model=list[BookPublic])
def read_books(session: SessionDep, offset: int = 0, limit: Annotated[int, Query(le=100)] = 100) -> list[Book]:
    return list(session.exec(select(Book).offset(offset).limit(limit)).all())


@api.get("/books/{book_id}", response_model=BookPublic)
def read_book(book_id: int, session: SessionDep) -> Book:
    book = session.get(Book, book_id)
    if not book:
        raise HTTPException(status_code=404, detail="Book not found")
    return book


@api.patch("/books/{book_id}", response_model=BookPublic)
def update_book(book_id: int, book: BookUpdate, session: SessionDep) -> Book:
    db_book = session.get(Book, book_id)
    if not db_book:
        raise HTTPException(status_code=404, detail="Book not found")
    db_book.sqlmodel_update(book.model_dump(exclude_unset=True))
    session.add(db_book)
    session.commit()
    session.refresh(db_book)
    return db_book


@api.delete("/books/{book_id}")
def delete_book(book_id: int, session: SessionDep) -> dict[str, bool]:
    book = session.get(Book, book_id)
    if not book:
        raise HTTPException(status_code=404, detail="Book not found")
    session.delete(book)
    session.commit()
    return {"ok": True}


@api.get("/pages/", response_model=list[Page])
def read_pages(session: SessionDep) -> list[Page]:
    return list(session.exec(select(Page)).all())


@api.get("/pages/{slug}", response_model=Page)
def visit_page(slug: str, session: SessionDep) -> Page:
    # A GET that writes: every visit counts.
    page = session.get(Page, slug) or Page(slug=slug)
    page.hits += 1
    session.add(page)
    session.commit()
    session.refresh(page)
    return page


app = ForwarderMiddleware(api, forwarder=forwarder)

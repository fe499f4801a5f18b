"""An async SQLAlchemy 2.x ORM app on Starlette (AsyncSession, aiosqlite), plus forwarder's glue.

The same HTTP resources as `sqlmodel_app` (books CRUD, a page-hit counter whose GET writes),
written the way SQLAlchemy's asyncio documentation writes code: a declarative model, an
`async_sessionmaker` with `expire_on_commit=False`, one `async with session.begin()` per unit of work.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import String, select
from sqlalchemy.ext.asyncio import AsyncAttrs, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from forwarder import Forwarder, ForwarderMiddleware
from forwarder.sqlalchemy import create_async_engine


class Base(AsyncAttrs, DeclarativeBase):
    pass


class Book(Base):
    __tablename__ = "book"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200), index=True)
    author: Mapped[str] = mapped_column(String(200))
    year: Mapped[int | None]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "author": self.author, "year": self.year}


class Page(Base):
    __tablename__ = "page"

    slug: Mapped[str] = mapped_column(String(100), primary_key=True)
    hits: Mapped[int] = mapped_column(default=0)


forwarder = Forwarder.from_settings()

engine = create_async_engine(f"sqlite+aiosqlite:///{os.environ['FORWARDER_DATABASE']}")
async_session = async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    if forwarder.is_primary:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
    yield
    await engine.dispose()


def not_found() -> JSONResponse:
    return JSONResponse({"detail": "Book not found"}, status_code=404)


async def books(request: Request) -> JSONResponse:
    if request.method == "POST":
        data = await request.json()
        async with async_session() as session, session.begin():
            book = Book(title=data["title"], author=data["author"], year=data.get("year"))
            session.add(book)
        return JSONResponse(book.to_dict(), status_code=201)
    offset = int(request.query_params.get("offset", 0))
    limit = min(int(request.query_params.get("limit", 100)), 100)
    async with async_session() as session:
        result = await session.scalars(select(Book).order_by(Book.id).offset(offset).limit(limit))
        return JSONResponse([b.to_dict() for b in result])


async def book(request: Request) -> JSONResponse:
    book_id = request.path_params["book_id"]
    async with async_session() as session:
        if request.method == "GET":
            found = await session.get(Book, book_id)
            return JSONResponse(found.to_dict()) if found else not_found()
        async with session.begin():
            found = await session.get(Book, book_id)
            if found is None:
                return not_found()
            if request.method == "DELETE":
                await session.delete(found)
                return JSONResponse({"ok": True})
            for field, value in (await request.json()).items():
                if field in ("title", "author", "year"):
                    setattr(found, field, value)
        return JSONResponse(found.to_dict())


async def pages(request: Request) -> JSONResponse:
    async with async_session() as session:
        result = await session.scalars(select(Page).order_by(Page.slug))
        return JSONResponse([{"slug": p.slug, "hits": p.hits} for p in result])


async def visit(request: Request) -> JSONResponse:
    # A GET that writes: every visit counts.
    slug = request.path_params["slug"]
    async with async_session() as session, session.begin():
        page = await session.get(Page, slug)
        if page is None:
            page = Page(slug=slug, hits=0)
            session.add(page)
        page.hits += 1
    return JSONResponse({"slug": page.slug, "hits": page.hits})


routes = [
    Route("/books/", books, methods=["GET", "POST"]),
    Route("/books/{book_id:int}", book, methods=["GET", "PATCH", "DELETE"]),
    Route("/pages/", pages),
    Route("/pages/{slug}", visit),
]

app = ForwarderMiddleware(Starlette(routes=routes, lifespan=lifespan), forwarder=forwarder)

"""A one-file plugin of the test Datasette: the notes table (made on the primary) and a GET that writes."""

from __future__ import annotations

from typing import Any

from datasette import Response

from forwarder.connections import configured_role
from forwarder.datasette import hookimpl
from forwarder.engines.base import Role


@hookimpl
def startup(datasette: Any) -> Any:
    async def create_table() -> None:
        if configured_role() is Role.PRIMARY:
            await datasette.get_database("app").execute_write(
                "create table if not exists notes (id integer primary key, body text not null)"
            )
            await datasette.get_database("app").execute_write(
                "create table if not exists visits (slug text primary key, hits integer not null)"
            )

    return create_table


async def visit(datasette: Any, request: Any) -> Response:
    slug = request.url_vars["slug"]
    db = datasette.get_database("app")
    await db.execute_write(
        "insert into visits (slug, hits) values (:slug, 1) on conflict (slug) do update set hits = hits + 1",
        {"slug": slug},
    )
    hits = (await db.execute("select hits from visits where slug = :slug", {"slug": slug})).first()[0]
    return Response.json({"slug": slug, "hits": hits})


@hookimpl
def register_routes() -> list[tuple[str, Any]]:
    return [(r"^/-/visit/(?P<slug>[a-z0-9-]+)$", visit)]

"""The message board's data: schema, queries and the one write, `post_message`."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

import anyio.to_thread
from pydantic import BaseModel, Field

from forwarder import Database, primary_only
from forwarder.context import current_forwarder

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    author TEXT NOT NULL,
    text TEXT NOT NULL,
    created_at TEXT NOT NULL
)
"""

PAGE = 100


class MessageIn(BaseModel):
    author: str = Field(min_length=1, max_length=40)
    text: str = Field(min_length=1, max_length=500)


class Message(MessageIn):
    id: int
    created_at: str


def create_schema(database: Database) -> None:
    with database.write() as conn:
        conn.execute(SCHEMA)


def list_messages(database: Database) -> list[Message]:
    """Newest first, at most 100. A replica whose copy has no schema yet has no messages yet."""
    with database.read() as conn:
        try:
            rows = conn.execute(
                "SELECT id, author, text, created_at FROM messages ORDER BY id DESC LIMIT ?", (PAGE,)
            ).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise
    return [Message(**dict(row)) for row in rows]


def insert_message(database: Database, message: MessageIn) -> Message:
    created_at = datetime.now(UTC).isoformat(timespec="milliseconds")
    with database.write() as conn:
        cursor = conn.execute(
            "INSERT INTO messages (author, text, created_at) VALUES (?, ?, ?)",
            (message.author, message.text, created_at),
        )
        message_id = cursor.lastrowid
    assert message_id is not None
    return Message(id=message_id, created_at=created_at, **message.model_dump())


def delete_message(database: Database, message_id: int) -> bool:
    with database.write() as conn:
        return conn.execute("DELETE FROM messages WHERE id = ?", (message_id,)).rowcount > 0


@primary_only
async def post_message(message: MessageIn) -> Message:
    """Store a message. Runs on the primary; on a replica it returns once the replica holds it."""
    forwarder = current_forwarder()
    if forwarder is None or forwarder.database is None:
        raise RuntimeError("post_message needs a running Forwarder with a database")
    return await anyio.to_thread.run_sync(insert_message, forwarder.database, message)

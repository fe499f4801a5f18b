"""A local S3-compatible server (moto's standalone `moto_server`) on loopback, for `forwarder dev --store s3`,
the tests and the benchmarks.

moto is a development dependency (`pip install 'moto[server]'`), not a runtime one: production uses a
real object store. The server keeps everything in memory; it logs one line per request, which is
how `request_counts()` counts what Litestream costs against the store.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections import Counter
from pathlib import Path

import httpx

from .._process import find_executable
from ..store import S3Store
from .processes import ClusterError, ManagedProcess, free_port

__all__ = ["LocalS3Server"]

READY_DEADLINE = 30.0
"""Seconds moto_server gets to answer HTTP on its port."""

# werkzeug colours the lines of non-200 answers (206 for a ranged GET) with ANSI escapes.
_REQUEST = re.compile(r'"(?:\x1b\[[0-9;]*m)*(GET|PUT|POST|DELETE|HEAD) /([^/?\s"]+)(\S*)')


class LocalS3Server:
    """`moto_server --host 127.0.0.1 --port <free>`: start it, wait until it answers, make buckets, stop it.

    Its credentials are dummies (moto accepts any); they are still passed explicitly everywhere,
    as a real store needs.

    >>> server = LocalS3Server(log_path=Path("logs/moto.log"))
    >>> await server.start()
    >>> store = server.store("forwarder-dev", "app.db")   # the bucket is created
    >>> await server.stop()
    """

    access_key_id = "forwarder-dev"
    secret_access_key = "forwarder-dev-secret"
    region = "us-east-1"

    def __init__(self, *, log_path: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.endpoint = f"http://{host}:{self.port}"
        self.log_path = log_path
        env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
        env["PYTHONUNBUFFERED"] = "1"  # one log line per request, written as it happens
        self.process = ManagedProcess(
            "moto_server",
            [_moto_server(), "--host", host, "--port", str(self.port)],
            log_path=log_path,
            env=env,
        )

    async def start(self) -> None:
        """Start the server and return once it answers HTTP (it is polled, not slept on)."""
        await self.process.start()
        deadline = time.monotonic() + READY_DEADLINE
        last = "no answer yet"
        async with httpx.AsyncClient(timeout=1.0) as client:
            while True:
                if not self.process.running:
                    raise ClusterError(
                        f"moto_server exited with status {self.process.returncode} (log {self.log_path}):\n"
                        f"{self.process.tail()}"
                    )
                try:
                    response = await client.get(f"{self.endpoint}/moto-api/")
                    if response.status_code == 200:
                        return
                    last = f"status {response.status_code}"
                except httpx.HTTPError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                if time.monotonic() > deadline:
                    await self.process.stop()
                    raise ClusterError(
                        f"moto_server did not answer on {self.endpoint} within {READY_DEADLINE:g}s ({last}); "
                        f"log {self.log_path}:\n{self.process.tail()}"
                    )
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """Stop the server (its buckets are gone with it). Safe to call twice."""
        await self.process.stop()

    async def create_bucket(self, bucket: str) -> None:
        """Create `bucket` with an S3 client (boto3, which moto depends on) and explicit credentials."""
        await asyncio.to_thread(self._create_bucket, bucket)

    def _create_bucket(self, bucket: str) -> None:
        import boto3  # moto's own dependency: only needed with the local server

        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )
        client.create_bucket(Bucket=bucket)

    async def store(self, bucket: str, path: str) -> S3Store:
        """Create `bucket` and return the store `s3://<bucket>/<path>` on this server."""
        await self.create_bucket(bucket)
        return S3Store(
            bucket=bucket,
            path=path,
            access_key_id=self.access_key_id,
            secret_access_key=self.secret_access_key,
            endpoint=self.endpoint,
            region=self.region,
            force_path_style=True,
        )

    def request_counts(self, bucket: str | None = None) -> Counter[str]:
        """Requests the server has logged so far, by method, a listing counted as LIST, not GET
        (only those on `bucket` if given)."""
        counts: Counter[str] = Counter()
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return counts
        for match in _REQUEST.finditer(text):
            if bucket is None or match.group(2) == bucket:
                listing = match.group(1) == "GET" and "list-type=" in match.group(3)
                counts["LIST" if listing else match.group(1)] += 1
        return counts


def _moto_server() -> str:
    found = find_executable("moto_server")
    if found is not None:
        return found
    raise ClusterError(
        "the local S3 server needs moto: install it with `pip install 'moto[server]'`, "
        "or give an S3 endpoint of your own with --store s3://<bucket>/<path>?endpoint=http://host:port"
    )

"""Where Litestream keeps the replicated database: a local directory or an S3-compatible bucket.

A store is the one object both sides of Litestream replication take: the primary's
`litestream replicate` writes to it (`replica:` in its config) and every replica's
`litestream restore -f` follower reads from it (its replica URL). `file` is the local cluster's
shared directory; `s3` is any S3-compatible object store (AWS, R2, Tigris, MinIO, moto...), the
off-Fly production topology.

>>> store = parse_store("s3://my-bucket/app.db?endpoint=http://127.0.0.1:9000&region=us-east-1")
>>> store.url()
's3://my-bucket/app.db?endpoint=http://127.0.0.1:9000&region=us-east-1&force-path-style=true'

The accepted URL query parameters and config keys are those of Litestream 0.5.17
(`s3.NewReplicaClientFromURL` and `S3ReplicaConfig` in its source).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from .exceptions import ConfigurationError

__all__ = ["DEFAULT_REGION", "FileStore", "S3Store", "Store", "parse_store"]

DEFAULT_REGION = "us-east-1"
"""Region signed into requests when none is given; S3-compatible servers other than AWS accept any."""

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


@dataclass(frozen=True)
class FileStore:
    """A replica directory on a file system every node can read (the local cluster's "object store")."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path).absolute())

    @property
    def type(self) -> str:
        """Litestream's replica type."""
        return "file"

    def url(self) -> str:
        """The replica URL a follower restores from (`file:///abs/dir`)."""
        return f"file://{self.path}"

    def replica_fields(self) -> dict[str, Any]:
        """The keys of the `replica:` entry in `litestream replicate`'s config (sync interval aside)."""
        return {"type": "file", "path": str(self.path)}

    def credentials(self) -> dict[str, str]:
        """Environment variables Litestream needs to reach the store: none for a directory."""
        return {}

    @property
    def plain_http(self) -> bool:
        """Whether the store is reached over plain http (never, for a directory)."""
        return False

    def describe(self) -> str:
        """A one-line description for logs and messages (no secret in it)."""
        return f"file store {self.path}"


@dataclass(frozen=True)
class S3Store:
    """An S3-compatible bucket: `path` is the key prefix under which Litestream writes this database.

    Credentials are always explicit: without them Litestream's AWS SDK falls back to the EC2
    instance metadata service (169.254.169.254), which stalls or leaks off the host.
    `endpoint` is None for AWS itself; give it (with its scheme) for any other server.
    `force_path_style` (`http://host/bucket/key`) is what every non-AWS server expects.
    """

    bucket: str
    path: str
    access_key_id: str
    secret_access_key: str = field(repr=False)
    endpoint: str | None = None
    region: str = DEFAULT_REGION
    force_path_style: bool = True
    session_token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.bucket or "/" in self.bucket:
            raise ConfigurationError(f"S3 bucket {self.bucket!r} is not a bucket name; write s3://<bucket>/<path>")
        path = self.path.strip("/")
        if not path:
            raise ConfigurationError(
                f"S3 store s3://{self.bucket}/ has no path; give the key prefix for this database, "
                f"e.g. s3://{self.bucket}/app.db"
            )
        object.__setattr__(self, "path", path)
        if not self.access_key_id or not self.secret_access_key:
            raise ConfigurationError(
                f"S3 store s3://{self.bucket}/{path} has no credentials; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (Litestream would otherwise ask the EC2 metadata service)"
            )
        if self.endpoint is not None:
            scheme = urlsplit(self.endpoint).scheme
            if scheme not in ("http", "https"):
                raise ConfigurationError(
                    f"S3 endpoint {self.endpoint!r} needs its scheme; write http://host:port or https://host"
                )

    @property
    def type(self) -> str:
        """Litestream's replica type."""
        return "s3"

    @property
    def plain_http(self) -> bool:
        """Whether the endpoint is plain http (then `AWS_CA_BUNDLE` must not reach Litestream)."""
        return self.endpoint is not None and urlsplit(self.endpoint).scheme == "http"

    def url(self) -> str:
        """The replica URL a follower restores from: `s3://<bucket>/<path>?endpoint=…&region=…&force-path-style=…`.

        Credentials are not in it: `restore` reads them from the environment (see `credentials()`).
        """
        query: dict[str, str] = {}
        if self.endpoint is not None:
            query["endpoint"] = self.endpoint
        query["region"] = self.region
        query["force-path-style"] = "true" if self.force_path_style else "false"
        # ":" and "/" stay readable: Go's url.Parse takes them as they are in a query value.
        return f"s3://{self.bucket}/{quote(self.path)}?{urlencode(query, safe=':/')}"

    def replica_fields(self) -> dict[str, Any]:
        """The keys of the `replica:` entry in `litestream replicate`'s config (sync interval aside)."""
        fields: dict[str, Any] = {"type": "s3", "bucket": self.bucket, "path": self.path}
        if self.endpoint is not None:
            fields["endpoint"] = self.endpoint
        fields["region"] = self.region
        fields["force-path-style"] = self.force_path_style
        fields["access-key-id"] = self.access_key_id
        fields["secret-access-key"] = self.secret_access_key
        return fields

    def credentials(self) -> dict[str, str]:
        """The AWS variables that give Litestream these credentials and nothing else."""
        env = {"AWS_ACCESS_KEY_ID": self.access_key_id, "AWS_SECRET_ACCESS_KEY": self.secret_access_key}
        if self.session_token:
            env["AWS_SESSION_TOKEN"] = self.session_token
        return env

    def describe(self) -> str:
        """A one-line description for logs and messages (no secret in it)."""
        where = self.endpoint or "AWS"
        return f"S3 store s3://{self.bucket}/{self.path} at {where} (region {self.region})"


Store = FileStore | S3Store
"""A place Litestream replicates to and restores from."""


def parse_store(text: str, *, environ: Mapping[str, str] | None = None) -> Store:
    """A store from a replica URL: `file:///dir`, a plain directory path, or `s3://bucket/path?…`.

    For `s3`, the query may set `endpoint`, `region` and `force-path-style` (also spelled
    `forcePathStyle`, as Litestream accepts); the credentials come from `environ` (default: the
    process environment): `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, or Litestream's own
    `LITESTREAM_ACCESS_KEY_ID`/`LITESTREAM_SECRET_ACCESS_KEY`, plus `AWS_SESSION_TOKEN` if set.
    Raises `ConfigurationError` naming what is missing.
    """
    env = os.environ if environ is None else environ
    parts = urlsplit(text)
    if parts.scheme in ("", "file"):
        path = unquote(parts.path) if parts.scheme == "file" else text
        if parts.scheme == "file" and parts.netloc not in ("", "localhost"):
            raise ConfigurationError(f"file store URL {text!r} names a host; write file:///absolute/dir")
        if not path:
            raise ConfigurationError(f"file store {text!r} has no directory")
        return FileStore(Path(path))
    if parts.scheme != "s3":
        raise ConfigurationError(
            f"store {text!r} is neither file:// nor s3://; forwarder supports Litestream's file and s3 replicas"
        )
    query = parse_qs(parts.query, keep_blank_values=True)
    known = {"endpoint", "region", "force-path-style", "forcePathStyle"}
    unknown = sorted(set(query) - known)
    if unknown:
        raise ConfigurationError(
            f"store {text!r} has unknown parameter(s) {', '.join(unknown)}; known: endpoint, region, force-path-style"
        )

    def one(name: str) -> str | None:
        values = query.get(name)
        return values[-1] if values else None

    style_text = one("force-path-style") or one("forcePathStyle")
    if style_text is None:
        force_path_style = True
    elif style_text.lower() in _TRUE:
        force_path_style = True
    elif style_text.lower() in _FALSE:
        force_path_style = False
    else:
        raise ConfigurationError(f"force-path-style={style_text!r} in {text!r} is not true or false")
    key = env.get("AWS_ACCESS_KEY_ID") or env.get("LITESTREAM_ACCESS_KEY_ID") or ""
    secret = env.get("AWS_SECRET_ACCESS_KEY") or env.get("LITESTREAM_SECRET_ACCESS_KEY") or ""
    return S3Store(
        bucket=parts.netloc,
        path=unquote(parts.path),
        access_key_id=key,
        secret_access_key=secret,
        endpoint=one("endpoint") or None,
        region=one("region") or env.get("AWS_REGION") or DEFAULT_REGION,
        force_path_style=force_path_style,
        session_token=env.get("AWS_SESSION_TOKEN") or None,
    )

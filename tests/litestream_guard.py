"""The rule every Litestream process the tests start must follow (checked on each `subprocess.Popen`).

- it gets an explicit environment with `AWS_EC2_METADATA_DISABLED=true`, so its AWS SDK never asks
  the EC2 metadata service at 169.254.169.254 (a non-loopback address);
- on an `s3` store it gets credentials explicitly (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`);
- on a plain-http endpoint it does not get `AWS_CA_BUNDLE` (Litestream fails to start with it);
- every S3 endpoint it is pointed at is on loopback.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["launch_problems"]

_ENDPOINT = re.compile(r"endpoint[=:]\s*\"?([a-z]+://[^\"&\s]+)")
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _config_text(argv: Sequence[str]) -> str:
    if "-config" in argv:
        index = argv.index("-config")
        if index + 1 < len(argv):
            try:
                return Path(argv[index + 1]).read_text()
            except OSError:
                return ""
    return ""


def launch_problems(argv: Sequence[str], env: Mapping[str, str] | None) -> list[str]:
    """What is wrong with starting `argv` with `env` ([] when it is not Litestream, or when all is right)."""
    if not argv or Path(str(argv[0])).name != "litestream":
        return []
    if env is None:
        return ["started with the test process's own environment, not one from litestream_environ()"]
    problems = []
    if env.get("AWS_EC2_METADATA_DISABLED") != "true":
        problems.append("AWS_EC2_METADATA_DISABLED is not 'true'")
    text = " ".join(str(arg) for arg in argv) + "\n" + _config_text(argv)
    s3 = "s3://" in text or re.search(r"type:\s*\"?s3", text) is not None
    if s3:
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            if not env.get(name):
                problems.append(f"an s3 store without {name}")
    for endpoint in _ENDPOINT.findall(text):
        parts = urlsplit(endpoint)
        if parts.hostname not in _LOOPBACK:
            problems.append(f"S3 endpoint {endpoint} is not on loopback")
        if parts.scheme == "http" and "AWS_CA_BUNDLE" in env:
            problems.append(f"AWS_CA_BUNDLE is set with the plain-http endpoint {endpoint}")
    return problems

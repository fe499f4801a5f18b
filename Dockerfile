# The example app on LiteFS, for Fly.io (see fly.toml and litefs.yml).
FROM python:3.12-slim

# fuse3 to mount LiteFS, ca-certificates for Consul over https, sqlite3 for `fly ssh console` debugging.
RUN apt-get update -y \
    && apt-get install -y --no-install-recommends ca-certificates fuse3 sqlite3 \
    && rm -rf /var/lib/apt/lists/*

# The LiteFS binary from its official image.
COPY --from=flyio/litefs:0.5 /usr/local/bin/litefs /usr/local/bin/litefs

WORKDIR /app
COPY pyproject.toml README.md ./
COPY forwarder ./forwarder
COPY example_app ./example_app
# No litestream extra: on Fly, LiteFS replicates.
# server: uvloop and httptools, which litefs.yml's uvicorn command line asks for.
RUN pip install --no-cache-dir ".[metrics,server]"

COPY litefs.yml /etc/litefs.yml

# LiteFS mounts /litefs, joins the cluster (Consul lease), syncs, then runs the `exec` commands of
# litefs.yml: `forwarder check` (a bad setting is one line in the logs), then uvicorn.
# It must run as root (FUSE); it forwards SIGINT/SIGTERM to uvicorn.
ENTRYPOINT ["litefs", "mount"]

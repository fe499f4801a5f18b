"""Replication engines: litestream (embedded default), litefs (Fly), memory (tests)."""

"""Calls from replicas to `@primary_only` functions on the primary."""

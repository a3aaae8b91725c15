"""Workflows: one module a command (sweep, analyze, compare, sync, ingest), the only
places that combine the store, the engine, tracking and the runtime."""

"""Persistence: SQLite embedded by default (WAL), PostgreSQL for scale, one schema."""

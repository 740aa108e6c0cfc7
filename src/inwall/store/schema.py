"""The relational schema: one table per resource, JSON columns for API bodies.

API objects whose shape is owned by the Managed Agents wire format (an agent's
tools, a session's agent snapshot, an event's payload) are stored as JSON, so
the server never loses a field it does not model; columns exist only for what
is filtered, joined or locked on. Timestamps are timezone-aware UTC.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

__all__ = [
    "agent_versions",
    "agents",
    "api_keys",
    "audit_records",
    "environments",
    "events",
    "metadata",
    "sessions",
    "tunnel_certificates",
    "tunnels",
    "users",
    "work_items",
    "worker_polls",
]

metadata = MetaData()

TS = DateTime(timezone=True)

users = Table(
    "users",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(255), nullable=False),
    Column("roles", JSON, nullable=False),
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    Column("disabled_at", TS),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(64), primary_key=True),
    # admin | user | environment
    Column("kind", String(16), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("hint", String(32), nullable=False),
    Column("user_id", String(64), ForeignKey("users.id")),
    Column("environment_id", String(64)),
    Column("created_at", TS, nullable=False),
    Column("revoked_at", TS),
)

agents = Table(
    "agents",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    Column("archived_at", TS),
)

agent_versions = Table(
    "agent_versions",
    metadata,
    Column("agent_id", String(64), ForeignKey("agents.id"), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("body", JSON, nullable=False),
    Column("created_at", TS, nullable=False),
)

environments = Table(
    "environments",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("body", JSON, nullable=False),
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    Column("archived_at", TS),
)

sessions = Table(
    "sessions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("environment_id", String(64), nullable=False),
    Column("agent_id", String(64), nullable=False),
    Column("agent_version", Integer, nullable=False),
    Column("owner_user_id", String(64)),
    # rescheduling | running | idle | terminated
    Column("status", String(16), nullable=False),
    Column("body", JSON, nullable=False),
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    Column("archived_at", TS),
    Column("deleted_at", TS),
    Column("running_since", TS),
    Column("active_seconds", Float, nullable=False, default=0.0),
    # Token usage, kept as counters so a model step adds to them in one UPDATE.
    Column("input_tokens", BigInteger, nullable=False, default=0),
    Column("output_tokens", BigInteger, nullable=False, default=0),
    Column("cache_read_input_tokens", BigInteger, nullable=False, default=0),
    Index("ix_sessions_created", "created_at"),
    Index("ix_sessions_status", "status"),
)

events = Table(
    "events",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("session_id", String(64), ForeignKey("sessions.id"), nullable=False),
    Column("type", String(64), nullable=False),
    Column("body", JSON, nullable=False),
    # Set when the turn loop has consumed a user event; orders the list endpoint.
    Column("processed_at", TS),
    Column("created_at", TS, nullable=False),
    # Internal bookkeeping the API never shows: which model step emitted an agent
    # event, whether an event is hidden from the model (offload writes), etc.
    Column("internal", JSON, nullable=False),
    # For result and confirmation events: the tool-use event they answer. The
    # unique constraint makes "first result wins" a database fact, not a race.
    Column("ref_id", String(64)),
    Column("ref_kind", String(16)),
    Index("ix_events_session_seq", "session_id", "seq"),
    UniqueConstraint("session_id", "ref_id", "ref_kind", name="uq_events_ref"),
)

work_items = Table(
    "work_items",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("environment_id", String(64), nullable=False),
    Column("session_id", String(64), nullable=False),
    # queued | starting | active | stopping | stopped
    Column("state", String(16), nullable=False),
    Column("metadata", JSON, nullable=False),
    Column("created_at", TS, nullable=False),
    Column("queued_at", TS, nullable=False),
    Column("polled_at", TS),
    Column("worker_id", String(255)),
    Column("acknowledged_at", TS),
    Column("started_at", TS),
    Column("latest_heartbeat_at", TS),
    Column("last_heartbeat", String(64)),
    Column("lease_expires_at", TS),
    Column("stop_requested_at", TS),
    Column("stopped_at", TS),
    Column("attempt", Integer, nullable=False, default=0),
    Index("ix_work_env_state", "environment_id", "state", "queued_at"),
    Index("ix_work_session", "session_id"),
)

worker_polls = Table(
    "worker_polls",
    metadata,
    Column("environment_id", String(64), primary_key=True),
    Column("worker_id", String(255), primary_key=True),
    Column("polled_at", TS, nullable=False),
)

tunnels = Table(
    "tunnels",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("domain", String(255), nullable=False, unique=True),
    Column("display_name", String(255)),
    Column("token_id", String(64), nullable=False),
    # The token is sealed with the server key: reveal_token must return it, so it
    # cannot be a one-way hash; the hash column is what authentication compares.
    Column("token_sealed", Text, nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", TS, nullable=False),
    Column("archived_at", TS),
)

tunnel_certificates = Table(
    "tunnel_certificates",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tunnel_id", String(64), ForeignKey("tunnels.id"), nullable=False),
    Column("pem", Text, nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("expires_at", TS),
    Column("created_at", TS, nullable=False),
    Column("archived_at", TS),
    UniqueConstraint("tunnel_id", "fingerprint", name="uq_tunnel_cert_fp"),
)

audit_records = Table(
    "audit_records",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False),
    Column("ts", TS, nullable=False),
    Column("kind", String(64), nullable=False),
    Column("session_id", String(64)),
    Column("user_id", String(64)),
    Column("outcome", String(32)),
    Column("record", JSON, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("exported", Boolean, nullable=False, default=False),
    Index("ix_audit_kind", "kind"),
    Index("ix_audit_session", "session_id"),
)

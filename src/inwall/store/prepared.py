"""Statements on the tool-call hot path, built once with bind parameters.

Building a SQLAlchemy statement (expressions, coercions, its cache key) costs
100 to 170 µs, several times what SQLite takes to run it, and a tool call's round
trip runs a dozen of them. Built once, a statement's cache key is memoised and
only the execution remains. Everything off the hot path builds its statements
inline, where reading them next to their use matters more than microseconds.
"""

from __future__ import annotations

import sqlalchemy as sa

from inwall.store import schema as s

__all__ = [
    "ADD_USAGE",
    "AUDIT_HEAD",
    "AUDIT_HEAD_LOCKED",
    "AUDIT_INSERT",
    "EVENTS_SINCE",
    "EVENT_INSERT",
    "LIVE_SESSION",
    "LOCK_SESSION",
    "TOOL_USE_AND_ANSWERS",
]

#: params: session_id
LIVE_SESSION = sa.select(s.sessions).where(
    s.sessions.c.id == sa.bindparam("session_id"), s.sessions.c.deleted_at.is_(None)
)

#: params: session_id, after (a seq)
EVENTS_SINCE = (
    sa.select(s.events)
    .where(s.events.c.session_id == sa.bindparam("session_id"), s.events.c.seq > sa.bindparam("after"))
    .order_by(s.events.c.seq)
)

#: params: rows of the events table (executemany keeps their order)
EVENT_INSERT = s.events.insert()

#: Serialises a session's appends on PostgreSQL, so seqs commit in order (see ``Tx``).
#: params: session_id
LOCK_SESSION = (
    sa.select(s.sessions.c.id).where(s.sessions.c.id == sa.bindparam("session_id")).with_for_update()
)

#: The tool-use event and every answer already recorded for it, in one round trip.
#: Two indexed lookups, not one ``id = ? OR ref_id = ?``: SQLite answers the OR by
#: walking every event of the session, reading each row past its body (ref_id is
#: stored after it) — a cost that grew with the session, megabytes per result once
#: it held offloaded outputs.
#: Only the two body fields the check reads are extracted (by the database, in C):
#: the target may be an offload ``write`` whose body holds a megabyte.
#: params: session_id, target_id
_REFERENCE_COLUMNS = (
    s.events.c.id,
    s.events.c.type,
    s.events.c.internal,
    s.events.c.ref_kind,
    s.events.c.body["evaluated_permission"].as_string().label("evaluated_permission"),
    s.events.c.body["result"].as_string().label("verdict"),
)
TOOL_USE_AND_ANSWERS = sa.union_all(
    sa.select(*_REFERENCE_COLUMNS).where(
        s.events.c.id == sa.bindparam("target_id"), s.events.c.session_id == sa.bindparam("session_id")
    ),
    sa.select(*_REFERENCE_COLUMNS).where(
        s.events.c.session_id == sa.bindparam("session_id"), s.events.c.ref_id == sa.bindparam("target_id")
    ),
)

#: params: session_id, add_input, add_output, add_cache_read (amounts to add)
ADD_USAGE = (
    s.sessions.update()
    .where(s.sessions.c.id == sa.bindparam("session_id"))
    .values(
        input_tokens=s.sessions.c.input_tokens + sa.bindparam("add_input", type_=sa.Integer),
        output_tokens=s.sessions.c.output_tokens + sa.bindparam("add_output", type_=sa.Integer),
        cache_read_input_tokens=s.sessions.c.cache_read_input_tokens
        + sa.bindparam("add_cache_read", type_=sa.Integer),
    )
)

#: The audit chain's last record (PostgreSQL locks it: concurrent writers take turns).
AUDIT_HEAD = (
    sa.select(s.audit_records.c.seq, s.audit_records.c.hash).order_by(s.audit_records.c.seq.desc()).limit(1)
)
AUDIT_HEAD_LOCKED = AUDIT_HEAD.with_for_update()

#: params: a row of the audit_records table
AUDIT_INSERT = s.audit_records.insert()

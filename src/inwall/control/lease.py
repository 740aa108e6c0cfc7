"""The work-item lease state machine, sans-I/O: a table of transitions and one function to apply it.

    queued ──ack──▶ starting ──heartbeat──▶ active ──heartbeat──▶ active
      │               │  │                    │  │
      │ stop          │  └─ stop ──▶ stopping ◀┘  └─ lapse ──▶ queued (re-queued, reclaimed by another worker)
      ▼               └── lapse ──▶ queued   │
    stopped ◀──────── force stop ◀───────────┴── lapse / force stop

A queued item that was polled but not acknowledged stays ``queued`` ("pending"
in the stats) and may be handed to another poller once it is older than the
poll's ``reclaim_older_than_ms``.
"""

from __future__ import annotations

import enum

from inwall.errors import Conflict

__all__ = ["NO_HEARTBEAT", "State", "Trigger", "heartbeat_matches", "transition"]

NO_HEARTBEAT = "NO_HEARTBEAT"


class State(enum.StrEnum):
    QUEUED = "queued"
    STARTING = "starting"
    ACTIVE = "active"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Trigger(enum.StrEnum):
    ACK = "ack"
    HEARTBEAT = "heartbeat"
    STOP = "stop"
    FORCE_STOP = "force_stop"
    LAPSE = "lapse"


_TABLE: dict[tuple[State, Trigger], State] = {
    (State.QUEUED, Trigger.ACK): State.STARTING,
    (State.QUEUED, Trigger.STOP): State.STOPPED,
    (State.QUEUED, Trigger.FORCE_STOP): State.STOPPED,
    (State.STARTING, Trigger.HEARTBEAT): State.ACTIVE,
    (State.STARTING, Trigger.STOP): State.STOPPING,
    (State.STARTING, Trigger.FORCE_STOP): State.STOPPED,
    (State.STARTING, Trigger.LAPSE): State.QUEUED,
    (State.ACTIVE, Trigger.HEARTBEAT): State.ACTIVE,
    (State.ACTIVE, Trigger.STOP): State.STOPPING,
    (State.ACTIVE, Trigger.FORCE_STOP): State.STOPPED,
    (State.ACTIVE, Trigger.LAPSE): State.QUEUED,
    (State.STOPPING, Trigger.HEARTBEAT): State.STOPPING,
    (State.STOPPING, Trigger.STOP): State.STOPPING,
    (State.STOPPING, Trigger.FORCE_STOP): State.STOPPED,
    (State.STOPPING, Trigger.LAPSE): State.STOPPED,
}

_WHY = {
    Trigger.ACK: "only a queued work item can be acknowledged",
    Trigger.HEARTBEAT: "a queued or stopped work item holds no lease to extend",
    Trigger.STOP: "the work item is already stopped",
    Trigger.FORCE_STOP: "the work item is already stopped",
    Trigger.LAPSE: "the work item holds no lease",
}


def transition(state: State | str, trigger: Trigger) -> State:
    """The next state, or ``Conflict`` (a 409 the caller can read) when the trigger does not apply."""
    current = State(state)
    try:
        return _TABLE[(current, trigger)]
    except KeyError:
        raise Conflict(f"{_WHY[trigger]} (state: {current.value})") from None


def heartbeat_matches(state: State | str, stored: str | None, expected: str | None) -> bool:
    """Optimistic concurrency: the caller must echo the last heartbeat it saw (``NO_HEARTBEAT`` for none).

    A stopping or stopped item is not compared: the worker only needs to learn
    that it should stop.
    """
    if State(state) in (State.STOPPING, State.STOPPED):
        return True
    if expected is None:
        return True
    if expected == NO_HEARTBEAT:
        return stored is None
    return expected == stored

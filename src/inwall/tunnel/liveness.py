"""When to ping and when to declare the link dead: a clock-driven core with no timers of its own.

Both ends ping. Any bytes from the peer count as proof of life, so a busy link sends
no pings at all and an idle one sends one every ``interval_s``; the peer answers
each PING with an ACK. A link with nothing from the peer for ``dead_after_s`` is dead,
which bounds detection of a silently dropped connection (a NAT that forgot us, a
gateway host that lost power) to ``dead_after_s`` regardless of TCP timeouts.
"""

from __future__ import annotations

import enum

__all__ = ["Liveness", "LivenessAction"]


class LivenessAction(enum.Enum):
    NOTHING = "nothing"
    PING = "ping"
    DEAD = "dead"


class Liveness:
    """Feed it the time of every receipt; :meth:`poll` says what to do now and when to ask again."""

    def __init__(self, *, interval_s: float, dead_after_s: float, now: float) -> None:
        if interval_s <= 0 or dead_after_s <= 0:
            raise ValueError("ping interval and dead-after must be positive")
        if dead_after_s <= interval_s:
            raise ValueError("dead_after_s must exceed ping_interval_s, or a healthy idle link looks dead")
        self.interval_s = interval_s
        self.dead_after_s = dead_after_s
        self._last_received = now
        self._last_ping = float("-inf")

    def received(self, now: float) -> None:
        self._last_received = now

    def poll(self, now: float) -> tuple[LivenessAction, float]:
        """The action due at ``now`` and the time of the next decision.

        Pings start ``interval_s`` after the last receipt and repeat every ``interval_s``
        while the peer stays silent, so the peer has at least two chances to answer
        before ``dead_after_s`` when ``dead_after_s >= 3 * interval_s``.
        """
        if now - self._last_received >= self.dead_after_s:
            return LivenessAction.DEAD, now
        action = LivenessAction.NOTHING
        if now - self._last_received >= self.interval_s and now - self._last_ping >= self.interval_s:
            self._last_ping = now
            action = LivenessAction.PING
        next_ping = max(self._last_received, self._last_ping) + self.interval_s
        return action, min(next_ping, self._last_received + self.dead_after_s)

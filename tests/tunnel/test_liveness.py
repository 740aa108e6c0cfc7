"""The ping/dead-link core, driven by a fake clock."""

from __future__ import annotations

import pytest

from inwall.tunnel.liveness import Liveness, LivenessAction

NOTHING, PING, DEAD = LivenessAction.NOTHING, LivenessAction.PING, LivenessAction.DEAD


def test_idle_link_pings_every_interval_then_dies() -> None:
    live = Liveness(interval_s=5, dead_after_s=15, now=0)
    assert live.poll(0) == (NOTHING, 5)
    assert live.poll(5) == (PING, 10)
    assert live.poll(7) == (NOTHING, 10)
    assert live.poll(10) == (PING, 15)
    assert live.poll(14.9)[0] is NOTHING
    assert live.poll(15) == (DEAD, 15)


def test_traffic_postpones_pings_and_death() -> None:
    live = Liveness(interval_s=5, dead_after_s=15, now=0)
    live.received(4)
    assert live.poll(5) == (NOTHING, 9)
    assert live.poll(9) == (PING, 14)
    live.received(10)  # the ACK
    assert live.poll(14) == (NOTHING, 15)
    assert live.poll(24.9)[0] is PING or live.poll(24.9)[0] is NOTHING
    assert live.poll(25)[0] is DEAD


def test_busy_link_never_pings() -> None:
    live = Liveness(interval_s=1, dead_after_s=3, now=0)
    for t in range(1, 100):
        live.received(t - 0.5)
        assert live.poll(t)[0] is NOTHING


def test_dead_after_must_exceed_the_interval() -> None:
    with pytest.raises(ValueError, match="must exceed"):
        Liveness(interval_s=5, dead_after_s=5, now=0)
    with pytest.raises(ValueError, match="positive"):
        Liveness(interval_s=0, dead_after_s=5, now=0)

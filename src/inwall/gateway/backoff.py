"""Full-jitter exponential backoff (sans-I/O): ``delay = uniform(0, min(cap, base * 2**attempt))``.

Full jitter spreads a fleet of gateways that lost the same server so they do
not reconnect in lockstep. The supervisor resets it once a connection has
stayed up long enough to count as healthy, so one blip after a long, good run
reconnects quickly while a crash loop backs off to the cap.
"""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["FullJitterBackoff"]


class FullJitterBackoff:
    def __init__(
        self, *, base_s: float = 0.5, cap_s: float = 30.0, rng: Callable[[], float] = random.random
    ) -> None:
        if base_s <= 0 or cap_s < base_s:
            raise ValueError("backoff needs 0 < base_s <= cap_s")
        self.base_s = base_s
        self.cap_s = cap_s
        self._rng = rng
        self.attempt = 0

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        return float(min(self.cap_s, self.base_s * (2.0 ** min(self.attempt, 62))))

    def next_delay(self) -> float:
        delay = self._rng() * self.ceiling()
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0

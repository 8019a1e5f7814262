"""Admission control: a global and a per-caller limit on requests in flight.

Limits count requests, not tokens: the engine batches whatever it is given, and what
hurts a miner's latency score is more concurrent sequences than it declared it can
serve. A refused request costs the caller one round trip and carries ``Retry-After``.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from typing import Iterator

from miner.errors import Overloaded

RETRY_AFTER_S = 1


class Admission:
    def __init__(self, global_limit: int, per_caller_limit: int):
        if global_limit < 1 or per_caller_limit < 1:
            raise ValueError("in-flight limits must be at least 1")
        self.global_limit = global_limit
        self.per_caller_limit = per_caller_limit
        self.in_flight = 0
        self._by_caller: Counter[str] = Counter()

    @contextmanager
    def admit(self, caller: str) -> Iterator[None]:
        """Hold one slot for ``caller`` for the duration; Overloaded (429) when none is free."""
        if self.in_flight >= self.global_limit:
            raise Overloaded(f"miner is at its limit of {self.global_limit} requests in flight", code="miner_busy", headers={"Retry-After": str(RETRY_AFTER_S)})
        if self._by_caller[caller] >= self.per_caller_limit:
            raise Overloaded(
                f"caller {caller} already has {self.per_caller_limit} requests in flight", code="caller_busy", headers={"Retry-After": str(RETRY_AFTER_S)}
            )
        self.in_flight += 1
        self._by_caller[caller] += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            self._by_caller[caller] -= 1
            if not self._by_caller[caller]:
                del self._by_caller[caller]

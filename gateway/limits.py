"""Per-key limits: requests per minute, tokens per minute, and a lifetime token quota.

Windows are moving 60 s windows from the ``limits`` library (in memory: one gateway
process owns its keys' windows). Tokens per minute are charged at admission with what
the request may use (prompt tokens + ``max_tokens``), as OpenAI does, so concurrent
requests can never overshoot the window. The quota is charged with counted tokens: a
request reserves its maximum at admission and settles to what it really used; the check
and the reservation happen with no await between them, so concurrency cannot overshoot.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Optional

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter

from gateway.errors import QuotaExceeded, RateLimited
from gateway.store import ApiKey, Store


@dataclass
class Reservation:
    key_id: int
    tokens: int


class KeyLimits:
    def __init__(self, store: Store):
        self.store = store
        self.windows = MovingWindowRateLimiter(MemoryStorage())
        self.used: dict[int, int] = {}
        self.reserved: dict[int, int] = {}

    async def _retry_after(self, item: RateLimitItemPerMinute, *identifiers: str) -> str:
        stats = await self.windows.get_window_stats(item, *identifiers)
        return str(max(1, math.ceil(stats.reset_time - time.time())))

    async def admit(self, key: ApiKey, tokens: int) -> Reservation:
        """Charge one request of at most ``tokens``; RateLimited / QuotaExceeded when over."""
        if key.rpm is not None:
            item = RateLimitItemPerMinute(key.rpm)
            if not await self.windows.hit(item, "requests", str(key.id)):
                raise RateLimited(
                    f"over {key.rpm} requests per minute for this key",
                    "rate_limit_requests",
                    {"Retry-After": await self._retry_after(item, "requests", str(key.id))},
                )
        if key.tpm is not None:
            if tokens > key.tpm:
                raise RateLimited(f"this request may use {tokens} tokens, more than the key's {key.tpm} per minute; lower max_tokens", "rate_limit_tokens")
            item = RateLimitItemPerMinute(key.tpm)
            if not await self.windows.hit(item, "tokens", str(key.id), cost=tokens):
                raise RateLimited(
                    f"over {key.tpm} tokens per minute for this key", "rate_limit_tokens", {"Retry-After": await self._retry_after(item, "tokens", str(key.id))}
                )
        if key.quota_tokens is not None:
            used = self.used.setdefault(key.id, self.store.tokens_used(key.id))
            reserved = self.reserved.get(key.id, 0)
            if used + reserved + tokens > key.quota_tokens:
                raise QuotaExceeded(f"this key's quota of {key.quota_tokens} tokens is used up ({used} used, {reserved} reserved by requests in flight)")
            self.reserved[key.id] = reserved + tokens
        return Reservation(key.id, tokens if key.quota_tokens is not None else 0)

    def settle(self, reservation: Reservation, used_tokens: int) -> None:
        """The request ended having used ``used_tokens``."""
        if reservation.tokens:
            self.reserved[reservation.key_id] -= reservation.tokens
        if reservation.key_id in self.used:
            self.used[reservation.key_id] += used_tokens

    def remaining_quota(self, key: ApiKey) -> Optional[int]:
        if key.quota_tokens is None:
            return None
        return key.quota_tokens - self.used.get(key.id, self.store.tokens_used(key.id)) - self.reserved.get(key.id, 0)

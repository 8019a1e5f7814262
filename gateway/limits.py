"""Per-key limits: requests per minute, tokens per minute, and a token quota per period.

Windows are the ``limits`` library's sliding window counters over 60 s, in memory (one
gateway process owns its keys' windows) or in Redis (``--redis URL``: every worker on every
host shares them; a hit is one Lua script, so concurrent hits never overshoot). A sliding
counter weighs the previous minute's count by how much of it still overlaps the last 60 s:
two counters a key and limit, O(1) a request. (The library's moving window keeps one entry
per unit of cost, a token each for tokens per minute: at 500 requests a second its list
held ~10⁶ entries, copied on every hit, and the gateway fell behind within the minute.)
Tokens per minute are charged at admission with what the request may use (prompt tokens
+ ``max_tokens``), as OpenAI does, so concurrent requests can never overshoot the window.
The quota is charged with counted tokens: a request reserves its maximum at admission
and settles to what it really used. In memory the check and the reservation happen with
no await between them; in Redis they are one Lua script. A quota with a period refills at
each multiple of it (UTC).

Redis unreachable: every limited request fails closed with 503 ``limits_unavailable``;
the client library reconnects, and requests pass again once Redis answers.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from redis.exceptions import RedisError

import redis.asyncio

from gateway.errors import LimitsUnavailable, QuotaExceeded, KeyRateLimited
from gateway.store import ApiKey, Store

QUOTA_PREFIX = "slmnet:quota"
# KEYS[1] the key's counter for this period; ARGV: tokens, quota, seconds to keep it, the ledger's usage to start
# from ("" when not read: a counter that does not exist yet answers UNSEEDED, and the caller reads the ledger once).
RESERVE = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  if ARGV[4] == '' then return 'UNSEEDED' end
  redis.call('SET', KEYS[1], ARGV[4], 'EX', ARGV[3])
end
local used = tonumber(redis.call('GET', KEYS[1]))
if used + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return -1 - used end
return redis.call('INCRBY', KEYS[1], ARGV[1])
"""


@dataclass
class Reservation:
    key_id: int
    tokens: int
    period: float = 0.0  # the start of the quota period it was reserved in
    counter: Optional[str] = None  # the Redis counter it was reserved on
    headers: dict[str, str] = field(default_factory=dict)  # x-ratelimit-*: what the key has left


class KeyLimits:
    def __init__(self, store: Store, redis_url: Optional[str] = None):
        self.store = store
        self.redis = None
        if redis_url:
            self.redis = redis.asyncio.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2, health_check_interval=5)
            storage = RedisStorage(f"async+{redis_url}", implementation="redispy", wrap_exceptions=True, socket_timeout=2, socket_connect_timeout=2)
            self._reserve = self.redis.register_script(RESERVE)
        else:
            storage = MemoryStorage()
        self.windows = SlidingWindowCounterRateLimiter(storage)
        self.used: dict[tuple[int, float], int] = {}  # (key, period start) → counted tokens (in memory only)
        self.reserved: dict[int, int] = {}

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()

    async def admit(self, key: ApiKey, tokens: int) -> Reservation:
        """Charge one request of at most ``tokens``; KeyRateLimited, QuotaExceeded or LimitsUnavailable."""
        return await _guarded(self._admit(key, tokens))

    async def _admit(self, key: ApiKey, tokens: int) -> Reservation:
        headers: dict[str, str] = {}
        if key.rpm is not None:
            await self._window(key, "requests", key.rpm, 1, headers, f"over {key.rpm} requests per minute for this key", "rate_limit_requests")
        if key.tpm is not None:
            if tokens > key.tpm:
                raise KeyRateLimited(f"this request may use {tokens} tokens, more than the key's {key.tpm} per minute; lower max_tokens", "rate_limit_tokens")
            await self._window(key, "tokens", key.tpm, tokens, headers, f"over {key.tpm} tokens per minute for this key", "rate_limit_tokens")
        reservation = Reservation(key.id, 0, headers=headers)
        if key.quota_tokens is not None:
            await self._reserve_quota(key, tokens, reservation)
        return reservation

    async def _window(self, key: ApiKey, kind: str, limit: int, cost: int, headers: dict[str, str], message: str, code: str) -> None:
        item = RateLimitItemPerMinute(limit)
        allowed = await self.windows.hit(item, kind, str(key.id), cost=cost)
        stats = await self.windows.get_window_stats(item, kind, str(key.id))
        reset = max(0.0, stats.reset_time - time.time())
        headers.update(
            {
                f"x-ratelimit-limit-{kind}": str(limit),
                f"x-ratelimit-remaining-{kind}": str(max(0, stats.remaining)),
                f"x-ratelimit-reset-{kind}": f"{reset:.3f}s",
            }
        )
        if not allowed:
            raise KeyRateLimited(message, code, {"Retry-After": str(max(1, math.ceil(reset))), **headers})

    async def _reserve_quota(self, key: ApiKey, tokens: int, reservation: Reservation) -> None:
        now = time.time()
        start, end = key.period_start(now), key.period_end(now)
        if self.redis is not None:
            counter = f"{QUOTA_PREFIX}:{key.id}:{int(start)}"
            keep = int((end or now + 400 * 86400) - now) + 3600
            total = await self._reserve(keys=[counter], args=[tokens, key.quota_tokens, keep, ""])
            if total == b"UNSEEDED":  # the period's first request anywhere: start from the ledger (one SQLite read)
                total = await self._reserve(keys=[counter], args=[tokens, key.quota_tokens, keep, self.store.tokens_used(key.id, since=start)])
            if total < 0:
                raise QuotaExceeded(self._exhausted(key, -1 - total, tokens, end))
            reservation.tokens, reservation.counter = tokens, counter
            remaining = key.quota_tokens - total
        else:
            used = self.used.setdefault((key.id, start), self.store.tokens_used(key.id, since=start))
            reserved = self.reserved.get(key.id, 0)
            if used + reserved + tokens > key.quota_tokens:
                raise QuotaExceeded(self._exhausted(key, used + reserved, tokens, end))
            self.reserved[key.id] = reserved + tokens
            reservation.tokens, reservation.period = tokens, start
            remaining = key.quota_tokens - used - reserved - tokens
        reservation.headers["x-slmnet-quota-remaining-tokens"] = str(max(0, remaining))

    @staticmethod
    def _exhausted(key: ApiKey, used: int, tokens: int, end: Optional[float]) -> str:
        when = f"; it refills at {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(end))}" if end else ""
        return f"this key's quota of {key.quota_tokens} tokens is used up ({used} used or reserved, this request may use {tokens}){when}"

    async def settle(self, reservation: Reservation, used_tokens: int) -> None:
        """The request ended having used ``used_tokens`` (a failure to reach Redis here is logged by the caller)."""
        if reservation.counter is not None:
            await self.redis.incrby(reservation.counter, used_tokens - reservation.tokens)
            return
        if reservation.tokens:
            self.reserved[reservation.key_id] -= reservation.tokens
        period = (reservation.key_id, reservation.period)
        if period in self.used:
            self.used[period] += used_tokens

    async def remaining_quota(self, key: ApiKey) -> Optional[int]:
        """What the key may still spend in this period (None: no quota)."""
        return await _guarded(self._remaining_quota(key))

    async def _remaining_quota(self, key: ApiKey) -> Optional[int]:
        if key.quota_tokens is None:
            return None
        start = key.period_start(time.time())
        if self.redis is not None:
            value = await self.redis.get(f"{QUOTA_PREFIX}:{key.id}:{int(start)}")
            used = int(value) if value is not None else self.store.tokens_used(key.id, since=start)
            return key.quota_tokens - used
        return key.quota_tokens - self.used.get((key.id, start), self.store.tokens_used(key.id, since=start)) - self.reserved.get(key.id, 0)

    async def window_remaining(self, key: ApiKey) -> dict[str, Optional[int]]:
        """Requests and tokens left in the key's current minute (None: unlimited)."""
        return await _guarded(self._window_remaining(key))

    async def _window_remaining(self, key: ApiKey) -> dict[str, Optional[int]]:
        left: dict[str, Optional[int]] = {}
        for kind, limit in (("requests", key.rpm), ("tokens", key.tpm)):
            left[kind] = None if limit is None else (await self.windows.get_window_stats(RateLimitItemPerMinute(limit), kind, str(key.id))).remaining
        return left


async def _guarded(call):
    """A call on the limits store; LimitsUnavailable (503, fail closed) when Redis does not answer."""
    try:
        return await call
    except (StorageError, RedisError, OSError) as exc:
        raise LimitsUnavailable(f"the rate-limit store does not answer ({type(exc).__name__}); retry shortly", headers={"Retry-After": "2"}) from exc

"""Per-key limits: requests per minute, tokens per minute, and a token quota per period.

Each per-minute limit is a sliding window counter: the count of the current minute plus the
previous minute's, weighted by how much of it still overlaps the last 60 s — two counters a
key and limit, O(1) a request (the ``limits`` library's algorithm; a moving window that
kept an entry per token held ~10⁶ entries at 500 requests a second and fell behind). The
counters live in memory (one gateway process owns its keys) or in Redis (``--redis URL``:
every worker on every host shares them). A request is checked and charged against all of
its key's limits at once: in memory with no await in between, in Redis in one Lua script —
one round trip a request, whatever limits the key has, and concurrent requests never
overshoot. (The library took two round trips per limit and ~0.15 ms of the event loop per
request in memory, measured: see docs/gateway.md.) The keys of one API key share a hash
tag, so the script runs on Redis Cluster too.

Tokens per minute are charged at admission with what the request may use (prompt tokens +
``max_tokens``), as OpenAI does; where the gateway admits a prompt on its bound (a key without a
quota: its tokens are counted once the miner is asked, ``models.tokenizer.PromptTokens``), what
the bound was over the count is given back when the request settles. The quota is charged with counted tokens: a request
reserves its maximum at admission and settles to what it really used. A quota with a
period refills at each multiple of it (UTC).

Redis unreachable: every limited request fails closed with 503 ``limits_unavailable``; the
client library reconnects, and requests pass again once Redis answers.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional

import redis.asyncio
from redis.exceptions import RedisError

from gateway.errors import KeyRateLimited, LimitsUnavailable, QuotaExceeded
from gateway.store import ApiKey, Store

WINDOW_S = 60
KINDS = ("requests", "tokens")
# KEYS: requests' previous and current minute, tokens' previous and current minute, the quota's counter for this period.
# ARGV: now (s), minute index, rpm, tpm, tokens, quota, seconds to keep the quota counter, the ledger's usage to seed it
# from, commit (1: charge; 0: only read). A limit of '' is none; a seed of '' means not read yet: a quota counter that does
# not exist answers UNSEEDED and the caller reads the ledger once. Returns {refused kind or '', then per kind: remaining,
# reset s (as strings: Lua numbers reach the client as integers), then the quota's total after the charge}.
ADMIT = """
local now, minute, tokens = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[5])
local into = (now - minute * 60) / 60
local limits, costs, counts = {tonumber(ARGV[3]), tonumber(ARGV[4])}, {1, tokens}, {}
for i = 1, 2 do
  if limits[i] then
    local previous = tonumber(redis.call('GET', KEYS[2 * i - 1]) or '0')
    local current = tonumber(redis.call('GET', KEYS[2 * i]) or '0')
    counts[i] = {previous, current}
    if ARGV[9] == '1' and previous * (1 - into) + current + costs[i] > limits[i] then
      return {'refused', i, tostring(previous), tostring(current)}
    end
  end
end
local total = ''
if ARGV[6] ~= '' then
  if redis.call('EXISTS', KEYS[5]) == 0 then
    if ARGV[8] == '' then return {'unseeded'} end
    redis.call('SET', KEYS[5], ARGV[8], 'EX', ARGV[7])
  end
  local used = tonumber(redis.call('GET', KEYS[5]))
  if ARGV[9] == '1' then
    if used + tokens > tonumber(ARGV[6]) then return {'quota', tostring(used)} end
    used = redis.call('INCRBY', KEYS[5], tokens)
  end
  total = tostring(used)
end
local out = {'ok', total}
for i = 1, 2 do
  if limits[i] then
    if ARGV[9] == '1' then
      redis.call('INCRBY', KEYS[2 * i], costs[i])
      redis.call('EXPIRE', KEYS[2 * i], 150)
      counts[i][2] = counts[i][2] + costs[i]
    end
    table.insert(out, tostring(counts[i][1]))
    table.insert(out, tostring(counts[i][2]))
  else
    table.insert(out, '')
    table.insert(out, '')
  end
end
return out
"""


def window_figures(previous: float, current: float, into: float, limit: int, cost: int) -> tuple[float, float]:
    """For a sliding window ``into`` (0-1) of the way through its minute: what is left of ``limit``,
    and the seconds until a request of ``cost`` would pass (0 when it passes now)."""
    weighted = previous * (1 - into) + current
    left = limit - weighted
    if weighted + cost <= limit:
        return left, 0.0
    if current + cost <= limit:  # the previous minute's share decays enough within this minute
        return left, max(0.0, (1 - (limit - current - cost) / previous - into) * WINDOW_S)
    # only the next minutes, as this minute's count decays in turn
    return left, (1 - into) * WINDOW_S + max(0.0, 1 - (limit - cost) / current) * WINDOW_S if current else (1 - into) * WINDOW_S


@dataclass
class Reservation:
    key_id: int
    tokens: int
    period: float = 0.0  # the start of the quota period it was reserved in
    counter: Optional[str] = None  # the Redis counter it was reserved on
    minute: int = 0  # the minute its tokens per minute were charged in
    tokens_window: Optional[tuple[int, str, int]] = None  # where: the in-memory window's key
    tokens_counter: Optional[str] = None  # or the Redis counter
    headers: dict[str, str] = field(default_factory=dict)  # x-ratelimit-*: what the key has left


class KeyLimits:
    def __init__(self, store: Store, redis_url: Optional[str] = None):
        self.store = store
        self.redis = None
        if redis_url:
            self.redis = redis.asyncio.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2, health_check_interval=5)
            self._admit_script = self.redis.register_script(ADMIT)
        # (key, kind, limit) → (minute, previous count, current count), in memory; a changed limit starts a fresh window
        self.windows: dict[tuple[int, str, int], tuple[int, int, int]] = {}
        self.used: dict[tuple[int, float], int] = {}  # (key, period start) → counted tokens (in memory only)
        self.reserved: dict[int, int] = {}

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()

    async def admit(self, key: ApiKey, tokens: int) -> Reservation:
        """Charge one request of at most ``tokens``; KeyRateLimited, QuotaExceeded or LimitsUnavailable."""
        if key.tpm is not None and tokens > key.tpm:
            raise KeyRateLimited(f"this request may use {tokens} tokens, more than the key's {key.tpm} per minute; lower max_tokens", "rate_limit_tokens")
        if key.rpm is None and key.tpm is None and key.quota_tokens is None:
            return Reservation(key.id, 0)  # nothing to count: Redis is not asked
        if self.redis is not None:
            return await _guarded(self._admit_redis(key, tokens))
        return self._admit_memory(key, tokens)

    # in memory

    def _counts(self, key: ApiKey, kind: str, limit: int, minute: int) -> tuple[int, int]:
        at, previous, current = self.windows.get((key.id, kind, limit), (minute, 0, 0))
        if at == minute:
            return previous, current
        return (current if at == minute - 1 else 0), 0

    def _admit_memory(self, key: ApiKey, tokens: int) -> Reservation:
        now = time.time()
        minute, into = divmod(now, WINDOW_S)
        minute, into = int(minute), into / WINDOW_S
        charges = [(kind, limit, cost) for kind, limit, cost in (("requests", key.rpm, 1), ("tokens", key.tpm, tokens)) if limit is not None]
        headers: dict[str, str] = {}
        for kind, limit, cost in charges:  # every check before any charge
            previous, current = self._counts(key, kind, limit, minute)
            left, wait = window_figures(previous, current, into, limit, cost)
            if wait:
                self._refuse(key, kind, limit, left, wait)
        reservation = Reservation(key.id, 0, minute=minute, headers=headers)
        if key.tpm is not None:
            reservation.tokens_window = (key.id, "tokens", key.tpm)
        if key.quota_tokens is not None:
            self._reserve_quota_memory(key, tokens, reservation, now)
        for kind, limit, cost in charges:
            previous, current = self._counts(key, kind, limit, minute)
            self.windows[(key.id, kind, limit)] = (minute, previous, current + cost)
            left, _ = window_figures(previous, current + cost, into, limit, 0)
            headers.update(_window_headers(kind, limit, left, into))
        return reservation

    def _reserve_quota_memory(self, key: ApiKey, tokens: int, reservation: Reservation, now: float) -> None:
        start, end = key.period_start(now), key.period_end(now)
        quota = key.quota_tokens
        assert quota is not None  # called for a key with a quota only
        used = self.used.setdefault((key.id, start), self.store.tokens_used(key.id, since=start))
        reserved = self.reserved.get(key.id, 0)
        if used + reserved + tokens > quota:
            raise QuotaExceeded(_exhausted(key, used + reserved, tokens, end))
        self.reserved[key.id] = reserved + tokens
        reservation.tokens, reservation.period = tokens, start
        reservation.headers["x-slmnet-quota-remaining-tokens"] = str(max(0, quota - used - reserved - tokens))

    # in Redis: one script, one round trip

    def _redis_keys(self, key: ApiKey, minute: int, period: float) -> list[str]:
        tag = f"slmnet:{{{key.id}}}"  # one hash slot for all of a key's counters; a changed limit starts a fresh window
        windows = [f"{tag}:{kind}:{limit}:{m}" for kind, limit in zip(KINDS, (key.rpm, key.tpm)) for m in (minute - 1, minute)]
        return windows + [f"{tag}:quota:{int(period)}"]

    async def _run_script(self, key: ApiKey, tokens: int, commit: bool, seed: str = "") -> tuple[list, float, list[str]]:
        now = time.time()
        minute = int(now // WINDOW_S)
        start, end = key.period_start(now), key.period_end(now)
        keep = int((end or now + 400 * 86400) - now) + 3600
        keys = self._redis_keys(key, minute, start)
        limits = ["" if limit is None else limit for limit in (key.rpm, key.tpm)]
        quota = "" if key.quota_tokens is None else key.quota_tokens
        answer = await self._admit_script(keys=keys, args=[repr(now), minute, *limits, tokens, quota, keep, seed, int(commit)])
        answer = [part.decode() if isinstance(part, bytes) else part for part in answer]
        if answer[0] == "unseeded":  # the period's first request anywhere: start from the ledger (one read)
            return await self._run_script(key, tokens, commit, str(self.store.tokens_used(key.id, since=start)))
        return answer, now, keys

    async def _admit_redis(self, key: ApiKey, tokens: int) -> Reservation:
        answer, now, keys = await self._run_script(key, tokens, commit=True)
        into = (now % WINDOW_S) / WINDOW_S
        if answer[0] == "refused":
            kind, limit = (("requests", key.rpm), ("tokens", key.tpm))[int(answer[1]) - 1]
            assert limit is not None  # the script refuses on a limit the key has
            left, wait = window_figures(float(answer[2]), float(answer[3]), into, limit, 1 if kind == "requests" else tokens)
            self._refuse(key, kind, limit, left, wait)
        if answer[0] == "quota":
            raise QuotaExceeded(_exhausted(key, int(answer[1]), tokens, key.period_end(now)))
        reservation = Reservation(key.id, 0, tokens_counter=keys[3] if key.tpm is not None else None)
        if key.quota_tokens is not None:
            reservation.tokens, reservation.counter = tokens, keys[4]
            reservation.headers["x-slmnet-quota-remaining-tokens"] = str(max(0, key.quota_tokens - int(answer[1])))
        for i, (kind, limit) in enumerate((("requests", key.rpm), ("tokens", key.tpm))):
            if limit is not None:
                left, _ = window_figures(float(answer[2 + 2 * i]), float(answer[3 + 2 * i]), into, limit, 0)
                reservation.headers.update(_window_headers(kind, limit, left, into))
        return reservation

    @staticmethod
    def _refuse(key: ApiKey, kind: str, limit: int, left: float, wait: float) -> None:
        headers = _window_headers(kind, limit, left, 0.0)
        headers[f"x-ratelimit-reset-{kind}"] = f"{wait:.3f}s"
        message = f"over {limit} {kind} per minute for this key"
        raise KeyRateLimited(message, f"rate_limit_{kind}", {"Retry-After": str(max(1, math.ceil(wait))), **headers})

    async def settle(self, reservation: Reservation, used_tokens: int, overcharged: int = 0) -> None:
        """The request ended having used ``used_tokens`` (a failure to reach Redis here is logged by the caller).
        ``overcharged``: tokens its tokens per minute were charged beyond what it may use (its prompt's bound over
        its count), given back to the minute they were charged in."""
        if self.redis is not None and (reservation.counter is not None or (overcharged and reservation.tokens_counter is not None)):
            pipe = self.redis.pipeline(transaction=False)
            if reservation.counter is not None:
                pipe.incrby(reservation.counter, used_tokens - reservation.tokens)
            if overcharged and reservation.tokens_counter is not None:
                pipe.decrby(reservation.tokens_counter, overcharged)
                pipe.expire(reservation.tokens_counter, 150)
            await pipe.execute()
            return
        if overcharged and reservation.tokens_window is not None and reservation.tokens_window in self.windows:
            at, previous, current = self.windows[reservation.tokens_window]
            if at == reservation.minute:
                self.windows[reservation.tokens_window] = (at, previous, current - overcharged)
            elif at == reservation.minute + 1:  # charged in what is now the previous minute
                self.windows[reservation.tokens_window] = (at, previous - overcharged, current)
        if reservation.tokens:
            self.reserved[reservation.key_id] -= reservation.tokens
        period = (reservation.key_id, reservation.period)
        if period in self.used:
            self.used[period] += used_tokens

    async def remaining_quota(self, key: ApiKey) -> Optional[int]:
        """What the key may still spend in this period (None: no quota)."""
        if key.quota_tokens is None:
            return None
        if self.redis is not None:
            answer, _, _ = await _guarded(self._run_script(key, 0, commit=False))
            return key.quota_tokens - int(answer[1])
        start = key.period_start(time.time())
        return key.quota_tokens - self.used.get((key.id, start), self.store.tokens_used(key.id, since=start)) - self.reserved.get(key.id, 0)

    async def window_remaining(self, key: ApiKey) -> dict[str, Optional[int]]:
        """Requests and tokens left in the key's current minute (None: unlimited)."""
        now = time.time()
        minute, into = int(now // WINDOW_S), (now % WINDOW_S) / WINDOW_S
        if self.redis is not None:
            answer, _, _ = await _guarded(self._run_script(key, 0, commit=False))
            counts = {kind: (answer[2 + 2 * i], answer[3 + 2 * i]) for i, kind in enumerate(KINDS)}
        else:
            counts = {kind: self._counts(key, kind, limit, minute) for kind, limit in zip(KINDS, (key.rpm, key.tpm)) if limit is not None}
        left: dict[str, Optional[int]] = {}
        for kind, limit in zip(KINDS, (key.rpm, key.tpm)):
            left[kind] = None if limit is None else max(0, int(window_figures(float(counts[kind][0]), float(counts[kind][1]), into, limit, 0)[0]))
        return left


def _window_headers(kind: str, limit: int, left: float, into: float) -> dict[str, str]:
    """OpenAI's x-ratelimit-* for one window: the limit, what is left of it, and when this minute ends."""
    return {
        f"x-ratelimit-limit-{kind}": str(limit),
        f"x-ratelimit-remaining-{kind}": str(max(0, int(left))),
        f"x-ratelimit-reset-{kind}": f"{(1 - into) * WINDOW_S:.3f}s",
    }


def _exhausted(key: ApiKey, used: int, tokens: int, end: Optional[float]) -> str:
    when = f"; it refills at {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(end))}" if end else ""
    return f"this key's quota of {key.quota_tokens} tokens is used up ({used} used or reserved, this request may use {tokens}){when}"


async def _guarded(call):
    """A call on the limits store; LimitsUnavailable (503, fail closed) when Redis does not answer."""
    try:
        return await call
    except (RedisError, OSError) as exc:
        raise LimitsUnavailable(f"the rate-limit store does not answer ({type(exc).__name__}); retry shortly", headers={"Retry-After": "2"}) from exc

"""Per-key limits (``gateway.limits``): one sliding-window rule, in memory and in a real redis-server, on one clock."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
import redis
import redis.asyncio.connection

import gateway.limits as limits_module
from gateway.errors import KeyRateLimited, QuotaExceeded
from gateway.limits import KeyLimits, window_figures
from gateway.store import Store
from tests.harness.processes import RedisServer

MINUTE = 29_000_000 * 60.0  # some minute's first second


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(params=["memory", "redis"])
def backend(request, tmp_path, monkeypatch):
    """(KeyLimits, store, set_clock) for each place the counters live; the clock is the module's ``time.time``."""
    clock = {"now": MINUTE + 30.0}
    monkeypatch.setattr(limits_module.time, "time", lambda: clock["now"])
    url = None
    if request.param == "redis":
        url = request.getfixturevalue("redis_server").url
        redis.Redis.from_url(url).flushall()
    store = Store(tmp_path / "g.sqlite")
    return KeyLimits(store, url), store, lambda t: clock.update(now=t)


async def _outcomes(limits: KeyLimits, key, n: int, tokens: int = 1) -> list[str]:
    async def one() -> str:
        try:
            await limits.admit(key, tokens)
            return "ok"
        except KeyRateLimited as exc:
            return f"429 after {exc.headers['Retry-After']} s"
        except QuotaExceeded:
            return "402"

    # All at once: in Redis the first may load the script and come back last. Admitted first, then the rest.
    return sorted(await asyncio.gather(*(one() for _ in range(n))), key=lambda outcome: outcome != "ok")


def test_a_sliding_minute_lets_the_limit_through_and_refuses_with_the_wait_until_its_count_decays(backend):
    limits, store, clock = backend
    _, key = store.create_key("k", rpm=4)

    async def run() -> None:
        # Full: 4 more weigh 4 + 1 > 4 until 15 s into the next minute (then the 4 weigh 3): 30 + 15 s
        assert await _outcomes(limits, key, 6) == ["ok"] * 4 + ["429 after 45 s"] * 2
        clock(MINUTE + 75.0)  # a quarter into the next minute: the 4 weigh 3
        assert await _outcomes(limits, key, 2) == ["ok", "429 after 15 s"]  # 3 + 1 pass; one more, when the 4 weigh 2
        assert (await limits.window_remaining(key))["requests"] == 0
        clock(MINUTE + 200.0)  # two minutes on: nothing weighs
        assert await _outcomes(limits, key, 1) == ["ok"] and (await limits.window_remaining(key))["requests"] == 3
        changed = dataclasses.replace(key, rpm=1)  # `slmnet keys update --rpm 1`: a fresh window at the new limit
        assert await _outcomes(limits, changed, 2) == ["ok", "429 after 100 s"]  # until the one weighs nothing: the next minute whole

    asyncio.run(run())
    assert window_figures(4, 1, 0.25, 4, 1) == (0.0, 15.0)  # 4 × 0.75 + 1 = 4; one more needs 4 × (0.75 − x) ≤ 2: x = 0.25 of a minute


def test_tokens_a_minute_and_the_quota_are_checked_together_and_a_refusal_charges_neither(backend):
    limits, store, clock = backend
    _, key = store.create_key("k", rpm=100, tpm=100, quota_tokens=100)

    async def run() -> None:
        first = await limits.admit(key, 60)
        assert first.headers["x-ratelimit-remaining-tokens"] == "40" and first.headers["x-slmnet-quota-remaining-tokens"] == "40"
        # 60 + 60 > 100 a minute: refused until the 60 weigh 40 (20 s into the next minute), and not charged to the quota
        assert await _outcomes(limits, key, 1, 60) == ["429 after 50 s"]
        await limits.settle(first, 20)
        clock(MINUTE + 200.0)
        assert await _outcomes(limits, key, 1, 50) == ["ok"]  # 20 used + 50 reserved of the quota
        assert await _outcomes(limits, key, 1, 40) == ["402"]  # + 40 > 100: refused, and not charged to the minute
        assert (await limits.window_remaining(key)) == {"requests": 99, "tokens": 50} and await limits.remaining_quota(key) == 30

    asyncio.run(run())


def test_a_prompt_charged_on_its_bound_gets_the_difference_back_in_the_minute_it_was_charged(backend):
    limits, store, clock = backend
    _, key = store.create_key("k", tpm=100, quota_tokens=1000)

    async def run() -> None:
        # Admitted on its prompt's bound (70 + 10 max_tokens), counted later at 20: 50 given back when it settles.
        first = await limits.admit(key, 80)
        assert (await limits.window_remaining(key))["tokens"] == 20
        await limits.settle(first, 25, overcharged=50)
        assert (await limits.window_remaining(key))["tokens"] == 70 and await limits.remaining_quota(key) == 975
        # Settled in the next minute: given back to the minute it was charged in, now the previous one.
        second = await limits.admit(key, 60)
        clock(MINUTE + 90.0)  # half into the next minute: the previous minute's 30 + 60 weigh half
        await limits.settle(second, 10, overcharged=40)
        assert (await limits.window_remaining(key))["tokens"] == 100 - 25

    asyncio.run(run())


def test_each_admission_is_one_round_trip_to_redis_whatever_the_key_limits(redis_server, tmp_path, monkeypatch):
    store = Store(tmp_path / "g.sqlite")
    _, key = store.create_key("k", rpm=1000, tpm=10**6, quota_tokens=10**6)
    limits = KeyLimits(store, redis_server.url)
    sent = []  # every command the client puts on the wire (the real connection sends it on)
    send = redis.asyncio.connection.AbstractConnection.send_packed_command

    async def counted(self, command, check_health=True):
        sent.append(command)
        return await send(self, command, check_health)

    async def run() -> None:
        await limits.admit(key, 10)  # the first loads the script and seeds the quota
        monkeypatch.setattr(redis.asyncio.connection.AbstractConnection, "send_packed_command", counted)
        for _ in range(20):
            await limits.admit(key, 10)
        await limits.close()

    asyncio.run(run())
    assert len(sent) == 20 and all(b"EVALSHA" in b"".join(command) for command in sent)

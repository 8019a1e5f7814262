"""The gateway's routing, per-key limits and ledger, without a network."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

import pytest

from gateway.errors import KeyRateLimited, QuotaExceeded
from gateway.limits import KeyLimits
from gateway.router import BREAKER_FAILURES, MinerView, Router
from gateway.store import Store
from protocol.records import MinerVerdict

MODEL = "m"


def _router(*views: MinerView, explore: float = 0.0) -> Router:
    router = Router(explore=explore, rng=random.Random(1))
    router.update_from_chain(list(views))
    return router


def test_routing_prefers_paid_fast_reliable_miners_but_spreads_load():
    good = MinerView(1, "h1", "u1", MODEL, 8, incentive=0.6)
    slow = MinerView(2, "h2", "u2", MODEL, 8, incentive=0.3)
    shaky = MinerView(3, "h3", "u3", MODEL, 8, incentive=0.1)
    other = MinerView(4, "h4", "u4", "other-model", 8, incentive=0.9)
    router = _router(good, slow, shaky, other)
    good.success(0.1, 100.0)
    slow.success(0.8, 20.0)
    shaky.success(0.1, 100.0)
    shaky.error_rate = 0.5
    firsts = Counter(router.candidates(MODEL)[0].uid for _ in range(2000))
    assert firsts[1] > firsts[2] > 0 and firsts[1] > firsts[3] > 0 and 4 not in firsts
    assert {m.uid for m in router.candidates(MODEL)} == {1, 2, 3}  # every candidate stays in line for failover


def test_a_breaker_opens_after_repeated_failures_and_lets_one_trial_through_after_the_cooldown():
    miner = MinerView(1, "h", "u", MODEL, 4)
    router = _router(miner)
    for _ in range(BREAKER_FAILURES):
        miner.failure(now=100.0)
    assert miner.breaker(100.0) == "open" and miner.breaker(100.0 + miner.cooldown + 0.1) == "half-open"
    miner.open_until = 0.0  # the cooldown has passed
    assert router.candidates(MODEL) == [miner]
    assert miner.take(now=150.0)  # the half-open trial
    assert miner.breaker(1e12) == "open"  # one trial at a time
    miner.failure(now=200.0)
    miner.release(True)
    assert miner.cooldown > 5.0  # the failed trial doubles the wait
    miner.success(0.1, 50.0)
    assert miner.breaker(200.0) == "closed"


def test_a_trial_that_ends_without_a_verdict_frees_the_breaker():
    """A half-open trial that met a 429 or a user who hung up: neither success nor failure, and the breaker must not stay open."""
    miner = MinerView(1, "h", "u", MODEL, 4)
    for _ in range(BREAKER_FAILURES):
        miner.failure(now=100.0)
    trial = miner.take(now=100.0 + miner.cooldown + 0.1)
    assert trial and miner.breaker(1e12) == "open"
    miner.release(trial)
    assert miner.breaker(1e12) == "half-open" and miner.in_flight == 0  # the next request may try again


def test_the_router_keeps_each_requests_books_on_its_own_clock():
    now = [1000.0]
    router = Router(explore=0.0, rng=random.Random(1), clock=lambda: now[0])
    miner = MinerView(1, "h", "u", MODEL, 1)
    router.update_from_chain([miner])
    for _ in range(BREAKER_FAILURES):
        trial = router.take(miner)
        router.failed(miner)
        router.release(miner, trial)
    assert router.breaker(miner) == "open" and router.candidates(MODEL) == [] and router.take(miner) is None
    now[0] += miner.cooldown + 0.1  # the cooldown passes on the router's clock, not the machine's
    assert router.breaker(miner) == "half-open" and router.take(miner) is True
    assert router.take(miner) is None  # one slot (capacity 1), one trial
    router.succeeded(miner, 0.2, 40.0)
    router.release(miner, True)
    assert router.breaker(miner) == "closed" and miner.in_flight == 0


def test_a_full_miner_is_skipped_and_a_rejoined_hotkey_starts_fresh():
    full = MinerView(1, "h1", "u1", MODEL, 2, in_flight=2)
    free = MinerView(2, "h2", "u2", MODEL, 2)
    router = _router(full, free)
    assert [m.uid for m in router.candidates(MODEL)] == [2]
    free.success(0.2, 10.0)
    router.update_from_chain([MinerView(1, "h1", "u1", MODEL, 2), MinerView(2, "new-hotkey", "u2", MODEL, 2)])
    assert router.miners[2].ttft is None  # uid 2 changed hands: nothing of the old record carries over


def test_a_miner_is_given_the_streams_its_capacity_probe_found_not_the_ones_it_declares():
    claims = MinerView(1, "h1", "u1", MODEL, 16, incentive=0.5)
    honest = MinerView(2, "h2", "u2", MODEL, 4, incentive=0.5)
    router = _router(claims, honest)
    router.apply_verdicts([("v", MinerVerdict(uid=1, hotkey="h1", model=MODEL, standing="ok", answers=80, evidence=0.0, serves=4))])
    assert claims.serves == 4 and honest.serves == 4  # no verdict yet: what it declares
    claims.in_flight = 4
    assert [m.uid for m in router.candidates(MODEL)] == [2]  # full at what it serves, whatever it claims
    # A verdict on another model (it re-declared since) says nothing of what it serves now.
    router.apply_verdicts([("v", MinerVerdict(uid=1, hotkey="h1", model="other", standing="ok", answers=80, evidence=0.0, serves=2))])
    assert claims.serves == 16


def test_a_miner_one_validator_holds_out_stays_out_whatever_another_posts_after(tmp_path):
    """Verdicts from several validators: each replaces only its own. The one that flagged a cheat keeps it out of
    routing though another (that has not caught it) posts 'ok' later; the fewest streams any probe found are what it
    is given; a restart reads them all back."""
    cheat, honest = MinerView(1, "h1", "u1", MODEL, 8), MinerView(2, "h2", "u2", MODEL, 8)
    router = _router(cheat, honest)

    def verdict(hotkey: str, standing: str, serves: int, evidence: float = 0.0) -> MinerVerdict:
        return MinerVerdict(uid=int(hotkey[1]), hotkey=hotkey, model=MODEL, standing=standing, answers=40, evidence=evidence, serves=serves)

    store = Store(tmp_path / "g.sqlite")
    for validator, posted in (("a", [verdict("h1", "flagged", 8, 1.2), verdict("h2", "ok", 8)]), ("b", [verdict("h1", "ok", 4), verdict("h2", "ok", 6)])):
        store.save_verdicts(validator, posted)
        router.apply_verdicts((validator, v) for v in posted)
    assert [m.uid for m in router.candidates(MODEL)] == [2] and honest.serves == 6
    assert cheat.verdict is not None and cheat.verdict.evidence == 1.2
    restarted = _router(MinerView(1, "h1", "u1", MODEL, 8), MinerView(2, "h2", "u2", MODEL, 8))
    restarted.apply_verdicts(store.verdicts())
    assert [m.uid for m in restarted.candidates(MODEL)] == [2]
    # the validator that flagged it clears it (its evidence was reset by an operator's forgive): back in routing
    router.apply_verdicts([("a", verdict("h1", "ok", 8))])
    assert sorted(m.uid for m in router.candidates(MODEL)) == [1, 2]


def test_a_validator_that_stops_posting_stops_holding_a_miner_out(tmp_path):
    """A verdict counts for the gateway's --verdict-ttl after it was posted: the health loop reads those still
    in force each tick and they replace what the router held; a stale 'flagged' from a validator gone silent
    lets the miner back in (and a stale 'ok' no longer vouches for one)."""
    cheat, honest = MinerView(1, "h1", "u1", MODEL, 8), MinerView(2, "h2", "u2", MODEL, 8)
    router = _router(cheat, honest)
    store = Store(tmp_path / "g.sqlite")
    store.save_verdicts("gone", [MinerVerdict(uid=1, hotkey="h1", model=MODEL, standing="flagged", answers=40, evidence=1.2, serves=8)])
    store.save_verdicts("live", [MinerVerdict(uid=2, hotkey="h2", model=MODEL, standing="ok", answers=40, evidence=0.0, serves=8)])
    router.apply_verdicts(store.verdicts(since=time.time() - 3600), replace=True)
    assert [m.uid for m in router.candidates(MODEL)] == [2]
    store.db.execute("UPDATE validator_verdicts SET time = time - 7200 WHERE validator = 'gone'")  # two hours of silence
    router.apply_verdicts(store.verdicts(since=time.time() - 3600), replace=True)
    assert sorted(m.uid for m in router.candidates(MODEL)) == [1, 2] and cheat.verdict is None and honest.verdict is not None


def test_limits_stay_exact_under_concurrency(tmp_path):
    store = Store(tmp_path / "g.sqlite")
    _, key = store.create_key("k", rpm=5, tpm=None, quota_tokens=None)
    limits = KeyLimits(store)

    async def attempt() -> str:
        try:
            await limits.admit(key, 10)
            return "ok"
        except KeyRateLimited as exc:
            assert int(exc.headers["Retry-After"]) >= 1
            return "limited"

    async def many() -> list[str]:
        return await asyncio.gather(*(attempt() for _ in range(20)))

    assert Counter(asyncio.run(many())) == {"ok": 5, "limited": 15}


def test_quota_reserves_requests_in_flight_and_settles_to_counted_tokens(tmp_path):
    store = Store(tmp_path / "g.sqlite")
    _, key = store.create_key("k", quota_tokens=100)
    limits = KeyLimits(store)

    async def run() -> None:
        first = await limits.admit(key, 60)
        with pytest.raises(QuotaExceeded):
            await limits.admit(key, 60)  # 60 reserved + 60 > 100, though nothing is used yet
        await limits.settle(first, 20)
        second = await limits.admit(key, 60)  # 20 used + 60 ≤ 100
        await limits.settle(second, 30)
        assert await limits.remaining_quota(key) == 50

    asyncio.run(run())


def test_the_ledger_keeps_open_requests_with_their_tokens_when_the_gateway_dies(tmp_path):
    path = tmp_path / "g.sqlite"
    store = Store(path)
    _, key = store.create_key("k")
    store.open_request("r1", key.id, MODEL, prompt_tokens=12)
    store.progress("r1", 7)
    store.open_request("r2", key.id, MODEL, prompt_tokens=5)
    store.close_request("r2", "ok", 9, 1, [(1, "h1", 4), (2, "h2", 5)])
    store.close()  # the process dies here, r1 still streaming

    reopened = Store(path)
    assert reopened.mark_interrupted() == 1
    assert reopened.usage(key.id) == {"requests": 2, "prompt_tokens": 17, "completion_tokens": 16, "failovers": 1}
    assert reopened.miner_tokens() == {1: 4, 2: 5}
    assert reopened.lookup("slm-wrong") is None


def test_a_quota_period_refills_at_its_boundary_and_counts_only_its_own_requests(tmp_path):
    store = Store(tmp_path / "g.sqlite")
    _, key = store.create_key("k", quota_tokens=100, quota_period=86400)
    day = 20_000 * 86400.0
    assert key.period_start(day + 5) == day and key.period_end(day + 5) == day + 86400
    assert key.period_start(day - 1) == day - 86400  # the second before belongs to yesterday
    store.open_request("old", key.id, MODEL, 70)
    store.db.execute("UPDATE usage SET started = ? WHERE request_id = 'old'", (time.time() - 2 * 86400,))
    store.open_request("new", key.id, MODEL, 20)
    assert store.tokens_used(key.id) == 90 and store.tokens_used(key.id, since=key.period_start(time.time())) == 20

    async def remaining() -> int:
        return await KeyLimits(store).remaining_quota(key)

    assert asyncio.run(remaining()) == 80  # the tokens of two days ago do not count against today


def test_a_database_made_before_quota_periods_gains_the_columns_and_keeps_its_keys(tmp_path):
    import sqlite3

    db = sqlite3.connect(tmp_path / "old.sqlite")
    db.executescript(
        "CREATE TABLE api_keys (id INTEGER PRIMARY KEY, name TEXT NOT NULL, prefix TEXT NOT NULL, hash TEXT NOT NULL UNIQUE, "
        "created REAL NOT NULL, revoked REAL, rpm INTEGER, tpm INTEGER, quota_tokens INTEGER);"
        "INSERT INTO api_keys (name, prefix, hash, created, rpm) VALUES ('old', 'slm-old', 'abc', 1.0, 7);"
    )
    db.commit()
    db.close()
    store = Store(tmp_path / "old.sqlite")
    (old,) = store.keys()
    assert (old.name, old.rpm, old.quota_period, old.expires) == ("old", 7, None, None)
    assert store.update_key(old.id, expires=123.0, rpm=None).expires == 123.0 and store.key_by_id(old.id).rpm is None

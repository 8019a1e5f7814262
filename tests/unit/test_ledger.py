"""The gateway's ledger off the event loop (``gateway.ledger``), its counters and its key cache (``gateway.store``)."""

from __future__ import annotations

import asyncio
import sqlite3

from gateway.ledger import Ledger, coalesced
from gateway.store import Store
from tests.harness.served import served

MODEL = "slmnet/tiny-qwen2-s0"


def test_queued_writes_are_committed_in_order_and_a_reader_that_syncs_sees_them(tmp_path):
    store = Store(tmp_path / "g.sqlite")
    _, key = store.create_key("k")

    async def run() -> None:
        ledger = Ledger(store.path)
        for i in range(300):
            ledger.open_request(f"r{i}", key.id, MODEL, 10)
            ledger.progress(f"r{i}", 3)
            ledger.close_request(f"r{i}", "ok", 5, i % 2, [(1, "h1", 5)])
        ledger.count_service("h2", "refused")
        await ledger.synced()
        assert store.usage(key.id) == {"requests": 300, "prompt_tokens": 3000, "completion_tokens": 1500, "failovers": 150}
        assert store.miner_tokens() == {1: 1500} and [(r.hotkey, r.refused) for r in store.service_reports()] == [("h1", 0), ("h2", 1)]
        assert ledger.written == 901 and ledger.lost == 0
        ledger.close()

    asyncio.run(run())


def test_a_request_opened_and_closed_in_one_batch_is_one_row_and_one_still_open_keeps_its_open_row(tmp_path):
    store = Store(tmp_path / "g.sqlite")
    _, key = store.create_key("k")
    writes = [
        ("open_request", ("whole", key.id, MODEL, 10, 100.0)),
        ("open_request", ("streaming", key.id, MODEL, 7, 100.5)),
        ("progress", ("whole", 3)),
        ("progress", ("streaming", 2)),
        ("close_request", ("whole", "ok", 5, 1, [(1, "h1", 5)])),
    ]
    merged = coalesced(writes)
    assert [name for name, _ in merged] == ["open_request", "progress", "record_request"]
    with store.transaction():
        for name, args in merged:
            getattr(store, name)(*args)
    rows = store.db.execute("SELECT request_id, status, prompt_tokens, completion_tokens, failovers, started FROM usage ORDER BY request_id").fetchall()
    assert rows == [("streaming", "open", 7, 2, 0, 100.5), ("whole", "ok", 10, 5, 1, 100.0)]
    assert store.usage(key.id) == {"requests": 2, "prompt_tokens": 17, "completion_tokens": 7, "failovers": 1} and store.miner_tokens() == {1: 5}


def test_a_clean_stop_commits_everything_queued(tmp_path):
    store = Store(tmp_path / "g.sqlite")
    _, key = store.create_key("k")
    ledger = Ledger(store.path)
    for i in range(1000):
        ledger.open_request(f"r{i}", key.id, MODEL, 1)
    ledger.close()
    assert store.usage(key.id)["requests"] == 1000 and store.mark_interrupted() == 1000


def test_a_write_the_database_refuses_is_logged_and_loses_no_other(tmp_path, caplog):
    store = Store(tmp_path / "g.sqlite")
    _, key = store.create_key("k")
    ledger = Ledger(store.path)
    ledger.open_request("r1", key.id, MODEL, 4)
    ledger.open_request("r1", key.id, MODEL, 4)  # the same request id twice: the database refuses the second
    ledger.open_request("r2", key.id, MODEL, 6)
    ledger.close()
    assert store.usage(key.id) == {"requests": 2, "prompt_tokens": 10, "completion_tokens": 0, "failovers": 0}
    assert ledger.lost == 1 and "ledger write open_request('r1'" in caplog.text


def test_the_key_counters_follow_every_write_and_a_ledger_made_before_them_is_counted_once(tmp_path):
    path = tmp_path / "g.sqlite"
    store = Store(path)
    _, key = store.create_key("k")
    store.open_request("a", key.id, MODEL, 10)
    store.progress("a", 4)
    store.close_request("a", "ok", 6, 2, [])
    sums = "SELECT COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(failovers) FROM usage WHERE key_id = ?"
    assert tuple(store.usage(key.id).values()) == store.db.execute(sums, (key.id,)).fetchone() == (1, 10, 6, 2)
    # A ledger written by a gateway before the counters existed: counted when a newer one opens it, once.
    store.db.executescript("DROP TABLE key_usage; DROP TRIGGER usage_opened; DROP TRIGGER usage_counted;")
    store.db.execute(
        "INSERT INTO usage (request_id, key_id, model, status, prompt_tokens, completion_tokens, started) VALUES ('b', ?, ?, 'ok', 5, 5, 0)", (key.id, MODEL)
    )
    store.close()
    for _ in range(2):
        again = Store(path)
        assert again.usage(key.id) == {"requests": 2, "prompt_tokens": 15, "completion_tokens": 11, "failovers": 2}
        again.close()


def test_the_key_cache_sees_a_revocation_or_a_new_key_made_by_another_process_at_once(tmp_path):
    gateway = Store(tmp_path / "g.sqlite")
    plain, key = gateway.create_key("k", rpm=5)
    assert gateway.lookup(plain).revoked is None and gateway.lookup("slm-not-yet") is None
    cli = sqlite3.connect(tmp_path / "g.sqlite", isolation_level=None)  # `slmnet keys` in another process
    cli.execute("UPDATE api_keys SET revoked = 1.0, rpm = 9 WHERE id = ?", (key.id,))
    assert (gateway.lookup(plain).revoked, gateway.lookup(plain).rpm) == (1.0, 9)
    other = Store(tmp_path / "g.sqlite")
    made, _ = other.create_key("new")
    assert gateway.lookup(made).name == "new"


def test_the_retention_rule_deletes_old_finished_requests_and_samples_and_keeps_totals_open_rows_and_a_quotas_period(tmp_path):
    """``Store.prune`` (the gateway runs it hourly through the ledger's thread): rows of finished requests older
    than the retention go, with their parts per miner; a request still open stays; rows of a quota period
    still in force stay whatever their age; /v1/key's totals and the validators' service reports do not move."""
    from protocol.records import AnswerRecord

    day = 86400.0
    store = Store(tmp_path / "g.sqlite")
    _, plain = store.create_key("plain")
    _, monthly = store.create_key("monthly", quota_tokens=10_000, quota_period=int(30 * day))
    now = 1000 * 30 * day + 20 * day  # 20 days into a 30-day quota period
    for request_id, key, age, status in (
        ("old", plain, 100, "ok"),
        ("old-open", plain, 100, "open"),
        ("recent", plain, 1, "ok"),
        ("this-period", monthly, 10, "ok"),
        ("last-period", monthly, 25, "ok"),
    ):
        store.record_request(request_id, key.id, MODEL, 10, now - age * day, status, 5, 0, [(1, "h1", 5)])
    store.record_sample(1, "h1", MODEL, {"messages": []}, AnswerRecord(text="x"))
    store.record_sample(1, "h1", MODEL, {"messages": []}, AnswerRecord(text="y"))
    store.db.execute("UPDATE organic_samples SET time = ? WHERE id = 1", (now - 8 * day,))
    store.db.execute("UPDATE organic_samples SET time = ? WHERE id = 2", (now - 1 * day,))
    totals, reports = (store.usage(plain.id), store.usage(monthly.id)), store.service_reports()
    period_tokens = store.tokens_used(monthly.id, monthly.period_start(now))

    assert store.prune(now, keep_s=7 * day, samples_keep_s=7 * day) == (2, 1)  # "old" and "last-period"; sample 1
    kept = {row[0] for row in store.db.execute("SELECT request_id FROM usage")}
    assert kept == {"old-open", "recent", "this-period"}
    assert {row[0] for row in store.db.execute("SELECT request_id FROM usage_by_miner")} == kept  # the pruned requests' parts went with them
    assert (store.usage(plain.id), store.usage(monthly.id)) == totals and store.service_reports() == reports
    assert store.tokens_used(monthly.id, monthly.period_start(now)) == period_tokens
    assert [s.answer.text for s in store.samples_after(0, 10)[0]] == ["y"]
    assert store.prune(now, keep_s=7 * day, samples_keep_s=7 * day) == (0, 0)


async def test_a_request_no_miner_could_take_leaves_a_closed_row_not_an_open_one(tmp_path):
    """The open row is queued at the handler's first wait on a miner, or at its end when no miner could take the
    request (every miner full, no wait for a slot): either way the ledger holds one 'failed' row, counted once in the
    key's totals, and nothing left 'open' for a restart to call interrupted."""
    import aiohttp
    from bittensor.sp_core import Keypair

    from gateway.router import MinerView, Router
    from gateway.server import create_app
    from gateway.settings import GatewaySettings
    from gateway.state import GatewayState
    from models.tiny import build_tiny
    from models.tokenizer import ModelTokenizer

    build_tiny(tmp_path / "tiny", seed=0)
    store = Store(tmp_path / "g.sqlite")
    plaintext, key = store.create_key("k")
    full = MinerView(1, "h1", "http://127.0.0.1:9", MODEL, capacity=1, incentive=1.0)
    router = Router(explore=0.0)
    router.update_from_chain([full])
    full.healthy, full.in_flight = True, 1  # at its capacity: the router offers it to no request
    state = GatewayState(
        store=store,
        router=router,
        tokenizers={MODEL: ModelTokenizer(tmp_path / "tiny")},
        keypair=Keypair.create_from_uri("//G"),
        settings=GatewaySettings(busy_wait=0.0),
    )
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    async with served(create_app(state)) as url, aiohttp.ClientSession() as session:
        async with session.post(url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {plaintext}"}) as response:
            assert response.status == 503, await response.text()
        await state.ledger.synced()
    assert store.db.execute("SELECT status FROM usage").fetchall() == [("failed",)] and store.usage(key.id)["requests"] == 1

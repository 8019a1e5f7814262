"""The validator's SQLite state: a round is saved whole or not at all, and survives a restart."""

from __future__ import annotations

import contextlib
import sqlite3
from typing import AsyncIterator

import aiohttp
import pytest
from bittensor.wallets import Keypair

from gateway.router import Router
from gateway.server import create_app
from gateway.state import GatewayState
from gateway.store import Store as GatewayStore
from protocol.records import AnswerRecord, RoundSummary, ServiceCounts
from scoring.aggregate import Standing
from scoring.evidence import Evidence
from tests.harness.served import served
from validator.organic import SignedOutbox
from validator.store import RESULT_COLUMNS, Store


def _summary(round_index: int) -> RoundSummary:
    return RoundSummary(round=round_index, block=100, seed="42", miners=1, challenges=1)


ROW = dict(zip(RESULT_COLUMNS, (0, 1, "5Miner", "arithmetic", "ok", 1, None, 1.0, 0.05, 120.0, 24, 1, None, None, None, 0.0, 0.25)))


def test_standings_and_rounds_survive_a_restart(tmp_path):
    store = Store(tmp_path / "v.sqlite")
    store.save_round(0, 42, 100, 1.0, _summary(0), {"5Miner": (1, Standing(0.3, 1, -1))}, [ROW])
    store.save_weights(101, {1: 1.0})
    store.close()
    again = Store(tmp_path / "v.sqlite")
    assert again.standings() == {"5Miner": (1, Standing(0.3, 1, -1))}
    assert again.last_round() == 0 and again.last_weights() == (101, {1: 1.0})


def test_a_round_that_fails_half_way_changes_nothing(tmp_path):
    store = Store(tmp_path / "v.sqlite")
    store.save_round(0, 42, 100, 1.0, _summary(0), {"5Miner": (1, Standing(0.3, 1, -1))}, [ROW])
    with pytest.raises(sqlite3.ProgrammingError):
        # The round row goes in first; a malformed result row then fails the write.
        store.save_round(1, 43, 101, 2.0, _summary(1), {"5Miner": (1, Standing(0.9, 2, -1))}, [ROW, {column: ROW[column] for column in RESULT_COLUMNS[:5]}])
    assert store.standings()["5Miner"] == (1, Standing(0.3, 1, -1))
    assert store.last_round() == 0
    assert store.db.execute("SELECT COUNT(*) FROM results").fetchone() == (1,)


def test_buffering_evidence_is_kept_per_miner_across_rounds_and_restarts(tmp_path):
    store = Store(tmp_path / "v.sqlite")
    for round_index, flags in enumerate(([1, 0], [0, None, 0])):
        rows = [{**ROW, "streamed": flag} for flag in flags] + [{**ROW, "uid": 2, "hotkey": "5Other"}]
        store.save_round(round_index, 42, 100, 1.0, _summary(round_index), {}, [{**row, "round": round_index} for row in rows])
    store.close()
    again = Store(tmp_path / "v.sqlite")
    assert again.recent_streamed(24) == {"5Miner": [True, False, False, False], "5Other": [True, True]}
    assert again.recent_streamed(2)["5Miner"] == [False, False]  # the newest two, oldest first


def test_pooled_evidence_survives_a_restart_and_old_state_gains_the_new_columns(tmp_path):
    from scoring.evidence import Evidence

    path = tmp_path / "v.sqlite"
    old = sqlite3.connect(path)  # a results table from before the evidence and replay columns
    old.execute(
        "CREATE TABLE results (round INTEGER NOT NULL, uid INTEGER NOT NULL, hotkey TEXT NOT NULL, family TEXT NOT NULL, outcome TEXT NOT NULL, "
        "passed INTEGER, reasons TEXT, correct REAL, ttft REAL, tokens_per_s REAL, tokens INTEGER)"
    )
    old.close()
    store = Store(path)
    flagged = Evidence("model-a", cusum=30.5, answers=12, tokens=400, mismatches=90, reported=380, exceedances=70, flagged_round=2, flagged_block=90)
    store.save_round(0, 42, 100, 1.0, _summary(0), {}, [ROW], {"5Miner": flagged, "5Other": Evidence("model-b", cusum=1.5, answers=3)})
    store.close()
    again = Store(path)
    assert again.evidence() == {"5Miner": flagged, "5Other": Evidence("model-b", cusum=1.5, answers=3)}
    summary, results = again.round_record(0)
    assert results[0]["hotkey"] == "5Miner" and results[0]["answer"] is None and again.round_record(1) is None


def _target(uid: int):
    from validator.records import Target

    return Target(uid, f"5Hot{uid}", "", "m", 4)


@contextlib.asynccontextmanager
async def _gateway(path) -> AsyncIterator[tuple[SignedOutbox, GatewayStore]]:
    """A real gateway app (its hand-over routes over signed HTTP) on a loopback port, and a validator's outbox reading it
    (the gateway trusts its own hotkey, which this validator shares, as a local subnet's does)."""
    keypair = Keypair.create_from_uri("//Gateway")
    store = GatewayStore(path)
    async with served(create_app(GatewayState(store=store, router=Router(), tokenizers={}, keypair=keypair))) as url, aiohttp.ClientSession() as session:
        yield SignedOutbox(session, url, keypair), store


async def test_the_validator_reads_a_gateways_outbox_once_and_keeps_its_place_across_restarts(tmp_path):
    from validator.organic import verify_samples

    request = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    answer = AnswerRecord(prompt_token_ids=[1, 2], token_ids=[5, 6], logprobs=[-0.1], text="ab", finish_reason="length", completion_tokens=2)
    async with _gateway(tmp_path / "gateway.sqlite") as (outbox, gateway):
        for uid in (3, 4):
            gateway.record_sample(uid, f"5Hot{uid}", "m", request, answer)
        samples, last = await outbox.after(0, 10)
        assert [(s.uid, s.request, s.answer) for s in samples] == [(3, request, answer), (4, request, answer)] and last == 2

        store = Store(tmp_path / "v.sqlite")
        targets = {t.hotkey: t for t in map(_target, (3, 4, 5))}
        assert await verify_samples(outbox, store, {}, targets) == 0  # no reference for the model here: nothing held for or against
        store.close()
        gateway.record_sample(5, "5Hot5", "m", request, answer)
        again = Store(tmp_path / "v.sqlite")
        assert [s.uid for s in (await outbox.after(again.organic_cursor(outbox.source), 10))[0]] == [5]  # a restart neither skips nor repeats one


def test_organic_verdicts_taken_by_a_round_that_was_never_stored_are_taken_again(tmp_path):
    from scoring.fidelity import AnswerStats
    from validator.records import UserVerdict

    store = Store(tmp_path / "v.sqlite")
    verdict = UserVerdict(3, "5Hot3", False, "cut answer", AnswerStats(40, 3, 40, 9))
    store.record_organic("gateway.sqlite", 1, [(1.0, "m", verdict)])
    store.save_round(0, 42, 100, 1.0, _summary(0), {}, [ROW])
    assert store.take_organic(1) == [verdict]  # with its evidence, for the pooled test
    store.close()  # the validator died before round 1 was stored (crash point organic-taken)
    again = Store(tmp_path / "v.sqlite")
    round_index = again.last_round() + 1
    assert round_index == 1 and again.take_organic(round_index) == [verdict]
    again.save_round(1, 43, 101, 2.0, _summary(1), {}, [])
    assert again.take_organic(2) == []  # folded into a stored round: never counted twice
    assert again.organic_taken(1) == [verdict]


async def test_an_outbox_row_that_is_not_an_answer_record_is_skipped_and_read_past(tmp_path):
    from validator.organic import verify_samples

    request = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    async with _gateway(tmp_path / "gateway.sqlite") as (outbox, gateway):
        gateway.record_sample(3, "5Hot3", "m", request, AnswerRecord(token_ids=[5], text="a", finish_reason="length"))
        gateway.db.execute("UPDATE organic_samples SET answer = ? WHERE uid = 3", ('{"token_ids": "not ids"}',))
        gateway.record_sample(4, "5Hot4", "m", request, AnswerRecord(token_ids=[6], text="b", finish_reason="length"))
        samples, last = await outbox.after(0, 10)
        assert [s.uid for s in samples] == [4] and last == 2
        store = Store(tmp_path / "v.sqlite")
        assert await verify_samples(outbox, store, {}, {}) == 0
        assert await outbox.after(store.organic_cursor(outbox.source), 10) == ([], 2)  # read past, not stuck on it


def test_a_round_stored_when_a_validator_read_one_gateway_reads_back():
    old = {"round": 3, "block": 1, "seed": "1", "miners": 1, "challenges": 1, "service": {"1": [2, 1, 0]}, "service_seen": {"5Hot": [9, 1, 0]}}
    summary = RoundSummary.model_validate(old)
    assert summary.service == {1: ServiceCounts(served=2, refused=1)} and summary.service_seen == {"": {"5Hot": ServiceCounts(served=9, refused=1)}}


def test_over_the_rounds_budget_the_least_judged_miners_are_verified_first():
    from protocol.records import AnswerRecord, OrganicSample
    from validator.organic import budgeted

    answer = AnswerRecord(token_ids=[5], text="a", finish_reason="length")
    samples = [OrganicSample(id=i, uid=i % 3, hotkey=f"5Hot{i % 3}", model="m", request={}, answer=answer) for i in range(1, 31)]
    chosen = budgeted(samples, {"5Hot0": 500, "5Hot1": 0, "5Hot2": 40}, 5)
    assert [s.hotkey for s in chosen].count("5Hot1") == 2 and [s.hotkey for s in chosen].count("5Hot0") == 1  # turns, fewest judged first
    assert [s.id for s in chosen] == sorted(s.id for s in chosen) and len(budgeted(samples, {}, 100)) == 30


def test_a_flag_holds_whatever_the_miner_declares_until_forgiven(tmp_path):
    from scoring.evidence import FLAG_HOLD_BLOCKS
    from validator.records import Target
    from validator.round_score import current_evidence

    store = Store(tmp_path / "v.sqlite")
    flagged = Evidence("m", cusum=30.0, answers=40, flagged_round=0, flagged_block=1000)
    store.save_round(0, 42, 1000, 1.0, _summary(0), {}, [ROW], {"5Miner": flagged})
    redeclared = Target(1, "5Miner", "", "other-model", 9, "bfloat16", "new declaration")
    assert current_evidence(store.evidence(), redeclared, block=1000 + FLAG_HOLD_BLOCKS - 1) is not None
    assert current_evidence(store.evidence(), redeclared, block=1000 + FLAG_HOLD_BLOCKS - 1).flagged  # a new model, dtype, capacity: still held
    assert not current_evidence(store.evidence(), redeclared, block=1000 + FLAG_HOLD_BLOCKS).flagged  # the hold has run out
    same = Target(1, "5Miner", "", "m", 4, "float32", "any")
    carried = Evidence("m", cusum=7.0, answers=90)
    store.save_round(1, 43, 1001, 2.0, _summary(1), {}, [], {"5Miner": carried})
    assert current_evidence(store.evidence(), Target(1, "5Miner", "", "m", 8, "bfloat16", "capacity 8")) == carried  # evidence outlives a re-declaration
    assert store.forgive("5Miner", "operator: false alarm") == carried and store.forgiven() == []  # pending until a round starts
    assert store.apply_forgiveness(2) == ["5Miner"] and store.apply_forgiveness(3) == []
    assert current_evidence(store.evidence(), same, block=1002) == Evidence("m") and store.forgiven() == [("5Miner", 2)]


def test_slmnet_validator_forgive_records_a_pending_forgiveness_and_refuses_without_a_reason(tmp_path):
    import subprocess
    import sys

    store = Store(tmp_path / "validator.sqlite")
    store.save_round(0, 42, 1000, 1.0, _summary(0), {}, [ROW], {"5Miner": Evidence("m", cusum=30.0, answers=40, flagged_round=0, flagged_block=1000)})
    store.close()
    forgive = [sys.executable, "-m", "neurons.cli", "validator", "forgive", "--netuid", "1", "--state-dir", str(tmp_path), "--hotkey", "5Miner"]
    refused = subprocess.run(forgive, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "--reason" in refused.stderr
    done = subprocess.run([*forgive, "--reason", "false alarm: engine upgrade"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "forgiven" in done.stdout and "flagged since block 1000" in done.stderr
    again = Store(tmp_path / "validator.sqlite")
    assert again.apply_forgiveness(1) == ["5Miner"] and "5Miner" not in again.evidence()


def _graded(round_index: int, hotkey: str, model: str, family: str, correct) -> dict:
    return {**ROW, "round": round_index, "hotkey": hotkey, "family": family, "correct": correct, "request": f'{{"model": "{model}", "seed": 1}}'}


def test_graded_answers_are_counted_by_miner_model_and_family_and_old_state_is_counted_once(tmp_path):
    path = tmp_path / "v.sqlite"
    store = Store(path)
    store.save_round(0, 42, 100, 1.0, _summary(0), {}, [
        _graded(0, "5A", "m1", "arithmetic", 1.0), _graded(0, "5A", "m1", "arithmetic", 0.0), _graded(0, "5A", "m1", "uppercase", 1.0),
        _graded(0, "5A", "m1", "open_prompt", None),  # nothing to grade (or its verification failed): not counted
        _graded(0, "5B", "m2", "arithmetic", 0.0),
    ])  # fmt: skip
    store.save_round(1, 43, 101, 2.0, _summary(1), {}, [_graded(1, "5A", "m1", "arithmetic", 1.0), _graded(1, "5A", "m2", "arithmetic", 1.0)])
    quality = {key: {s.family: (s.answers, s.correct) for s in scores} for key, scores in store.quality().items()}
    assert quality == {("5A", "m1"): {"arithmetic": (3, 2), "uppercase": (1, 1)}, ("5A", "m2"): {"arithmetic": (1, 1)}, ("5B", "m2"): {"arithmetic": (1, 0)}}
    # state from before the quality table: its stored rounds are counted when it is first opened, and only then
    store.db.execute("DROP TABLE quality")
    store.close()
    for _ in range(2):
        again = Store(path)
        assert {key: {s.family: (s.answers, s.correct) for s in scores} for key, scores in again.quality().items()} == quality
        again.close()

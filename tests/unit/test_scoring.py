"""scoring/: speed from arrival times, round scores, standings over rounds, weights."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring.aggregate import AggregationParams, Outcome, RoundStats, Standing, round_scores, summarize, update
from scoring.latency import StreamTiming, measure, quantile
from scoring.weights import to_weights

PARAMS = AggregationParams(alpha=0.1, min_rounds=8, ban_rounds=24)


def _stream(ttft: float, per_token: float, tokens: int) -> StreamTiming:
    arrivals = tuple(ttft + i * per_token for i in range(tokens))
    return StreamTiming(sent=0.0, arrivals=arrivals, tokens=(1,) * tokens)


def test_a_buffered_burst_gains_no_throughput_and_is_flagged():
    honest = measure(_stream(ttft=0.1, per_token=0.01, tokens=50))
    # The same tokens held back and sent at once when the last one was ready.
    burst = measure(StreamTiming(sent=0.0, arrivals=(honest.total,), tokens=(50,)))
    assert honest.streamed and not burst.streamed
    assert burst.tokens_per_s == pytest.approx(honest.tokens_per_s)
    assert burst.ttft > 5 * honest.ttft
    assert measure(StreamTiming(sent=0.0, arrivals=(0.5,), tokens=(4,))).streamed  # short answers can arrive in one read
    # A whole answer written at the end still arrives in a few network reads: a burst, however the reads fall.
    assert not measure(StreamTiming(sent=0.0, arrivals=(1.600, 1.612, 1.631), tokens=(90, 90, 56))).streamed
    # An honest stream behind a long queue: 25 tokens in the last 0.36 s of 3.16 s still streamed.
    assert measure(StreamTiming(sent=0.0, arrivals=tuple(2.8 + 0.015 * i for i in range(25)), tokens=(1,) * 25)).streamed


def _burst(tokens: int = 40) -> Outcome:
    return Outcome("ok", fidelity_passed=True, correct=None, speed=measure(StreamTiming(sent=0.0, arrivals=(1.0,), tokens=(tokens,))))


STREAMED = Outcome("ok", fidelity_passed=True, correct=None, speed=measure(_stream(0.1, 0.01, 40)))


def test_a_miner_that_buffers_scores_zero_and_starts_again_but_an_occasional_burst_does_not():
    buffering = summarize([_burst()] * 8)
    assert buffering.buffered and not buffering.fidelity_failed  # scores 0 for the round, no ban
    assert round_scores({1: buffering, 2: summarize([STREAMED] * 8)}) == {1: 0.0, 2: pytest.approx(1.0)}
    earned = Standing(ema=0.6, rounds=12)
    assert update(earned, 0.0, False, 13, PARAMS, reset=True).effective(PARAMS, 14) == 0.0  # what it earned while buffering is gone
    assert update(earned, 0.0, False, 13, PARAMS, reset=True).banned_until < 14  # but it is not banned
    assert not summarize([_burst()] + [STREAMED] * 9).buffered  # an honest engine that coalesced once under load
    assert not summarize([_burst(tokens=20)] * 8).buffered  # short answers honestly arrive in one read


def test_buffering_is_judged_across_rounds_not_per_round():
    # Four long answers this round are too few to judge alone; with the earlier rounds' bursts they are not.
    assert not summarize([_burst()] * 4).buffered
    assert summarize([_burst()] * 4, history=[False] * 2).buffered
    # A burst-heavy round after a long record of streaming is not buffering.
    assert not summarize([_burst()] * 3, history=[True] * 21).buffered
    # Only the last 24 judged answers count: a miner that starts buffering is caught within a bounded number of answers.
    assert summarize([_burst()] * 22, history=[True] * 200).buffered


def test_unverified_answers_count_neither_for_nor_against():
    unverified = Outcome("unverified")
    assert round_scores({1: summarize([unverified] * 4)}) == {}  # no score: the standing stays as it was
    mixed = summarize([unverified] * 3 + [STREAMED])
    assert (mixed.sent, mixed.answered) == (1, 1)
    assert round_scores({1: mixed}) == {1: pytest.approx(1.0)}  # the one answer counted: the round's best speed, all answered


def test_timings_that_cannot_happen_are_refused():
    with pytest.raises(ValueError):
        StreamTiming(sent=1.0, arrivals=(0.5,), tokens=(1,))
    with pytest.raises(ValueError):
        StreamTiming(sent=0.0, arrivals=(0.2, 0.1), tokens=(1, 1))
    with pytest.raises(ValueError):
        measure(StreamTiming(sent=0.0, arrivals=(), tokens=()))


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=50), st.floats(0, 1))
def test_quantile_lies_between_min_and_max_and_grows_with_q(values, q):
    assert min(values) <= quantile(values, q) <= max(values)
    assert quantile(values, q) <= quantile(values, min(1.0, q + 0.1)) + 1e-6


def _ok(ttft: float, per_token: float, correct: float | None = 1.0) -> Outcome:
    return Outcome("ok", fidelity_passed=True, correct=correct, speed=measure(_stream(ttft, per_token, 20)))


def test_faster_reliable_miners_score_higher_a_cheat_scores_zero_and_right_answers_buy_nothing():
    stats = {
        0: summarize([_ok(0.1, 0.01)] * 4),  # fast, correct
        1: summarize([_ok(0.4, 0.04)] * 4),  # slow
        2: summarize([_ok(0.1, 0.01)] * 2 + [Outcome("timeout"), Outcome("error")]),  # flaky
        3: summarize([_ok(0.1, 0.01, correct=0.0)] * 4),  # as fast, every graded answer wrong (the same model, unlucky draws)
        4: summarize([_ok(0.05, 0.005)] * 3 + [Outcome("ok", fidelity_passed=False, speed=measure(_stream(0.05, 0.005, 20)))]),
    }
    scores = round_scores(stats)
    assert scores[0] == pytest.approx(1.0)
    assert scores[0] > scores[1] and scores[0] > scores[2]
    # A steerer forcing the graded answer (or a lucky honest miner) earns what an unlucky one does: correctness is the model's record, not pay.
    assert scores[3] == scores[0] and (stats[0].quality, stats[3].quality) == (1.0, 0.0)
    assert scores[4] == 0.0
    assert scores[2] == pytest.approx(0.25)  # half answered: reliability² = 1/4
    assert round_scores({7: RoundStats(0, 3, False, None, None, None)}) == {7: 0.0}


def test_speed_is_compared_among_miners_of_the_same_model_so_a_bigger_model_is_not_sunk_by_a_tiny_one():
    big = summarize([_ok(0.5, 0.05, correct=0.6)] * 4)  # a real model: slower, often right
    tiny = summarize([_ok(0.02, 0.002, correct=0.0)] * 4)  # a tiny model: fast, never right
    by_model = round_scores({1: big, 2: tiny}, {1: "smollm2", 2: "tiny"})
    assert by_model == {1: pytest.approx(1.0), 2: pytest.approx(1.0)}  # each the best of its model; the model list's reward splits them
    assert round_scores({1: big, 2: tiny})[1] < by_model[1]  # compared across models, the big one's speed would sink it


def test_a_fidelity_failure_zeroes_the_miner_for_the_ban_period():
    standing = Standing()
    for r in range(20):
        standing = update(standing, 0.9, False, r, PARAMS)
    assert standing.effective(PARAMS, 20) > 0.5
    standing = update(standing, 0.9, True, 20, PARAMS)
    for r in range(21, 20 + PARAMS.ban_rounds):
        standing = update(standing, 1.0, False, r, PARAMS)
        assert standing.effective(PARAMS, r) == 0.0
    standing = update(standing, 1.0, False, 20 + PARAMS.ban_rounds, PARAMS)
    assert 0 < standing.effective(PARAMS, 20 + PARAMS.ban_rounds) < 0.1  # earns trust again from zero


@given(st.lists(st.floats(0, 1), min_size=1, max_size=60))
def test_standing_stays_in_unit_interval_and_new_miners_ramp_up(scores):
    standing = Standing()
    for r, score in enumerate(scores):
        before = standing.effective(PARAMS, r)
        standing = update(standing, score, False, r, PARAMS)
        assert 0.0 <= standing.effective(PARAMS, r + 1) <= 1.0
        if score == 1.0:
            assert standing.effective(PARAMS, r + 1) >= before
    assert standing.effective(PARAMS, len(scores)) <= max(scores) + 1e-9


@settings(max_examples=200)
@given(st.dictionaries(st.integers(0, 255), st.floats(0, 1), min_size=1, max_size=64), st.floats(0.05, 1))
def test_weights_sum_to_one_respect_the_limit_and_keep_the_order(effective, max_weight):
    weights = to_weights(effective, max_weight=max_weight)
    if not weights:
        assert sum(s**4 for s in effective.values()) == 0  # nothing positive to set
        return
    assert math.isclose(sum(weights.values()), 1.0, rel_tol=1e-6)
    assert set(weights) == {uid for uid, s in effective.items() if s**4 > 0}  # a score whose 4th power underflows earns nothing
    if len(weights) * max_weight > 1:
        assert max(weights.values()) <= max_weight + 1e-6
    ranked = sorted(weights, key=lambda uid: effective[uid])
    assert all(weights[a] <= weights[b] + 1e-9 for a, b in zip(ranked, ranked[1:]))


def test_sharpening_widens_the_gap_between_good_and_best():
    weights = to_weights({0: 1.0, 1: 0.5})
    assert weights[0] / weights[1] == pytest.approx(16.0)
    assert to_weights({0: 0.0, 1: 0.0}) == {}
    with pytest.raises(ValueError):
        to_weights({0: 1.5})


def test_capacity_is_paid_concavely_and_two_hotkeys_splitting_an_engine_earn_under_a_fifth_more():
    # Beside an honest miner with the same engine: one hotkey delivering 100 tokens/s, or two each
    # delivering their half (probed at the same moment, they share it).
    split = to_weights({0: 0.8, 1: 0.8, 2: 0.8}, {0: 100.0, 1: 50.0, 2: 50.0})
    assert 1.0 < (split[1] + split[2]) / split[0] <= 1.2
    # Ten times the capacity earns more, but far from ten times as much.
    big = to_weights({0: 0.8, 1: 0.8}, {0: 1000.0, 1: 100.0})
    assert 5 < big[0] / big[1] < 7
    # No measured capacity, no pay; standing still ranks miners of equal capacity.
    assert to_weights({0: 1.0, 1: 0.5}, {0: 0.0, 1: 80.0}) == {1: 1.0}
    assert to_weights({0: 1.0, 1: 0.5}, {0: 80.0, 1: 80.0})[0] == pytest.approx(16 / 17)


def test_delivered_capacity_is_what_verified_streams_got_while_the_probe_kept_them_in_flight():
    def answered(sent_at: float, seconds: float, tokens: int = 100, passed: bool = True) -> Outcome:
        timing = _stream(0.0, seconds / tokens, tokens + 1)  # the first chunk at 0: no TTFT, for round figures
        timing = StreamTiming(0.0, timing.arrivals[1:], timing.tokens[1:])
        chunks = timing.relative()
        return Outcome("ok", fidelity_passed=passed, speed=measure(timing), chunks=chunks, sent_at=sent_at, done_at=sent_at + seconds)

    def probe(streams: int, answer) -> list[Outcome]:
        """Twice ``streams`` requests, ``streams`` at once, each sent as one ends: ``answer(sent_at)``."""
        done, outcomes = [], []
        for j in range(2 * streams):
            outcome = answer(done[j - streams] if j >= streams else 0.0, j)
            done.append(outcome.done_at)
            outcomes.append(outcome)
        return outcomes

    # An engine of 100 tokens/s serving 4 streams at 25 tokens/s each, answers of 100 and 50 tokens.
    batched = probe(4, lambda at, j: answered(at, 4.0 if j % 2 else 2.0, 100 if j % 2 else 50))
    assert summarize(batched).delivered == pytest.approx(100.0, rel=0.02)
    # The same engine declared as 1 stream (a hotkey of its quarter): the tail is left out, so it is not measured
    # higher per stream than the hotkey declaring 4.
    single = probe(1, lambda at, j: answered(at, 4.0 if j % 2 else 2.0, 100 if j % 2 else 50))
    assert summarize(single).delivered == pytest.approx(25.0, rel=0.02)
    # An engine of 100 tokens/s taking its 4 streams one after another (each at 100 tokens/s, the others queued): no more.
    queue: list[float] = [0.0]

    def serial(at: float, j: int) -> Outcome:
        start = max(at, queue[0])
        queue[0] = start + 1.0
        outcome = answered(start, 1.0)
        return replace(outcome, sent_at=at, done_at=start + 1.0, chunks=tuple((start - at + t, n) for t, n in outcome.chunks))

    assert summarize(probe(4, serial)).delivered == pytest.approx(100.0, rel=0.02)
    # Admitting one stream (at 100 tokens/s) and refusing the rest: a refusal ends at once, its slot is
    # refilled, and the window closes on what the one stream delivered: its rate, no more.
    refusing = [answered(0.0, 1.0), *[Outcome("refused", sent_at=0.01 * j, done_at=0.01 * (j + 1)) for j in range(7)]]
    assert summarize(refusing).delivered == pytest.approx(100.0)
    # A failed answer delivers nothing; unverified answers count neither way; nothing timed, nothing known.
    failing = probe(4, lambda at, j: answered(at, 4.0, passed=j % 4 != 0))
    assert summarize(failing).delivered == pytest.approx(75.0, rel=0.02)
    assert summarize([*failing, Outcome("unverified", sent_at=0.0, done_at=30.0)]).delivered == summarize(failing).delivered
    assert summarize([Outcome("unverified")]).delivered is None
    # The standing keeps an EMA of it, starting at its first measure.
    first = update(Standing(), 0.5, False, 0, PARAMS, delivered=100.0)
    assert first.capacity == 100.0
    assert update(first, 0.5, False, 1, PARAMS, delivered=50.0).capacity == pytest.approx(95.0)
    assert update(first, 0.5, False, 1, PARAMS).capacity == 100.0  # nothing timed: as it was

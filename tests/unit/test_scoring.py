"""scoring/: speed from arrival times, round scores, standings over rounds, weights."""

from __future__ import annotations

import math

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
    assert round_scores({1: mixed}) == {1: pytest.approx(0.5 + 0.5 * 1.0)}  # open prompt only: speed stands in for quality


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


def test_faster_correct_reliable_miners_score_higher_and_a_cheat_scores_zero():
    stats = {
        0: summarize([_ok(0.1, 0.01)] * 4),  # fast, correct
        1: summarize([_ok(0.4, 0.04)] * 4),  # slow
        2: summarize([_ok(0.1, 0.01)] * 2 + [Outcome("timeout"), Outcome("error")]),  # flaky
        3: summarize([_ok(0.1, 0.01, correct=0.0)] * 4),  # fast, wrong answers (a weaker model)
        4: summarize([_ok(0.05, 0.005)] * 3 + [Outcome("ok", fidelity_passed=False, speed=measure(_stream(0.05, 0.005, 20)))]),
    }
    scores = round_scores(stats)
    assert scores[0] == pytest.approx(1.0)
    assert scores[0] > scores[1] and scores[0] > scores[2] and scores[0] > scores[3]
    assert scores[4] == 0.0
    assert scores[2] == pytest.approx(0.25)  # half answered: reliability² = 1/4
    assert round_scores({7: RoundStats(0, 3, False, None, None, None)}) == {7: 0.0}


def test_speed_is_compared_among_miners_of_the_same_model_so_a_better_model_wins_on_quality():
    big = summarize([_ok(0.5, 0.05, correct=0.6)] * 4)  # a real model: slower, often right
    tiny = summarize([_ok(0.02, 0.002, correct=0.0)] * 4)  # a tiny model: fast, never right
    by_model = round_scores({1: big, 2: tiny}, {1: "smollm2", 2: "tiny"})
    assert by_model[1] > by_model[2]
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
    assert set(weights) == {uid for uid, s in effective.items() if s > 0}
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

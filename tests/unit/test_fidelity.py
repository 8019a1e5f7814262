"""scoring/fidelity against crafted cheats: each must fail for its own reason, honest drift must pass."""

from __future__ import annotations

import math
import random

from hypothesis import given
from hypothesis import strategies as st

from scoring.fidelity import ResponseEvidence, TokenEvidence, check

EOS = 2


def _distribution(rng: random.Random, vocab: int = 50, peak: float = 3.0) -> dict[int, float]:
    logits = {t: rng.gauss(0, 1) + (peak if t == 0 else 0) for t in range(vocab)}
    top = max(logits.values())
    log_z = top + math.log(sum(math.exp(v - top) for v in logits.values()))
    return {t: v - log_z for t, v in logits.items()}


def _with_end(dist: dict[int, float], p_end: float) -> dict[int, float]:
    """``dist`` with the end token's probability set to ``p_end``, the rest scaled to 1 − p_end."""
    rest = math.log(1 - p_end) - math.log(sum(math.exp(lp) for t, lp in dist.items() if t != EOS))
    return {t: (math.log(p_end) if t == EOS else lp + rest) for t, lp in dist.items()}


def _token(dist: dict[int, float], token: int, reported_shift: float | None = 0.0, k: int = 20) -> TokenEvidence:
    ranked = sorted(dist, key=dist.get, reverse=True)
    top = {t: dist[t] for t in ranked[:k]}
    reported = None if reported_shift is None else dist[token] + reported_shift
    return TokenEvidence(token, dist[token], ranked.index(token) + 1, top, reported)


def _greedy_response(n: int = 24, seed: int = 0, drift: float = 0.0) -> list[TokenEvidence]:
    rng = random.Random(seed)
    tokens = []
    for _ in range(n):
        dist = _distribution(rng)
        tokens.append(_token(dist, max(dist, key=dist.get), rng.uniform(-drift, drift)))
    return tokens


def _evidence(tokens, **overrides) -> ResponseEvidence:
    values = {"tokens": tokens, "finish_reason": "length", "max_tokens": len(tokens), "reported_completion_tokens": len(tokens), "temperature": 0.0}
    return ResponseEvidence(**{**values, **overrides})


def test_an_honest_greedy_response_with_precision_drift_passes():
    verdict = check(_evidence(_greedy_response(drift=0.03)))
    assert verdict.passed, verdict.reasons
    assert verdict.max_abs_dlp <= 0.03


def test_a_greedy_token_far_below_the_top_fails_and_a_close_flip_does_not():
    tokens = _greedy_response()
    dist = {0: math.log(0.9), 1: math.log(0.1 - 1e-4), 2: math.log(1e-4)}  # token 2 is 9.1 nats below the top
    verdict = check(_evidence(tokens[:10] + [_token(dist, 2)] + tokens[11:]))
    assert not verdict.passed and verdict.implausible_tokens == 1
    assert "first at position 10" in verdict.reasons[0]
    close = {0: math.log(0.55), 1: math.log(0.45)}  # 0.2 nats: drift can swap these; evidence, not a failure
    assert check(_evidence(tokens[:10] + [_token(close, 1)] + tokens[11:])).passed


def test_a_reported_logprob_far_from_the_reference_fails_and_a_small_offset_does_not():
    far = [TokenEvidence(t.token_id, t.reference_logprob, t.reference_rank, t.reference_top, t.reference_logprob - 4.0) for t in _greedy_response()]
    verdict = check(_evidence(far))
    assert not verdict.passed and any("nats from the reference" in r for r in verdict.reasons)
    offset = [TokenEvidence(t.token_id, t.reference_logprob, t.reference_rank, t.reference_top, t.reference_logprob - 0.12) for t in _greedy_response(n=40)]
    assert check(_evidence(offset)).passed  # pooled per miner instead: tests/unit/test_evidence.py


def test_dishonest_counts_and_early_cuts_fail():
    tokens = _greedy_response(n=10)
    assert "usage reports 30" in check(_evidence(tokens, reported_completion_tokens=30)).reasons[0]
    assert "cut short" in check(_evidence(tokens, max_tokens=64)).reasons[0]
    assert check(_evidence(tokens, finish_reason="stop", max_tokens=64)).passed


def test_missing_logprobs_fail_when_they_were_asked_for():
    tokens = [TokenEvidence(t.token_id, t.reference_logprob, t.reference_rank, t.reference_top, None) for t in _greedy_response()]
    assert not check(_evidence(tokens)).passed
    assert check(_evidence(tokens, logprobs_requested=False)).passed


def test_ending_where_the_model_would_not_and_skipping_a_certain_end_both_fail():
    rng = random.Random(3)
    tokens = _greedy_response(n=8)
    # Early end: EOS chosen where the model gives it almost no chance.
    dist = _distribution(rng)
    dist[EOS] = -25.0
    early = tokens + [_token(dist, EOS)]
    assert not check(_evidence(early, finish_reason="stop", max_tokens=64, reported_completion_tokens=9, temperature=0.8)).passed
    # Skipped end: EOS is all but certain, the miner went on with another token.
    certain = {t: -30.0 for t in range(50)}
    certain[EOS] = -1e-9
    skipped = tokens + [_token(certain, 7)] + _greedy_response(n=4, seed=5)
    assert not check(_evidence(skipped, temperature=0.8)).passed


ENDS = frozenset({EOS})


def test_with_known_end_tokens_cutting_running_past_and_ending_early_each_fail():
    tokens = _greedy_response(n=10)
    cut = check(_evidence(tokens, finish_reason="stop", max_tokens=64, end_token_ids=ENDS))
    assert not cut.passed and "without an end-of-text token: cut short" in cut.reasons[0]

    dist = _distribution(random.Random(4))
    dist[EOS] = max(dist.values()) + 1.0  # the model's clear first choice
    past = tokens[:5] + [_token(dist, EOS)] + tokens[5:]
    verdict = check(_evidence(past, end_token_ids=ENDS))
    assert not verdict.passed and "ran past the end" in verdict.reasons[0]

    unlikely = _distribution(random.Random(5))
    unlikely[EOS] = -30.0
    early = check(
        _evidence(tokens + [_token(unlikely, EOS)], finish_reason="stop", max_tokens=64, reported_completion_tokens=11, temperature=0.7, end_token_ids=ENDS)
    )
    assert not early.passed and any("ended early" in r for r in early.reasons)
    # The same ending without the model's end ids, or when the caller asked for ignore_eos, is not judged; ended on a
    # stop of the caller's own, a stop without an end token is no cut, but every other end check still holds.
    assert check(_evidence(tokens, finish_reason="stop", max_tokens=64, end_token_ids=ENDS, end_checks=False)).passed
    assert check(_evidence(tokens, finish_reason="stop", max_tokens=64, end_token_ids=ENDS, own_stop=True)).passed
    assert any("cut short" in r for r in check(_evidence(tokens, finish_reason="stop", max_tokens=64, end_token_ids=ENDS)).reasons)
    assert not check(_evidence(past, end_token_ids=ENDS, own_stop=True)).passed
    early_with_stops = _evidence(
        tokens + [_token(unlikely, EOS)],
        finish_reason="stop",
        max_tokens=64,
        reported_completion_tokens=11,
        temperature=0.7,
        end_token_ids=ENDS,
        own_stop=True,
    )
    assert any("ended early" in r for r in check(early_with_stops).reasons)


def test_going_on_through_many_likely_ends_fails_and_through_a_few_passes():
    rng = random.Random(6)

    def likely_end_token() -> TokenEvidence:
        dist = _with_end(_distribution(rng, peak=0), 0.5)  # an honest sampler goes on with p = 1/2 here
        return _token(dist, 0)

    few = [likely_end_token() for _ in range(8)]  # p(go on) = 2^-8 ≈ 4e-3: honest luck
    many = [likely_end_token() for _ in range(24)]  # 2^-24 ≈ 6e-8: not a sampler
    assert check(_evidence(few, temperature=1.0, end_token_ids=ENDS)).passed
    verdict = check(_evidence(many, temperature=1.0, end_token_ids=ENDS))
    assert not verdict.passed and "continues this far" in verdict.reasons[0]


@given(st.integers(0, 10_000), st.sampled_from([0.3, 0.7, 1.0, 1.3]), st.sampled_from([1.0, 0.95, 0.9]))
def test_honestly_sampled_responses_pass(seed, temperature, top_p):
    rng = random.Random(seed)
    tokens = []
    finish = "length"
    for _ in range(32):
        dist = _distribution(rng, peak=rng.uniform(0, 6))
        if rng.random() < 0.3:  # positions where ending is likely
            dist = _with_end(dist, rng.uniform(0.05, 0.6))
        scaled = {t: lp / temperature for t, lp in dist.items()}
        ranked = sorted(scaled, key=scaled.get, reverse=True)
        top = max(scaled.values())
        weights = [math.exp(scaled[t] - top) for t in ranked]
        total, kept, mass = sum(weights), [], 0.0
        for t, w in zip(ranked, weights):  # the nucleus, as the sampler builds it
            kept.append((t, w))
            mass += w / total
            if mass >= top_p:
                break
        choice = rng.choices([t for t, _ in kept], weights=[w for _, w in kept])[0]
        tokens.append(_token(dist, choice, rng.uniform(-0.02, 0.02)))
        if choice == EOS:
            finish = "stop"
            break
    verdict = check(_evidence(tokens, temperature=temperature, top_p=top_p, finish_reason=finish, max_tokens=32, end_token_ids=ENDS))
    assert verdict.passed, verdict.reasons

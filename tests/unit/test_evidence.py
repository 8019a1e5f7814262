"""scoring/evidence: per-answer counts and the per-miner sequential test, on crafted answers."""

from __future__ import annotations

import itertools
import math
import random

from protocol.sampling import gumbel
from scoring.evidence import TOLERANCES, Evidence, SequentialParams, _bernoulli_llr, answer_stats, log_likelihood_ratio
from scoring.fidelity import AnswerStats, ResponseEvidence, TokenEvidence, check

VOCAB = 40
BF16 = TOLERANCES["bfloat16"]


def _distribution(rng: random.Random) -> dict[int, float]:
    logits = {t: rng.gauss(0, 1.5) for t in range(VOCAB)}
    top = max(logits.values())
    log_z = top + math.log(sum(math.exp(v - top) for v in logits.values()))
    return {t: v - log_z for t, v in logits.items()}


def _token(dist: dict[int, float], token: int, reported: float | None, k: int = 5) -> TokenEvidence:
    ranked = sorted(dist, key=dist.get, reverse=True)
    return TokenEvidence(token, dist[token], ranked.index(token) + 1, {t: dist[t] for t in ranked[:k]}, reported)


def _answer(seed: int, temperature: float = 0.7, n: int = 48, sampler: str = "gumbel", drift: float = 0.0, offset: float = 0.0) -> ResponseEvidence:
    """An answer sampled from random reference distributions: by the verifiable sampler over the
    miner's drifted logprobs ('gumbel'), or with some other randomness ('own')."""
    rng = random.Random(seed)
    tokens = []
    for position in range(n):
        dist = _distribution(rng)
        mine = {t: lp + rng.uniform(-drift, drift) for t, lp in dist.items()}
        if temperature == 0:
            chosen = max(mine, key=mine.get)
        elif sampler == "gumbel":
            chosen = max(mine, key=lambda t: mine[t] / temperature + gumbel(seed, position, t))
        else:
            chosen = max(mine, key=lambda t: mine[t] / temperature - math.log(-math.log(rng.random())))
        tokens.append(_token(dist, chosen, mine[chosen] + offset))
    return ResponseEvidence(tokens, "length", n, n, temperature, seed=seed, sampler_checkable=True)


def test_the_verifiable_sampler_matches_the_reference_and_other_randomness_does_not():
    honest = [answer_stats(_answer(seed), BF16) for seed in range(20)]
    assert sum(s.mismatches for s in honest) == 0 and sum(s.tokens for s in honest) > 500
    cheat = [answer_stats(_answer(seed, sampler="own"), BF16) for seed in range(20)]
    assert sum(s.mismatches for s in cheat) / sum(s.tokens for s in cheat) > 0.3


def test_drift_below_the_margin_never_mismatches_and_greedy_flips_are_counted_not_failed():
    drifted = [answer_stats(_answer(seed, drift=BF16.margin / 2 * 0.99), BF16) for seed in range(20)]
    assert sum(s.mismatches for s in drifted) == 0
    flips = _answer(3, temperature=0.0, drift=1.5)  # far more drift than any honest stack: the greedy choices differ
    assert check(flips).passed
    assert answer_stats(flips, BF16).mismatches > 0


def test_an_unseeded_or_unmodelled_request_has_no_choices_to_judge():
    answer = _answer(1, sampler="own")
    unseeded = ResponseEvidence(answer.tokens, "length", 48, 48, 0.7, seed=None)
    assert answer_stats(unseeded, BF16).tokens == 0
    assert answer_stats(unseeded, BF16).reported > 0  # the logprobs still count


def test_honest_bernoulli_evidence_is_an_e_value():
    """Under the honest rate, E[exp(llr)] = 1 exactly: the bound on false positives rests on it."""
    p0, factor, n = 0.05, 4.0, 12
    expected = sum(math.comb(n, k) * p0**k * (1 - p0) ** (n - k) * math.exp(_bernoulli_llr(k, n, p0, factor)) for k in range(n + 1))
    assert abs(expected - 1.0) < 1e-12


def test_an_honest_bf16_miner_is_never_flagged_and_an_offset_cheat_is_flagged_within_a_round():
    params = SequentialParams()
    honest = Evidence("m")
    for seed in range(600):
        honest = honest.add(answer_stats(_answer(seed, drift=0.05), BF16), BF16, round_index=seed // 6)
        assert honest.credit() == 1.0 and honest.challenges(4) == 4  # never paid less, never sampled more, at any answer
    assert not honest.flagged and honest.answers == 600
    cheat = Evidence("m")
    for seed in itertools.count():
        cheat = cheat.add(answer_stats(_answer(seed, offset=0.12), BF16), BF16, round_index=seed // 6)
        if cheat.flagged:
            break
    assert seed < 6 and cheat.cusum >= params.threshold


def test_one_answer_never_flags_alone_and_a_flag_stays():
    params = SequentialParams()
    worst = AnswerStats(tokens=1000, mismatches=1000, reported=1000, exceedances=1000)
    assert log_likelihood_ratio(worst, BF16, params) == params.threshold / 2
    evidence = Evidence("d").add(worst, BF16, 0).add(worst, BF16, 0)
    assert evidence.flagged_round == 0
    clean = AnswerStats(tokens=1000, reported=1000)
    assert evidence.add(clean, BF16, 5).flagged_round == 0  # it holds (for FLAG_HOLD_BLOCKS, whatever is declared: validator.round_score)


def test_pay_falls_and_sampling_rises_with_the_evidence_before_the_flag():
    h = SequentialParams().threshold
    levels = [Evidence("m", cusum=x * h) for x in (0.0, 0.25, 0.375, 0.5, 0.9)]
    assert [round(e.credit(), 9) for e in levels] == [1.0, 1.0, 0.5, 0.0, 0.0]
    assert [e.challenges(4) for e in levels] == [4, 4, 5, 7, 11]  # up to 3 × 4 at the flag
    flagged = Evidence("m", cusum=0.1, flagged_round=3)
    assert flagged.credit() == 0.0 and flagged.level() == 1.0


def test_the_threshold_bounds_false_positives_per_day():
    params = SequentialParams(false_positive_rate=1e-6, answers_per_day=50_000)
    assert params.answers_per_day * math.exp(-params.threshold) <= 1e-6 * (1 + 1e-9)

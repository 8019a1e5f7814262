"""Evidence per miner: does this miner serve the declared model, judged over all its answers?

A single answer cannot tell honest precision drift from a quantized model: honest stacks
drift as far as int8 does on some answers (``docs/calibration.md``, Run 2). Each
verified answer — a challenge's or a user's, sampled by the gateway — therefore yields
counts, and a sequential test per (miner, model) pools them across answers and rounds,
whatever else the miner re-declares (dtype, capacity): starting afresh is not for sale.

**Per answer** (``answer_stats``):

- *choice mismatches*, judged at every position: the miner's token is not the one the
  declared model picks. Where the reference is near certain, an honest sampler never
  misses its pick by more than the margin, so a mismatch there is as telling as anywhere
  (a miner steering a confident position toward a token it prefers pays for it, and so does
  one that ends where the seeded sampler goes on: the end token is a choice like any other).
  Pooled, not judged alone: an honest bf16 stack misses the margin at ~0.08% of positions,
  far above the ~1e-9 a single-answer failure allows. At
  temperature 0 another token beats it by more than the margin in the reference's own
  logprobs (a greedy flip). Above 0, for a seeded request sampled through the verifiable
  sampler (``protocol.sampling``), another token the filters surely keep has a higher
  ``logprob / T + gumbel(seed, position, token)`` by more than ``margin / T``: the miner did
  not take the Gumbel-max winner. An honest miner mismatches only where drift reorders two
  tokens by more than the margin; a miner that samples on its own, at another temperature,
  or from another model mismatches at a large share of positions.
- *logprob exceedances*, over the informative positions (the reference's top token has
  probability below ``INFORMATIVE_BELOW``: where a token is near certain, every stack
  reports about the same): a reported logprob further than the declared dtype's tolerance
  from the reference's.

**Per miner** (``Evidence.add``): each statistic is a Bernoulli stream with an honest rate of
at most ``p0`` (the dtype's calibrated ceiling) against a cheat's ``p1 = factor × p0``;
an answer's log-likelihood ratio, capped at half the threshold, feeds a one-sided CUSUM
(Page's test). Under the honest rate, exp(llr) has mean ≤ 1 per answer, so by Ville's
inequality applied at every restart the chance that an honest miner ever reaches the
threshold ``h`` within ``n`` answers is at most ``n · e^-h``: ``h = ln(answers_per_day /
false_positive_rate)`` bounds it per day (1e-6 per honest miner per day by default). A
miner that reaches it is flagged: weight 0 and out of the gateway's routing for
``FLAG_HOLD_BLOCKS``, whatever it commits meanwhile (a new model, dtype or capacity does
not lift it); ``slmnet validator forgive`` lifts one on purpose.

**No pay on credit.** Before the flag, pay follows the evidence so far: a round's score is
multiplied by ``credit(e)``, where ``e`` is the CUSUM over the threshold — 1 up to
``CREDIT_FROM`` (0.25), falling linearly to 0 at ``CREDIT_TO`` (0.5) — and the miner gets
up to ``EXTRA_CHALLENGES`` times more challenges as ``e`` rises (``extra_challenges``), so a
suspect is judged sooner. An honest miner's CUSUM is a reflected walk with negative drift
whose every step has E[exp(llr)] ≤ 1, so P(e ≥ x) ≤ exp(−x·h) at any moment: it stands at
or above 0.25 with probability ≤ exp(−0.25 × 24.6) = 0.2%, and its expected pay falls by at
most that (measured: 0 of the honest miners' rounds in ``docs/calibration.md`` were cut). A
cheat whose evidence rises is paid less and less before its flag, not in full.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Mapping, Optional

from protocol.sampling import gumbel
from scoring.fidelity import AnswerStats, ResponseEvidence, TokenEvidence, tempered_bounds

FLAG_HOLD_BLOCKS = 50_400  # a flag holds 7 days (12 s blocks) whatever the miner commits
CREDIT_FROM, CREDIT_TO = 0.25, 0.5  # evidence (CUSUM / threshold) where pay starts to fall, and where it is 0
EXTRA_CHALLENGES = 2.0  # a suspect's challenges grow to (1 + this) × the base as its evidence nears the flag
INFORMATIVE_BELOW = 0.99  # a position informs when the reference's top token is less likely than this
NUCLEUS_MARGIN = 0.05  # a competitor counts only when the mass above it is below top_p by this much


@dataclass(frozen=True)
class Tolerance:
    """What honest serving in one dtype looks like against the fp32 reference (``docs/calibration.md``)."""

    logprob: float  # |reported − reference| above this is an exceedance
    margin: float  # nats: a choice mismatches only when another token wins by more (÷ T when sampled)
    exceed_rate: float  # ceiling of the honest exceedance rate per informative token (p0)
    mismatch_rate: float  # ceiling of the honest mismatch rate per informative position (p0)


# Measured on SmolLM2 (docs/calibration.md): honest bf16 exceeds 0.1 nats at 0.9% (vLLM) and
# 2.4% (transformers) of informative tokens, int8 at 17%; honest bf16 mismatches at ≤ 0.08%
# of informative positions. Each dtype's ceilings are its own, at about 2.5× (exceedances)
# and 5× (mismatches) what its honest stacks measured, so no declaration buys slack its
# stack does not need. float16 has not been measured apart from bfloat16 (its mantissa is
# longer, so its drift is no larger): it keeps bfloat16's ceilings until it is.
BFLOAT16 = Tolerance(logprob=0.1, margin=0.2, exceed_rate=0.06, mismatch_rate=0.004)
TOLERANCES: Mapping[str, Tolerance] = {
    "float32": Tolerance(logprob=0.02, margin=0.05, exceed_rate=0.002, mismatch_rate=0.002),
    "bfloat16": BFLOAT16,
    "float16": BFLOAT16,  # one object, not a copy that could drift: fp16 gets its own once measured
}


def _kept_for_sure(token: TokenEvidence, temperature: float, top_p: float) -> list[int]:
    """Known tokens other than the chosen one that the top_p filter keeps even if the reference's
    unseen tail were as large as it can be (``tempered_bounds`` gives upper bounds, so the mass above a
    token is overestimated)."""
    tempered = tempered_bounds(token, temperature)
    kept = []
    for tid, p in tempered.items():
        above = sum(q for other, q in tempered.items() if q > p)
        if tid != token.token_id and (top_p >= 1.0 or above < top_p - NUCLEUS_MARGIN):
            kept.append(tid)
    return kept


def choice_mismatch(token: TokenEvidence, position: int, evidence: ResponseEvidence, margin: float) -> bool:
    """Whether another token the declared model surely picks over this one beats it by more than ``margin``."""
    known = {**token.reference_top, token.token_id: token.reference_logprob}
    if evidence.temperature == 0:
        best = max(known.values())
        return token.reference_rank > 1 and best - token.reference_logprob > margin
    temperature, seed = evidence.temperature, evidence.seed
    if seed is None:  # unseeded sampling: no winner to recompute (answer_stats judges no choice then)
        return False
    mine = token.reference_logprob / temperature + gumbel(seed, position, token.token_id)
    rivals = _kept_for_sure(token, temperature, evidence.top_p)
    best = max((known[tid] / temperature + gumbel(seed, position, tid) for tid in rivals), default=-math.inf)
    return best - mine > margin / temperature


def answer_stats(evidence: ResponseEvidence, tolerance: Tolerance) -> AnswerStats:
    """Choices judged at every position where they are checkable (greedy, or seeded through the
    verifiable sampler); logprobs over the informative positions."""
    positions = mismatches = reported = exceedances = 0
    choices = evidence.temperature == 0 or evidence.seed is not None and evidence.sampler_checkable
    for position, token in enumerate(evidence.tokens):
        if choices:
            positions += 1
            mismatches += choice_mismatch(token, position, evidence, tolerance.margin)
        top = max([*token.reference_top.values(), token.reference_logprob])
        delta = token.reported_delta()
        # (a grammar's range wider than the tolerance says nothing of drift: such a position is not counted)
        if math.exp(top + token.offset[1]) < INFORMATIVE_BELOW and delta is not None and token.offset[1] - token.offset[0] <= tolerance.logprob:
            reported += 1
            exceedances += delta > tolerance.logprob
    return AnswerStats(positions, mismatches, reported, exceedances)


@dataclass(frozen=True)
class SequentialParams:
    factor: float = 2.5  # the cheat's rate the test is tuned to detect: p1 = factor × p0 (at most 0.5)
    false_positive_rate: float = 1e-6  # per honest miner per day
    answers_per_day: float = 50_000  # what one miner answers a validator in a day, challenges and organic (30 s rounds × 8 challenges ≈ 23k)

    @property
    def threshold(self) -> float:
        return math.log(self.answers_per_day / self.false_positive_rate)


def _bernoulli_llr(events: int, trials: int, p0: float, factor: float) -> float:
    p1 = min(0.5, factor * p0)
    if trials == 0 or p1 <= p0:
        return 0.0
    return events * math.log(p1 / p0) + (trials - events) * math.log((1 - p1) / (1 - p0))


def log_likelihood_ratio(stats: AnswerStats, tolerance: Tolerance, params: SequentialParams = SequentialParams()) -> float:
    """One answer's evidence that its miner cheats (positive) or serves honestly (negative), capped at half the threshold."""
    llr = _bernoulli_llr(stats.mismatches, stats.tokens, tolerance.mismatch_rate, params.factor)
    llr += _bernoulli_llr(stats.exceedances, stats.reported, tolerance.exceed_rate, params.factor)
    return min(llr, params.threshold / 2)


@dataclass(frozen=True)
class Evidence:
    """A miner's pooled evidence about one model it serves."""

    model: str
    cusum: float = 0.0
    answers: int = 0
    tokens: int = 0
    mismatches: int = 0
    reported: int = 0
    exceedances: int = 0
    flagged_round: Optional[int] = None  # the round it passed the threshold
    flagged_block: Optional[int] = None  # the head block then: the flag holds FLAG_HOLD_BLOCKS after it

    @property
    def flagged(self) -> bool:
        return self.flagged_round is not None

    def level(self, params: Optional[SequentialParams] = None) -> float:
        """The evidence against the miner, 0 (none) to 1 (flagged)."""
        return 1.0 if self.flagged else min(1.0, self.cusum / (params or SequentialParams()).threshold)

    def credit(self, params: Optional[SequentialParams] = None) -> float:
        """The share of a round's score the miner is paid while its evidence stands where it does."""
        return min(1.0, max(0.0, (CREDIT_TO - self.level(params)) / (CREDIT_TO - CREDIT_FROM)))

    def challenges(self, base: int, params: Optional[SequentialParams] = None) -> int:
        """Challenges for a round: ``base``, more as the evidence rises past ``CREDIT_FROM``."""
        rise = max(0.0, self.level(params) - CREDIT_FROM) / (1.0 - CREDIT_FROM)
        return base + round(base * EXTRA_CHALLENGES * rise)

    def held(self, block: Optional[int]) -> bool:
        """Whether the flag still holds at ``block`` (a flag from before flags had a block holds until forgiven)."""
        return self.flagged and (block is None or self.flagged_block is None or block - self.flagged_block < FLAG_HOLD_BLOCKS)

    def add(
        self, stats: AnswerStats, tolerance: Tolerance, round_index: int, params: SequentialParams = SequentialParams(), block: Optional[int] = None
    ) -> "Evidence":
        cusum = max(0.0, self.cusum + log_likelihood_ratio(stats, tolerance, params))
        newly = not self.flagged and cusum >= params.threshold
        flagged = round_index if newly else self.flagged_round
        return replace(
            self,
            cusum=cusum,
            answers=self.answers + 1,
            tokens=self.tokens + stats.tokens,
            mismatches=self.mismatches + stats.mismatches,
            reported=self.reported + stats.reported,
            exceedances=self.exceedances + stats.exceedances,
            flagged_round=flagged,
            flagged_block=block if newly else self.flagged_block,
        )

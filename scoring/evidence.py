"""Evidence per miner: does this miner serve the declared model, judged over all its answers?

A single answer cannot tell honest precision drift from a quantized model: honest stacks
drift as far as int8 does on some answers (``shared/facts/verification.md``). Each
verified answer — a challenge's or a user's, sampled by the gateway — therefore yields
counts, and a sequential test per (miner, model) pools them across answers and rounds,
whatever else the miner re-declares (dtype, capacity): starting afresh is not for sale.

**Per answer** (``answer_stats``), over its informative positions (the reference's top
token has probability below ``INFORMATIVE_BELOW``: where a token is near certain, every
sampler agrees and nothing is learned):

- *choice mismatches*: the miner's token is not the one the declared model picks. At
  temperature 0 another token beats it by more than the margin in the reference's own
  logprobs (a greedy flip). Above 0, for a seeded request sampled through the verifiable
  sampler (``protocol.sampling``), another token the filters surely keep has a higher
  ``logprob / T + gumbel(seed, position, token)`` by more than ``margin / T``: the miner did
  not take the Gumbel-max winner. An honest miner mismatches only where drift reorders two
  tokens by more than the margin; a miner that samples on its own, at another temperature,
  or from another model mismatches at a large share of positions.
- *logprob exceedances*: a reported logprob further than the declared dtype's tolerance
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
not lift it); ``slmnet validator forgive HOTKEY`` lifts one on purpose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Mapping, Optional

from protocol.sampling import gumbel
from scoring.fidelity import AnswerStats, ResponseEvidence, TokenEvidence, tempered_bounds

FLAG_HOLD_BLOCKS = 50_400  # a flag holds 7 days (12 s blocks) whatever the miner commits
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
# 2.4% (transformers) of informative tokens, int8 at 17%; honest bf16 mismatches at ≤ 0.08%.
HALF = Tolerance(logprob=0.1, margin=0.2, exceed_rate=0.06, mismatch_rate=0.01)
TOLERANCES: Mapping[str, Tolerance] = {
    "float32": Tolerance(logprob=0.02, margin=0.05, exceed_rate=0.002, mismatch_rate=0.002),
    "bfloat16": HALF,
    "float16": HALF,
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
    temperature = evidence.temperature
    mine = token.reference_logprob / temperature + gumbel(evidence.seed, position, token.token_id)
    rivals = _kept_for_sure(token, temperature, evidence.top_p)
    best = max((known[tid] / temperature + gumbel(evidence.seed, position, tid) for tid in rivals), default=-math.inf)
    return best - mine > margin / temperature


def answer_stats(evidence: ResponseEvidence, tolerance: Tolerance) -> AnswerStats:
    """Counts over the answer's informative positions; choices are judged only where they are
    checkable (greedy, or seeded through the verifiable sampler)."""
    tokens = mismatches = reported = exceedances = 0
    choices = evidence.temperature == 0 or evidence.seed is not None and evidence.sampler_checkable
    for position, token in enumerate(evidence.tokens):
        top = max([*token.reference_top.values(), token.reference_logprob])
        if math.exp(top) >= INFORMATIVE_BELOW:
            continue
        tokens += 1
        if choices and choice_mismatch(token, position, evidence, tolerance.margin):
            mismatches += 1
        if token.reported_logprob is not None:
            reported += 1
            exceedances += abs(token.reported_logprob - token.reference_logprob) > tolerance.logprob
    return AnswerStats(tokens if choices else 0, mismatches, reported, exceedances)


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

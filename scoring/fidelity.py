"""Fidelity: did this completion come from the declared model, sampled as asked?

The validator re-scores the miner's completion tokens with the reference engine in one
teacher-forced pass and hands the evidence here. Logprobs are natural logs of the
model's raw (pre-temperature) distribution, on both sides. A response fails when:

- its token counts are dishonest (usage differs from the tokens returned; ``length``
  with fewer than ``max_tokens`` tokens: cut short);
- a chosen token is impossible for the sampler: at temperature 0 another token beats it by
  more than ``greedy_hard_margin`` nats (no precision drift moves a logprob that far);
  above 0, even an upper bound of its probability under the temperature is below
  ``min_token_prob``, or it lies outside the ``top_p`` nucleus (checked only when the
  reference's top-K covers the distribution). End-of-text is a token like any other, so a
  skipped end (continuing where the model ends with near certainty) and an early end
  (stopping where it would not) both fail here;
- a reported logprob is more than ``max_abs_dlp`` from the reference's, or logprobs were
  asked for and are missing;
- it ended where the model would not, or did not end where it would (when the model's
  end-of-text ids are known and the request did not ask for ``ignore_eos``): ``stop``
  without an end token (cut short) unless it ended on the request's own stop (a stop
  string its ids spell right after the text shown, a stop id), an end token before the last position,
  an end token the model gives less than ``min_end_prob``, or continuing through positions
  where a lower bound of the end token's probability makes not stopping less likely than
  ``min_continue_prob`` (run past end-of-text).

Each of these an honest sampler produces with probability below about 1e-9. What honest
drift does produce now and then — a greedy flip between two close tokens, reported logprobs
a few hundredths of a nat off, a sampled token that is not the Gumbel-max winner of the
reference — is evidence, counted per answer (``AnswerStats``) and pooled per miner across
answers and rounds by a sequential test (``scoring.evidence``).

Whether an answer was streamed is judged per round, not per answer (``scoring.aggregate``):
an honest engine under load sometimes coalesces a whole short answer into one chunk.

Calibration: ``docs/calibration.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence


@dataclass(frozen=True)
class TokenEvidence:
    token_id: int
    reference_logprob: float  # log p_ref(token | prefix)
    reference_rank: int  # 1 = the reference's most likely token
    reference_top: Mapping[int, float]  # the reference's top-K token ids → logprobs at this position
    reported_logprob: Optional[float] = None  # what the miner reported, if it did
    # Under a grammar the engine reports the logprob over the tokens the grammar allows: the reference's plus
    # −log of their mass, which its top-K bounds (``validator.verify``); (0, 0) for free text.
    offset: tuple[float, float] = (0.0, 0.0)

    def reported_delta(self) -> Optional[float]:
        """How far the reported logprob lies from the declared model's (from its range, under a grammar); None if not reported."""
        if self.reported_logprob is None:
            return None
        low, high = self.reference_logprob + self.offset[0], self.reference_logprob + self.offset[1]
        return max(0.0, low - self.reported_logprob, self.reported_logprob - high)


@dataclass(frozen=True)
class ResponseEvidence:
    tokens: Sequence[TokenEvidence]
    finish_reason: str  # "stop" or "length"
    max_tokens: int
    reported_completion_tokens: Optional[int]
    temperature: float
    top_p: float = 1.0
    logprobs_requested: bool = True
    end_token_ids: frozenset[int] = frozenset()  # the model's end-of-text ids; empty: end checks off
    end_checks: bool = True  # False when the request set ignore_eos (the model's end is not an end then)
    own_stop: bool = False  # it ended on one of the request's own stops (a stop string its ids spell, a stop id): no end token is due
    seed: Optional[int] = None  # the request's seed: sampled choices are checkable (protocol.sampling)
    sampler_checkable: bool = False  # no filter or penalty the check does not model (top_k, min_p, penalties)


@dataclass(frozen=True)
class FidelityParams:
    greedy_hard_margin: float = 5.0  # nats: a greedy choice this far below the top token is impossible (closer flips are evidence)
    # Upper-bounded probability under the temperature below which a token is implausible. An
    # honest sampler picks *some* token this unlikely with probability at most vocab × this per
    # position (5e-8 for a 50k vocabulary). Measured: at 1e-7 an honest engine failed 1 answer in
    # 48 (a rank-401 token, p ≈ 4e-8, among 512 similar ones at T=0.7).
    min_token_prob: float = 1e-12
    nucleus_margin: float = 0.05  # slack on top_p for precision drift
    covered_mass: float = 0.99  # the nucleus is checked only when top-K holds this much probability
    # nats, any one token's reported vs reference logprob. Measured on SmolLM2: honest bf16 at
    # most 0.20, int8 0.48, int4 22; drift between honest stacks stays far below 3.
    max_abs_dlp: float = 3.0
    # Ending is the profitable cheat, so the end token gets a stricter floor than others: an
    # honest sampler ends below it with probability at most max_tokens × this per response.
    min_end_prob: float = 1e-8
    # Honest continuation past likely ends: flagged when the product of (1 − p_end) over the
    # positions passed is below this (an honest sampler does so with at most this probability).
    min_continue_prob: float = 1e-6


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reasons: tuple[str, ...] = field(default_factory=tuple)
    mean_abs_dlp: Optional[float] = None  # over tokens with reported logprobs
    max_abs_dlp: Optional[float] = None
    implausible_tokens: int = 0
    stats: Optional["AnswerStats"] = None  # the answer's evidence for the per-miner test (set by the verifier)


@dataclass(frozen=True)
class AnswerStats:
    """What one answer says about its miner, as counts (``scoring.evidence``)."""

    tokens: int = 0  # positions whose choice was judged (every one, when the choice is checkable)
    mismatches: int = 0
    reported: int = 0  # informative positions with a reported logprob
    exceedances: int = 0


def tempered_bounds(token: TokenEvidence, temperature: float) -> dict[int, float]:
    """The reference's top-K and the chosen token under the temperature, normalized over
    themselves: each value is an upper bound of that token's probability (the unseen tail
    only adds to the normalizer)."""
    scaled = {tid: lp / temperature for tid, lp in token.reference_top.items()}
    scaled[token.token_id] = token.reference_logprob / temperature
    top = max(scaled.values())
    weights = {tid: math.exp(v - top) for tid, v in scaled.items()}
    total = sum(weights.values())
    return {tid: w / total for tid, w in weights.items()}


def _outside_nucleus(token: TokenEvidence, tempered: dict[int, float], top_p: float, params: FidelityParams) -> bool:
    chosen = tempered[token.token_id]
    above = sum(p for tid, p in tempered.items() if p > chosen and tid != token.token_id)
    return above >= top_p + params.nucleus_margin


def _implausible(token: TokenEvidence, evidence: ResponseEvidence, params: FidelityParams) -> bool:
    if evidence.temperature == 0:
        best = max(token.reference_top.values(), default=token.reference_logprob)
        return token.reference_rank > 1 and best - token.reference_logprob > params.greedy_hard_margin
    tempered = tempered_bounds(token, evidence.temperature)
    if tempered[token.token_id] < params.min_token_prob:
        return True
    nucleus_checkable = evidence.top_p < 1.0 and evidence.temperature <= 1.0 and sum(math.exp(lp) for lp in token.reference_top.values()) >= params.covered_mass
    return nucleus_checkable and _outside_nucleus(token, tempered, evidence.top_p, params)


def _end_prob_lower_bound(token: TokenEvidence, end_id: int, evidence: ResponseEvidence, params: FidelityParams) -> float:
    """A lower bound of the end token's probability under a temperature in (0, 1] (0 if unknown,
    or if it may lie outside the ``top_p`` nucleus, where the sampler cannot pick it).

    Tempering raises each raw probability to 1/T; the unseen tail (raw mass r, each below the
    K-th raw probability p_K) then has tempered mass at most r · p_K^(1/T − 1).
    """
    if end_id not in token.reference_top:
        return 0.0
    if evidence.top_p < 1.0:
        tempered = tempered_bounds(token, evidence.temperature)  # upper bounds: the mass above is overestimated
        if sum(p for tid, p in tempered.items() if p > tempered[end_id]) >= evidence.top_p - params.nucleus_margin:
            return 0.0
    inverse = 1.0 / evidence.temperature
    raw = {tid: math.exp(lp) for tid, lp in token.reference_top.items()}
    tail = max(0.0, 1.0 - sum(raw.values())) * min(raw.values()) ** (inverse - 1.0)
    return raw[end_id] ** inverse / (sum(p**inverse for p in raw.values()) + tail)


def _end_reasons(evidence: ResponseEvidence, params: FidelityParams) -> list[str]:
    ends = evidence.end_token_ids
    if not ends or not evidence.end_checks:
        return []
    tokens = evidence.tokens
    reasons = []
    early = next((i for i, t in enumerate(tokens[:-1]) if t.token_id in ends), None)
    if early is not None:
        reasons.append(f"an end-of-text token at position {early} was followed by {len(tokens) - 1 - early} more: ran past the end")
    if evidence.finish_reason == "stop" and not evidence.own_stop and (not tokens or tokens[-1].token_id not in ends):
        reasons.append(f"finish_reason 'stop' after {len(tokens)} tokens without an end-of-text token: cut short")
    if tokens and tokens[-1].token_id in ends and evidence.temperature > 0:
        p_end = tempered_bounds(tokens[-1], evidence.temperature)[tokens[-1].token_id]
        if p_end < params.min_end_prob:
            reasons.append(f"ended at position {len(tokens) - 1} where the model gives the end only p ≤ {p_end:.1e}: ended early")
    if 0 < evidence.temperature <= 1.0:
        passed_ends = tokens if evidence.finish_reason != "stop" else tokens[:-1]
        log_continue = sum(math.log1p(-min(1 - 1e-12, sum(_end_prob_lower_bound(t, e, evidence, params) for e in ends))) for t in passed_ends)
        if log_continue < math.log(params.min_continue_prob):
            reasons.append(f"went on where the model ends: an honest sampler continues this far with p ≤ {math.exp(log_continue):.1e}")
    return reasons


def check(evidence: ResponseEvidence, params: FidelityParams = FidelityParams()) -> Verdict:
    """The verdict on one response, with every reason it failed."""
    reasons = []
    n = len(evidence.tokens)
    if evidence.reported_completion_tokens is not None and evidence.reported_completion_tokens != n:
        reasons.append(f"usage reports {evidence.reported_completion_tokens} completion tokens, the response has {n}")
    if evidence.finish_reason == "length" and n < evidence.max_tokens:
        reasons.append(f"finish_reason 'length' after {n} of {evidence.max_tokens} tokens: cut short")
    if n > evidence.max_tokens:
        reasons.append(f"{n} tokens exceed max_tokens {evidence.max_tokens}")

    implausible = [i for i, t in enumerate(evidence.tokens) if _implausible(t, evidence, params)]
    if implausible:
        reasons.append(f"{len(implausible)} token(s) the model would not produce at temperature {evidence.temperature:g}, first at position {implausible[0]}")

    reasons += _end_reasons(evidence, params)

    deltas = [delta for t in evidence.tokens if (delta := t.reported_delta()) is not None]
    if evidence.logprobs_requested and n and len(deltas) < n:
        reasons.append(f"logprobs were requested but {n - len(deltas)} of {n} tokens have none")
    mean_dlp = sum(deltas) / len(deltas) if deltas else None
    max_dlp = max(deltas) if deltas else None
    if max_dlp is not None and max_dlp > params.max_abs_dlp:
        reasons.append(f"a reported logprob is {max_dlp:.3f} nats from the reference (limit {params.max_abs_dlp})")
    return Verdict(passed=not reasons, reasons=tuple(reasons), mean_abs_dlp=mean_dlp, max_abs_dlp=max_dlp, implausible_tokens=len(implausible))

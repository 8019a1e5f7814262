"""Fidelity: did this completion come from the declared model, sampled as asked?

The validator re-scores the miner's completion tokens with the reference engine in one
teacher-forced pass and hands the evidence here. Logprobs are natural logs of the
model's raw (pre-temperature) distribution, on both sides. A response fails when:

- its token counts are dishonest (usage differs from the tokens returned; ``length``
  with fewer than ``max_tokens`` tokens: cut short);
- a chosen token is implausible for the sampler: at temperature 0 it is not the
  reference's top token (beyond a tie margin, for precision drift); above 0, even an
  upper bound of its probability under the temperature is below ``min_token_prob``, or
  it lies outside the ``top_p`` nucleus (checked only when the reference's top-K covers
  the distribution). End-of-text is a token like any other, so a skipped end (continuing
  where the model ends with near certainty) and an early end (stopping where it would
  not) both fail here;
- the logprobs it reported differ from the reference's (any token by more than
  ``max_abs_dlp``, or on average by more than ``mean_abs_dlp``), or were asked for and
  are missing.

Defaults are first margins from ``shared/facts/verification-margins.md`` (honest
bf16-vs-fp32 drift: mean 5e-3, max 3e-2; int8: mean 4e-2, max 0.3), kept until the
verifier's own calibration across engines and hardware replaces them.
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


@dataclass(frozen=True)
class ResponseEvidence:
    tokens: Sequence[TokenEvidence]
    finish_reason: str  # "stop" or "length"
    max_tokens: int
    reported_completion_tokens: Optional[int]
    temperature: float
    top_p: float = 1.0
    logprobs_requested: bool = True


@dataclass(frozen=True)
class FidelityParams:
    greedy_margin: float = 0.1  # nats: a non-top token at T=0 passes if this close to the top one
    # Upper-bounded probability under the temperature below which a token is implausible. An
    # honest sampler picks *some* token this unlikely with probability at most vocab × this per
    # position (5e-8 for a 50k vocabulary). Measured: at 1e-7 an honest engine failed 1 answer in
    # 48 (a rank-401 token, p ≈ 4e-8, among 512 similar ones at T=0.7).
    min_token_prob: float = 1e-12
    nucleus_margin: float = 0.05  # slack on top_p for precision drift
    covered_mass: float = 0.99  # the nucleus is checked only when top-K holds this much probability
    max_abs_dlp: float = 0.5  # nats, any one token's reported vs reference logprob
    mean_abs_dlp: float = 0.05  # nats, averaged over a response of at least min_tokens_for_mean tokens
    min_tokens_for_mean: int = 16


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reasons: tuple[str, ...] = field(default_factory=tuple)
    mean_abs_dlp: Optional[float] = None  # over tokens with reported logprobs
    max_abs_dlp: Optional[float] = None
    implausible_tokens: int = 0


def _tempered(token: TokenEvidence, temperature: float) -> dict[int, float]:
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
        return token.reference_rank > 1 and best - token.reference_logprob > params.greedy_margin
    tempered = _tempered(token, evidence.temperature)
    if tempered[token.token_id] < params.min_token_prob:
        return True
    nucleus_checkable = evidence.top_p < 1.0 and evidence.temperature <= 1.0 and sum(math.exp(lp) for lp in token.reference_top.values()) >= params.covered_mass
    return nucleus_checkable and _outside_nucleus(token, tempered, evidence.top_p, params)


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

    deltas = [abs(t.reported_logprob - t.reference_logprob) for t in evidence.tokens if t.reported_logprob is not None]
    if evidence.logprobs_requested and n and len(deltas) < n:
        reasons.append(f"logprobs were requested but {n - len(deltas)} of {n} tokens have none")
    mean_dlp = sum(deltas) / len(deltas) if deltas else None
    max_dlp = max(deltas) if deltas else None
    if max_dlp is not None and max_dlp > params.max_abs_dlp:
        reasons.append(f"a reported logprob is {max_dlp:.3f} nats from the reference (limit {params.max_abs_dlp})")
    if mean_dlp is not None and len(deltas) >= params.min_tokens_for_mean and mean_dlp > params.mean_abs_dlp:
        reasons.append(f"reported logprobs are {mean_dlp:.4f} nats from the reference on average (limit {params.mean_abs_dlp})")
    return Verdict(passed=not reasons, reasons=tuple(reasons), mean_abs_dlp=mean_dlp, max_abs_dlp=max_dlp, implausible_tokens=len(implausible))

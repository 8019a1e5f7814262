"""From one round's outcomes to a round score, and from round scores to a miner's standing.

Units: every score is in [0, 1]. A round score is

    reliability² × (QUALITY_SHARE × quality + (1 − QUALITY_SHARE) × speed)

- reliability: answered requests / requests sent (errors, timeouts, and 429s while the
  miner was under its declared capacity count against it);
- quality: the share of checkable tasks answered correctly (a property of the declared
  model as much as of the miner: routing by weight sends users to better models);
- speed: half TTFT, half throughput, each relative to the best miner of the round that
  serves the same model (best p50 TTFT / own p50 TTFT; own p30 tokens/s / best p30
  tokens/s): a miner serving a larger, better model is not beaten on speed by one serving
  a tiny model; the quality term is where the model choice pays.

Any fidelity failure (the answer did not come from the declared model) zeroes the miner
and keeps it at zero for ``ban_rounds`` rounds. A buffered round — at least
``BUFFERED_MIN_ANSWERS`` answers long enough to judge, and at least ``BUFFERED_SHARE`` of
them, arrived in one burst — scores 0 for that round, without the ban: an honest engine
under load coalesces an answer into one chunk now and then (39 of 1000 honest answers on
2 busy vCPUs; every answer of a freshly started engine while three others compiled
beside it), while a miner that buffers does it every round and so never earns standing. Standing is an EMA of round scores,
scaled by ``min(1, rounds / min_rounds)`` so a new miner earns full weight only after
enough samples.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace
from typing import Literal, Mapping, Optional, Sequence

from scoring.latency import BURST_MIN_TOKENS, Speed, quantile

QUALITY_SHARE = 0.5
THROUGHPUT_QUANTILE = 0.3  # a low percentile: a miner is as fast as its slow answers
BUFFERED_SHARE = 0.5
BUFFERED_MIN_ANSWERS = 3


@dataclass(frozen=True)
class Outcome:
    """One challenge sent to one miner."""

    kind: Literal["ok", "error", "timeout", "refused"]  # refused: 429 while under declared capacity
    fidelity_passed: Optional[bool] = None  # None when it was not verified
    correct: Optional[float] = None  # 0..1 for a checkable task, None for an open prompt
    speed: Optional[Speed] = None


@dataclass(frozen=True)
class RoundStats:
    answered: int
    sent: int
    fidelity_failed: bool  # an answer failed verification
    quality: Optional[float]
    ttft_p50: Optional[float]
    tokens_per_s_p30: Optional[float]
    buffered: bool = False  # the round's answers came in bursts: the round scores 0


@dataclass(frozen=True)
class AggregationParams:
    alpha: float = 0.1  # EMA weight of the newest round
    min_rounds: int = 8  # rounds before full weight
    ban_rounds: int = 24  # rounds at zero after a fidelity failure


@dataclass(frozen=True)
class Standing:
    ema: float = 0.0
    rounds: int = 0  # rounds that counted
    banned_until: int = -1  # round index before which the miner scores zero

    def effective(self, params: AggregationParams, round_index: int) -> float:
        """The score weights are set from."""
        if round_index < self.banned_until:
            return 0.0
        return self.ema * min(1.0, self.rounds / params.min_rounds)


def summarize(outcomes: Sequence[Outcome]) -> RoundStats:
    answered = [o for o in outcomes if o.kind == "ok"]
    correct = [o.correct for o in answered if o.correct is not None]
    speeds = [o.speed for o in answered if o.speed is not None]
    judged = [s for s in speeds if s.tokens >= BURST_MIN_TOKENS]
    bursts = sum(not s.streamed for s in judged)
    buffered = bursts >= BUFFERED_MIN_ANSWERS and bursts >= BUFFERED_SHARE * len(judged)
    return RoundStats(
        answered=len(answered),
        sent=len(outcomes),
        fidelity_failed=any(o.fidelity_passed is False for o in outcomes),
        quality=statistics.fmean(correct) if correct else None,
        ttft_p50=statistics.median(s.ttft for s in speeds) if speeds else None,
        tokens_per_s_p30=quantile([s.tokens_per_s for s in speeds], THROUGHPUT_QUANTILE) if speeds else None,
        buffered=buffered,
    )


def round_scores(stats: Mapping[int, RoundStats], models: Optional[Mapping[int, str]] = None) -> dict[int, float]:
    """Each miner's score for the round (uid → [0, 1]); speed is relative to the round's best
    miner of the same model (``models``: uid → model id; all one group when omitted)."""
    models = models or {}
    best: dict[Optional[str], tuple[Optional[float], Optional[float]]] = {}
    for group in {models.get(uid) for uid in stats}:
        peers = [s for uid, s in stats.items() if models.get(uid) == group and not (s.fidelity_failed or s.buffered)]
        ttfts = [s.ttft_p50 for s in peers if s.ttft_p50]
        rates = [s.tokens_per_s_p30 for s in peers if s.tokens_per_s_p30]
        best[group] = (min(ttfts) if ttfts else None, max(rates) if rates else None)
    scores = {}
    for uid, s in stats.items():
        best_ttft, best_rate = best[models.get(uid)]
        if s.fidelity_failed or s.buffered or not s.sent or not s.answered:
            scores[uid] = 0.0
            continue
        speed_parts = []
        if best_ttft and s.ttft_p50:
            speed_parts.append(min(1.0, best_ttft / s.ttft_p50))
        if best_rate and s.tokens_per_s_p30:
            speed_parts.append(min(1.0, s.tokens_per_s_p30 / best_rate))
        speed = statistics.fmean(speed_parts) if speed_parts else 0.0
        quality = s.quality if s.quality is not None else speed  # open prompts only: speed alone
        reliability = s.answered / s.sent
        scores[uid] = reliability**2 * (QUALITY_SHARE * quality + (1 - QUALITY_SHARE) * speed)
    return scores


def update(standing: Standing, score: float, fidelity_failed: bool, round_index: int, params: AggregationParams) -> Standing:
    """The standing after one more round."""
    if not 0.0 <= score <= 1.0:
        raise ValueError(f"round score {score} is outside [0, 1]")
    if fidelity_failed:
        return Standing(ema=0.0, rounds=0, banned_until=round_index + params.ban_rounds)
    if round_index < standing.banned_until:
        return standing
    return replace(standing, ema=params.alpha * score + (1 - params.alpha) * standing.ema, rounds=standing.rounds + 1)

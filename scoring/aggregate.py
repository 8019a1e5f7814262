"""From one round's outcomes to a round score, and from round scores to a miner's standing.

Units: every score is in [0, 1]. A round score is

    reliability² × speed

- reliability: answered requests / requests sent (errors, timeouts, and 429s while the
  miner was under its declared capacity count against it);
- speed: half TTFT, half throughput, each relative to the best miner of the round that
  serves the same model (best p50 TTFT / own p50 TTFT; own p30 tokens/s / best p30
  tokens/s): a miner serving a larger, better model is not beaten on speed by one serving
  a tiny model; the model list's reward is where the model choice pays.

Correctness is no term of a miner's pay. Within one model every honest miner has the same
expected quality, so a miner's graded answers only add noise (a handful of them a round)
and a price on steering: a miner that forces the graded answer's tokens within what the
evidence tolerates would buy pay with fidelity. What is paid is that the answer is the
declared model's (fidelity gates the score), how fast, and how much capacity. The share of
checkable tasks answered correctly (``RoundStats.quality``) is still kept, per model, for
routing between models (``auto``) and the leaderboard.

Any fidelity failure (the answer did not come from the declared model, or the miner sent
something that cannot be verified) zeroes the miner and keeps it at zero for
``ban_rounds`` rounds. Outcomes the validator could not judge because its own reference
failed (``unverified``) count neither for nor against the miner: a round of nothing else
leaves its standing as it was.

Buffering (holding the answer back and sending it in one burst) is judged per miner over
its last ``BUFFERED_WINDOW`` answers long enough to judge, across rounds: it buffers when
at least ``BUFFERED_MIN_JUDGED`` are known and at least ``BUFFERED_SHARE`` of them came in
one burst. A buffering miner scores 0 for the round and its standing starts again from
zero (no ban: an honest miner flagged by bad luck recovers). Calibration in
``docs/calibration.md``: an honest engine read by a busy validator looks like a burst in
up to 16% of its answers (the validator's own loop stalls, and chunks pile up in the
socket; measured with answers of 16+ tokens); the rule flags such a miner with probability
below 2e-5 a round, and a miner that buffers everything as soon as it has 6 judged answers. Standing is an EMA of round scores,
scaled by ``min(1, rounds / min_rounds)`` so a new miner earns full weight only after
enough samples.

A round score is per stream: how well each request is served. How many streams a miner
serves is measured apart, in the rounds that probe its capacity (``delivered``: verified
tokens/s while its declared concurrency was in flight, then in streams at its model's
reference speed: ``validator.standings.apply_rewards``); the standing keeps an EMA of it, and
``scoring.weights`` pays ``standing⁴ × capacity^0.8``.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace
from typing import Literal, Mapping, Optional, Sequence

from scoring.latency import BURST_MIN_TOKENS, Speed, quantile

THROUGHPUT_QUANTILE = 0.3  # a low percentile: a miner is as fast as its slow answers
BUFFERED_WINDOW = 24
BUFFERED_MIN_JUDGED = 6
BUFFERED_SHARE = 0.9


@dataclass(frozen=True)
class Outcome:
    """One challenge sent to one miner."""

    kind: Literal["ok", "error", "timeout", "refused", "unverified"]  # refused: 429 under declared capacity; unverified: our reference failed
    fidelity_passed: Optional[bool] = None  # None when it was not verified
    correct: Optional[float] = None  # 0..1 for a checkable task, None for an open prompt
    speed: Optional[Speed] = None  # None where it is not timed (a replayed user prompt) or not answered
    chunks: tuple[tuple[float, int], ...] = ()  # (seconds after it was sent, tokens) per chunk with tokens (a replay's too)
    sent_at: Optional[float] = None  # seconds after the round's first request to this miner: the capacity probe's clock
    done_at: Optional[float] = None  # ... when its answer (or failure) was complete


@dataclass(frozen=True)
class RoundStats:
    answered: int
    sent: int
    fidelity_failed: bool  # an answer failed verification
    quality: Optional[float]  # share of checkable tasks answered right: the model's record, not the miner's pay
    ttft_p50: Optional[float]
    tokens_per_s_p30: Optional[float]
    buffered: bool = False  # the miner's recent answers came in bursts: the round scores 0
    delivered: Optional[float] = None  # verified tokens/s it delivered at its probed concurrency (None: nothing timed)


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
    capacity: float = 0.0  # EMA of what it delivered at load, in streams at its model's reference speed (its first measure at once)

    def effective(self, params: AggregationParams, round_index: int) -> float:
        """The score weights are set from."""
        if round_index < self.banned_until:
            return 0.0
        return self.ema * min(1.0, self.rounds / params.min_rounds)


def judged_streamed(outcome: Outcome) -> Optional[bool]:
    """Whether an answer long enough to judge was streamed (None: not judged)."""
    speed = outcome.speed
    return speed.streamed if outcome.kind == "ok" and speed is not None and speed.tokens >= BURST_MIN_TOKENS else None


def buffers(streamed: Sequence[bool]) -> bool:
    """Whether a miner buffers, from its judged answers' streamed flags, oldest first."""
    recent = streamed[-BUFFERED_WINDOW:]
    bursts = sum(not s for s in recent)
    return len(recent) >= BUFFERED_MIN_JUDGED and bursts >= BUFFERED_SHARE * len(recent)


def delivered(outcomes: Sequence[Outcome]) -> Optional[float]:
    """Verified tokens/s a miner delivered while its capacity probe kept its declared concurrency in
    flight: the probe sends that many requests at once and a new one each time one ends, so until
    the last is sent the miner holds as many as it declared. Tokens of answers that pass
    verification arriving in that window, over its length (or until the first answer's end,
    where every request left at once). Exact whatever the miner does with them: an engine
    that batches, one that takes them one after another (the queued ones deliver nothing while
    they wait), one that refuses all but one (a refusal ends at once, its slot is refilled, the
    window closes early on what the admitted one delivered); the tail, where fewer are in flight
    as the last answers end, is left out, so a hotkey declaring many streams is not measured
    lower than one declaring few. Unverified answers count neither way; None when nothing was timed."""
    timed = [(o, o.sent_at, o.done_at) for o in outcomes if o.kind != "unverified" and o.sent_at is not None and o.done_at is not None]
    if not timed:
        return None
    end = max(max(sent for _, sent, _ in timed), min(done for _, _, done in timed))
    if end <= 0:
        return None
    tokens = sum(n for o, sent, _ in timed if o.kind == "ok" and o.fidelity_passed for at, n in o.chunks if sent + at <= end)
    return tokens / end


def summarize(outcomes: Sequence[Outcome], history: Sequence[bool] = ()) -> RoundStats:
    """One miner's round; ``history``: the streamed flags of its judged answers in earlier rounds, oldest first."""
    counted = [o for o in outcomes if o.kind != "unverified"]
    answered = [o for o in counted if o.kind == "ok"]
    correct = [o.correct for o in answered if o.correct is not None]
    speeds = [o.speed for o in answered if o.speed is not None]
    judged = [flag for o in answered if (flag := judged_streamed(o)) is not None]
    return RoundStats(
        answered=len(answered),
        sent=len(counted),
        fidelity_failed=any(o.fidelity_passed is False for o in outcomes),
        quality=statistics.fmean(correct) if correct else None,
        ttft_p50=statistics.median(s.ttft for s in speeds) if speeds else None,
        tokens_per_s_p30=quantile([s.tokens_per_s for s in speeds], THROUGHPUT_QUANTILE) if speeds else None,
        buffered=buffers([*history, *judged]),
        delivered=delivered(outcomes),
    )


def round_scores(stats: Mapping[int, RoundStats], models: Optional[Mapping[int, str]] = None) -> dict[int, float]:
    """Each miner's score for the round (uid → [0, 1]); speed is relative to the round's best
    miner of the same model (``models``: uid → model id; all one group when omitted). A miner
    with nothing counted this round (every answer unverified) gets no score: its standing stays."""
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
        if not s.sent and not s.fidelity_failed:
            continue
        if s.fidelity_failed or s.buffered or not s.answered:
            scores[uid] = 0.0
            continue
        speed_parts = []
        if best_ttft and s.ttft_p50:
            speed_parts.append(min(1.0, best_ttft / s.ttft_p50))
        if best_rate and s.tokens_per_s_p30:
            speed_parts.append(min(1.0, s.tokens_per_s_p30 / best_rate))
        speed = statistics.fmean(speed_parts) if speed_parts else 0.0
        reliability = s.answered / s.sent
        scores[uid] = reliability**2 * speed
    return scores


def update(
    standing: Standing,
    score: float,
    fidelity_failed: bool,
    round_index: int,
    params: AggregationParams,
    reset: bool = False,
    delivered: Optional[float] = None,
) -> Standing:
    """The standing after one more round; ``reset``: what it earned is gone, without a ban (it
    buffers, or its pooled evidence flagged it); ``delivered``: the round's measured capacity
    (streams at the model's reference speed; None leaves the capacity as it was)."""
    if not 0.0 <= score <= 1.0:
        raise ValueError(f"round score {score} is outside [0, 1]")
    if fidelity_failed:
        return Standing(ema=0.0, rounds=0, banned_until=round_index + params.ban_rounds)
    if reset:
        return Standing(ema=0.0, rounds=0, banned_until=standing.banned_until)
    if round_index < standing.banned_until:
        return standing
    capacity = standing.capacity
    if delivered is not None:
        capacity = delivered if not standing.rounds else params.alpha * delivered + (1 - params.alpha) * capacity
    return replace(standing, ema=params.alpha * score + (1 - params.alpha) * standing.ema, rounds=standing.rounds + 1, capacity=capacity)

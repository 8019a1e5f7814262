"""One validation round: challenge every eligible miner, verify, grade, score.

All miners serving a model get the same challenges (drawn from the round seed), so
their speeds are compared on equal work. Each miner sees at most ``per_miner`` requests
at once and never more than half its declared capacity (the other half stays free for
users: a validator that filled a miner made the gateway's requests meet 429s); the reference engine verifies at
most ``verify_concurrency`` answers at once.

What a miner sent decides its outcome, never the round's fate: a stream that breaks the
protocol, ids outside the vocabulary, text that is not the ids' detokenization — each is a
fidelity failure with its reason. When the validator's own reference engine fails, the
answer is ``unverified`` and counts neither way (it is never scored on speed alone). An
exception in one miner's challenge is logged and scored as that answer's error.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import aiohttp

from btauth.client import MinerClient
from scoring.aggregate import Outcome, judged_streamed, round_scores, summarize
from scoring.latency import measure
from validator.challenges import Challenge, generate, grade
from validator.query import QueryResult, Timeouts, ask
from validator.verify import ReferenceEngine, ReferenceError, verify

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    uid: int
    hotkey: str
    url: str
    model: str
    capacity: int


@dataclass
class Result:
    """One challenge answered (or not) by one miner, as stored."""

    uid: int
    hotkey: str
    family: str
    outcome: Outcome
    reasons: tuple[str, ...] = ()
    detail: str = ""

    @property
    def streamed(self) -> Optional[bool]:
        """For an answer long enough to judge: whether it was streamed (buffering evidence)."""
        return judged_streamed(self.outcome)


@dataclass
class RoundReport:
    seed: int
    results: list[Result] = field(default_factory=list)
    scores: dict[int, float] = field(default_factory=dict)
    fidelity_failed: set[int] = field(default_factory=set)
    buffered: set[int] = field(default_factory=set)  # recent answers came in bursts: score 0, standing from zero


async def _judge(
    target: Target, challenge: Challenge, body: dict[str, Any], result: QueryResult, reference: ReferenceEngine, verifying: asyncio.Semaphore
) -> Result:
    if result.kind == "violation":
        log.warning("uid %s (%s) broke the protocol on %s: %s", target.uid, target.hotkey, challenge.family, result.detail)
        return Result(target.uid, target.hotkey, challenge.family, Outcome("error", fidelity_passed=False), (f"unverifiable: {result.detail}",))
    if result.kind != "ok":
        return Result(target.uid, target.hotkey, challenge.family, Outcome(result.kind), detail=result.detail)
    async with verifying:
        try:
            verdict = await verify(reference, body, result.response)
        except ReferenceError as exc:
            # Our engine failed, not the miner: nothing is known about this answer, for or against.
            log.warning("could not verify uid %s: %s", target.uid, exc)
            return Result(target.uid, target.hotkey, challenge.family, Outcome("unverified"), detail=str(exc))
    speed = measure(result.timing) if result.timing.arrivals else None
    # The grader reads the text the verifier bound to the ids (equal to the detokenization once verified).
    correct = grade(challenge.answer, result.response.text) if challenge.answer is not None and verdict.passed else None
    outcome = Outcome("ok", verdict.passed, correct, speed)
    if not verdict.passed:
        log.warning("uid %s (%s) failed verification on %s: %s", target.uid, target.hotkey, challenge.family, "; ".join(verdict.reasons))
    return Result(target.uid, target.hotkey, challenge.family, outcome, verdict.reasons)


async def _challenge_miner(
    session: aiohttp.ClientSession,
    keypair: Any,
    target: Target,
    challenges: list[Challenge],
    reference: ReferenceEngine,
    verifying: asyncio.Semaphore,
    per_miner: int,
    timeouts: Timeouts,
) -> list[Result]:
    client = MinerClient(session, target.url, keypair, target.hotkey)
    slots = asyncio.Semaphore(max(1, min(per_miner, target.capacity // 2)))

    async def one(challenge: Challenge) -> Result:
        body = challenge.request(target.model)
        try:
            async with slots:
                result = await ask(client, body, timeouts)
            return await _judge(target, challenge, body, result, reference, verifying)
        except Exception as exc:  # a bug met by one miner's answer must not end the round for every miner
            log.exception("challenge to uid %s failed unexpectedly", target.uid)
            return Result(target.uid, target.hotkey, challenge.family, Outcome("error"), detail=f"{type(exc).__name__}: {exc}")

    return list(await asyncio.gather(*(one(c) for c in challenges)))


async def run_round(
    session: aiohttp.ClientSession,
    keypair: Any,
    seed: int,
    targets: list[Target],
    references: Mapping[str, ReferenceEngine],
    challenges_per_miner: int,
    per_miner: int = 4,
    verify_concurrency: int = 4,
    timeouts: Optional[Timeouts] = None,
    history: Optional[Mapping[str, Sequence[bool]]] = None,
) -> RoundReport:
    """Query, verify and score every target; miners whose model has no reference are skipped.
    ``history``: hotkey → streamed flags of its judged answers in earlier rounds, oldest first."""
    timeouts = timeouts or Timeouts()
    report = RoundReport(seed=seed)
    verifying = asyncio.Semaphore(verify_concurrency)
    challenges = generate(seed, challenges_per_miner)
    eligible = [t for t in targets if t.model in references]
    per_target = await asyncio.gather(
        *(_challenge_miner(session, keypair, t, challenges, references[t.model], verifying, per_miner, timeouts) for t in eligible)
    )
    stats = {}
    for target, results in zip(eligible, per_target):
        report.results += results
        stats[target.uid] = summarize([r.outcome for r in results], (history or {}).get(target.hotkey, ()))
        if stats[target.uid].fidelity_failed:
            report.fidelity_failed.add(target.uid)
        if stats[target.uid].buffered:
            log.warning("uid %s (%s) sends its answers in bursts (buffered, not streamed): round score 0, standing from zero", target.uid, target.hotkey)
            report.buffered.add(target.uid)
    report.scores = round_scores(stats, {t.uid: t.model for t in eligible})
    return report

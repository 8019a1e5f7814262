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
import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional, Sequence

import aiohttp

from btauth.client import MinerClient
from protocol.records import AnswerRecord
from scoring.aggregate import Outcome, judged_streamed, round_scores, summarize
from scoring.evidence import TOLERANCES, Evidence, SequentialParams
from scoring.fidelity import AnswerStats
from scoring.latency import measure
from validator.challenges import Challenge, generate, grade
from validator.query import QueryResult, Timeouts, ask
from validator.verify import ReferenceEngine, ReferenceFailed, verify

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    uid: int
    hotkey: str
    url: str
    model: str
    capacity: int
    dtype: str = "float32"  # declared: the verifier's tolerance for its drift
    declaration: str = ""  # what its evidence is kept under: a new declaration starts it afresh

    @property
    def tolerance(self):
        return TOLERANCES.get(self.dtype, TOLERANCES["float32"])


@dataclass
class Result:
    """One challenge answered (or not) by one miner, as stored."""

    uid: int
    hotkey: str
    family: str
    outcome: Outcome
    reasons: tuple[str, ...] = ()
    detail: str = ""
    stats: Optional[AnswerStats] = None  # the answer's evidence for the per-miner test
    answer: Optional[AnswerRecord] = None  # what the miner sent, for replay: token ids, logprobs, chunk timings

    @property
    def streamed(self) -> Optional[bool]:
        """For an answer long enough to judge: whether it was streamed (buffering evidence)."""
        return judged_streamed(self.outcome)

    def row(self, round_index: int) -> dict[str, Any]:
        """The result as the store's ``results`` row, by column name."""
        speed = self.outcome.speed
        return {
            "round": round_index,
            "uid": self.uid,
            "hotkey": self.hotkey,
            "family": self.family,
            "outcome": self.outcome.kind,
            "passed": None if self.outcome.fidelity_passed is None else int(self.outcome.fidelity_passed),
            "reasons": "; ".join(self.reasons) or self.detail or None,
            "correct": self.outcome.correct,
            "ttft": speed.ttft if speed else None,
            "tokens_per_s": speed.tokens_per_s if speed else None,
            "tokens": speed.tokens if speed else None,
            "streamed": None if self.streamed is None else int(self.streamed),
            "stats": json.dumps(asdict(self.stats)) if self.stats is not None else None,
            "answer": self.answer.model_dump_json() if self.answer is not None else None,
        }


@dataclass
class RoundReport:
    seed: int
    results: list[Result] = field(default_factory=list)
    scores: dict[int, float] = field(default_factory=dict)
    fidelity_failed: set[int] = field(default_factory=set)
    buffered: set[int] = field(default_factory=set)  # recent answers came in bursts: score 0, standing from zero
    evidence: dict[str, Evidence] = field(default_factory=dict)  # hotkey → its pooled evidence after the round
    flagged: set[int] = field(default_factory=set)  # the evidence says another model: weight 0 until it declares anew


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
            verdict = await verify(reference, body, result.response, tolerance=target.tolerance)
        except ReferenceFailed as exc:
            # Our engine failed, not the miner: nothing is known about this answer, for or against.
            log.warning("could not verify uid %s: %s", target.uid, exc)
            return Result(target.uid, target.hotkey, challenge.family, Outcome("unverified"), detail=str(exc))
    speed = measure(result.timing) if result.timing.arrivals else None
    # The grader reads the text the verifier bound to the ids (equal to the detokenization once verified).
    correct = grade(challenge.answer, result.response.text) if challenge.answer is not None and verdict.passed else None
    outcome = Outcome("ok", verdict.passed, correct, speed)
    if not verdict.passed:
        log.warning("uid %s (%s) failed verification on %s: %s", target.uid, target.hotkey, challenge.family, "; ".join(verdict.reasons))
    return Result(target.uid, target.hotkey, challenge.family, outcome, verdict.reasons, stats=verdict.stats, answer=_answer_record(result))


def _answer_record(result: QueryResult) -> AnswerRecord:
    """What a replay needs of the answer: the ids and logprobs the verdict was reached on, and the
    timing, unrounded (seconds after sending, tokens) per chunk, so a replay's speeds equal the round's."""
    return result.response.record(chunks=[(t - result.timing.sent, n) for t, n in zip(result.timing.arrivals, result.timing.tokens)])


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
    evidence: Optional[Mapping[str, Evidence]] = None,
    round_index: int = 0,
    sequential: SequentialParams = SequentialParams(),
) -> RoundReport:
    """Query, verify and score every target; miners whose model has no reference are skipped.
    ``history``: hotkey → streamed flags of its judged answers in earlier rounds, oldest first.
    ``evidence``: hotkey → its pooled evidence so far; a miner already flagged under its current
    declaration is not queried and scores 0."""
    timeouts = timeouts or Timeouts()
    verifying = asyncio.Semaphore(verify_concurrency)
    challenges = generate(seed, challenges_per_miner)
    already = {t.hotkey: current_evidence(evidence or {}, t) for t in targets}
    eligible = [t for t in targets if t.model in references and not already[t.hotkey].flagged]
    per_target = await asyncio.gather(
        *(_challenge_miner(session, keypair, t, challenges, references[t.model], verifying, per_miner, timeouts) for t in eligible)
    )
    return score_round(seed, targets, dict(zip((t.uid for t in eligible), per_target)), history, evidence, round_index, sequential)


def score_round(
    seed: int,
    targets: list[Target],
    results: Mapping[int, list[Result]],
    history: Optional[Mapping[str, Sequence[bool]]],
    evidence: Optional[Mapping[str, Evidence]],
    round_index: int,
    sequential: SequentialParams = SequentialParams(),
) -> RoundReport:
    """The round's report from each queried miner's results (uid → results in challenge order):
    what ``run_round`` returns, and what ``slmnet validator replay`` recomputes from a record."""
    report = RoundReport(seed=seed)
    pooled = {t.hotkey: current_evidence(evidence or {}, t) for t in targets}
    report.flagged = {t.uid for t in targets if pooled[t.hotkey].flagged}
    stats = {}
    queried = [t for t in targets if t.uid in results]
    for target in queried:
        answers = results[target.uid]
        report.results += answers
        pooled[target.hotkey] = pool_evidence(pooled[target.hotkey], target, answers, round_index, sequential)
        if pooled[target.hotkey].flagged:
            report.flagged.add(target.uid)
        stats[target.uid] = summarize([r.outcome for r in answers], (history or {}).get(target.hotkey, ()))
        if stats[target.uid].fidelity_failed:
            report.fidelity_failed.add(target.uid)
        if stats[target.uid].buffered:
            log.warning("uid %s (%s) sends its answers in bursts (buffered, not streamed): round score 0, standing from zero", target.uid, target.hotkey)
            report.buffered.add(target.uid)
    report.scores = round_scores(stats, {t.uid: t.model for t in queried})
    report.scores.update({uid: 0.0 for uid in report.flagged})
    report.evidence = pooled
    return report


def current_evidence(evidence: Mapping[str, Evidence], target: Target) -> Evidence:
    """The target's evidence under its declaration now (a changed declaration starts afresh)."""
    known = evidence.get(target.hotkey)
    return known if known is not None and known.declaration == target.declaration else Evidence(target.declaration)


def pool_evidence(evidence: Evidence, target: Target, results: list[Result], round_index: int, sequential: SequentialParams, announce: bool = True) -> Evidence:
    was_flagged = evidence.flagged
    for result in results:
        if result.stats is not None:
            evidence = evidence.add(result.stats, target.tolerance, round_index, sequential)
    if announce and evidence.flagged and not was_flagged:
        log.warning(
            "uid %s (%s) flagged: its answers do not come from %s in %s (%d answers, %d/%d choices mismatched, %d/%d logprobs off; evidence %.1f ≥ %.1f); weight 0 until it declares anew",
            target.uid,
            target.hotkey,
            target.model,
            target.dtype,
            evidence.answers,
            evidence.mismatches,
            evidence.tokens,
            evidence.exceedances,
            evidence.reported,
            evidence.cusum,
            sequential.threshold,
        )
    return evidence

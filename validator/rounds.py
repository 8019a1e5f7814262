"""One validation round: challenge every eligible miner, verify, grade, score.

Each miner gets its own challenges, drawn from (round seed, its hotkey): no two miners are
sent the same body, so one computation cannot answer for two hotkeys; the challenges of
all miners come from the same distribution, so their speeds are compared on like work. A
miner whose evidence has risen gets more of them, and is paid a shrinking share of its
score until the evidence clears or flags it (``scoring.evidence``: no pay on credit).

Every ``probe_every`` rounds a model's miners are probed for capacity: each is sent as
many challenges at once as it declares it can serve (at most ``probe_concurrency``), and as
many again, each sent as one ends (so its declared concurrency stays in flight), every
miner of the model at the same moment, so hotkeys in front of one engine share it while
they are measured; what each delivered (``scoring.aggregate.delivered``: verified tokens/s)
is what the weights pay for. Other rounds send at most ``LIGHT_CONCURRENCY`` requests at once
and never more than half the declared capacity (the other half stays free for users). What
a probe costs an honest miner serving users at that moment: the slots its users hold refuse
part of the probe (nothing delivered), and a gateway may meet a 429 while the probe fills
it; both last as long as the probe's answers, one round in ``probe_every``. Every model is
probed in the same rounds (``probed_models``), so the references' work comes in those rounds.
The reference engine verifies at most ``verify_concurrency`` answers at once.

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
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Collection, Iterable, Mapping, Optional, Sequence

import aiohttp

from btauth.client import MinerClient
from protocol.records import AnswerRecord, ServiceCounts
from scoring.aggregate import Outcome, RoundStats, Standing, judged_streamed, round_scores, summarize
from scoring.evidence import FLAG_HOLD_BLOCKS, TOLERANCES, Evidence, SequentialParams
from scoring.fidelity import AnswerStats
from scoring.latency import measure
from validator.challenges import REPLAY, Challenge, UserPrompts, generate, grade, miner_seed
from validator.query import LoopLag, QueryResult, Timeouts, ask
from validator.verify import ReferenceEngine, ReferenceFailed, verify

log = logging.getLogger(__name__)

PROBE_CONCURRENCY = 64  # the most requests a capacity probe sends one miner at once (--probe-concurrency)
LIGHT_CONCURRENCY = 4  # requests in flight to one miner outside its capacity probe
PROBE_WAVES = 2  # a probe sends twice its concurrency: the second half keeps the slots full while the first ends


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
    request: Optional[dict[str, Any]] = None  # what it was sent (a replayed user prompt cannot be rebuilt from the seed)

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
            "sent_at": self.outcome.sent_at,
            "done_at": self.outcome.done_at,
            "stats": json.dumps(asdict(self.stats)) if self.stats is not None else None,
            "answer": self.answer.model_dump_json() if self.answer is not None else None,
            "request": json.dumps(self.request) if self.request is not None else None,
        }


@dataclass(frozen=True)
class UserVerdict:
    """The verdict on one user's answer a gateway handed over (``validator.organic``): it counts like a
    challenge's — a failure zeroes the round, its evidence pools with the challenges'."""

    uid: int
    hotkey: str
    passed: bool
    reasons: str = ""
    stats: Optional[AnswerStats] = None


@dataclass
class RoundReport:
    seed: int
    results: list[Result] = field(default_factory=list)
    scores: dict[int, float] = field(default_factory=dict)
    fidelity_failed: set[int] = field(default_factory=set)
    buffered: set[int] = field(default_factory=set)  # recent answers came in bursts: score 0, standing from zero
    evidence: dict[str, Evidence] = field(default_factory=dict)  # hotkey → its pooled evidence after the round
    flagged: set[int] = field(default_factory=set)  # the evidence says another model: weight 0 until it declares anew
    probed: dict[int, int] = field(default_factory=dict)  # uid → requests it was sent at once (its capacity probe)
    delivered: dict[int, float] = field(default_factory=dict)  # uid → verified tokens/s it delivered so
    serves: dict[int, int] = field(default_factory=dict)  # uid → streams it served at once at its model's best stream speed
    capacity: dict[int, float] = field(default_factory=dict)  # uid → delivered in streams at its model's reference speed (standings.apply_rewards)


async def _judge(
    target: Target, challenge: Challenge, body: dict[str, Any], result: QueryResult, reference: ReferenceEngine, verifying: asyncio.Semaphore
) -> Result:
    if result.kind == "violation":
        log.warning("uid %s (%s) broke the protocol on %s: %s", target.uid, target.hotkey, challenge.family, result.detail)
        return Result(target.uid, target.hotkey, challenge.family, Outcome("error", fidelity_passed=False), (f"unverifiable: {result.detail}",))
    if result.kind != "ok" or result.response is None or result.timing is None:
        return Result(target.uid, target.hotkey, challenge.family, Outcome(result.kind), detail=result.detail)
    response, timing = result.response, result.timing  # an answer ("ok") has both
    async with verifying:
        try:
            verdict = await verify(reference, body, response, tolerance=target.tolerance)
        except ReferenceFailed as exc:
            # Our engine failed, not the miner: nothing is known about this answer, for or against.
            log.warning("could not verify uid %s: %s", target.uid, exc)
            return Result(target.uid, target.hotkey, challenge.family, Outcome("unverified"), detail=str(exc))
    # Speed only where no cache could have bought it: a replayed user prompt may sit in the miner's
    # prefix cache (it served that user), a freshly generated one cannot.
    speed = measure(timing) if timing.arrivals and challenge.family != REPLAY else None
    # The grader reads the text the verifier bound to the ids (equal to the detokenization once verified).
    correct = grade(challenge.answer, response.text) if challenge.answer is not None and verdict.passed else None
    outcome = Outcome("ok", verdict.passed, correct, speed, chunks=timing.relative())
    if not verdict.passed:
        log.warning("uid %s (%s) failed verification on %s: %s", target.uid, target.hotkey, challenge.family, "; ".join(verdict.reasons))
    # What a replay needs of the answer: the ids and logprobs the verdict was reached on, and the timing, unrounded
    # (seconds after sending, tokens) per chunk, so a replay's speeds equal the round's.
    record = response.record(chunks=list(timing.relative()))
    return Result(target.uid, target.hotkey, challenge.family, outcome, verdict.reasons, stats=verdict.stats, answer=record)


async def _challenge_miner(
    session: aiohttp.ClientSession,
    keypair: Any,
    target: Target,
    challenges: list[Challenge],
    reference: ReferenceEngine,
    verifying: asyncio.Semaphore,
    concurrency: int,
    timeouts: Timeouts,
    lag: Optional[LoopLag] = None,
) -> list[Result]:
    client = MinerClient(session, target.url, keypair, target.hotkey)
    slots = asyncio.Semaphore(concurrency)
    began = time.monotonic()  # the capacity probe's clock

    async def one(challenge: Challenge) -> Result:
        body = challenge.request(target.model)
        try:
            async with slots:
                sent_at = time.monotonic() - began
                result = await ask(client, body, timeouts, lag)
                done_at = time.monotonic() - began
            judged = await _judge(target, challenge, body, result, reference, verifying)
            judged.outcome = replace(judged.outcome, sent_at=sent_at, done_at=done_at)
        except Exception as exc:  # a bug met by one miner's answer must not end the round for every miner
            log.exception("challenge to uid %s failed unexpectedly", target.uid)
            judged = Result(target.uid, target.hotkey, challenge.family, Outcome("error"), detail=f"{type(exc).__name__}: {exc}")
        judged.request = body
        return judged

    return list(await asyncio.gather(*(one(c) for c in challenges)))


async def run_round(
    session: aiohttp.ClientSession,
    keypair: Any,
    seed: int,
    targets: list[Target],
    references: Mapping[str, ReferenceEngine],
    challenges_per_miner: int,
    probe_concurrency: int = PROBE_CONCURRENCY,
    verify_concurrency: int = 4,
    timeouts: Optional[Timeouts] = None,
    history: Optional[Mapping[str, Sequence[bool]]] = None,
    evidence: Optional[Mapping[str, Evidence]] = None,
    round_index: int = 0,
    sequential: SequentialParams = SequentialParams(),
    users: Optional[Mapping[str, UserPrompts]] = None,
    organic: Sequence[UserVerdict] = (),
    block: Optional[int] = None,
    service: Optional[Mapping[int, ServiceCounts]] = None,
    probing: Collection[str] = (),
) -> RoundReport:
    """Query, verify and score every target; miners whose model has no reference are skipped.
    ``probing``: the models whose miners this round probes for capacity (``probed_models``).
    ``users``: model → what its users recently sent, for challenges that look like it; ``organic``: verdicts on
    users' answers, pooled with the challenges'; ``block``: the head block (how long flags hold);
    ``service``: uid → what the gateways saw it do for their users since the last round (``service_factor``).
    ``history``: hotkey → streamed flags of its judged answers in earlier rounds, oldest first.
    ``evidence``: hotkey → its pooled evidence so far; a miner already flagged under its current
    declaration is not queried and scores 0; ``sequential``: the per-miner test (and how many
    challenges a suspect gets)."""
    timeouts = timeouts or Timeouts()
    verifying = asyncio.Semaphore(verify_concurrency)
    already = {t.hotkey: current_evidence(evidence or {}, t, block) for t in targets}
    eligible = [t for t in targets if t.model in references and not already[t.hotkey].flagged]
    probed = probe_sizes(eligible, probing, probe_concurrency)
    concurrency = {t.uid: probed.get(t.uid) or max(1, min(LIGHT_CONCURRENCY, t.capacity // 2)) for t in eligible}
    lag = LoopLag().start()
    try:
        per_target = await asyncio.gather(
            *(
                _challenge_miner(
                    session,
                    keypair,
                    t,
                    generate(
                        miner_seed(seed, t.hotkey),
                        already[t.hotkey].challenges(challenge_count(challenges_per_miner, probed.get(t.uid, 0)), sequential),
                        users=(users or {}).get(t.model, UserPrompts()),
                    ),
                    references[t.model],
                    verifying,
                    concurrency[t.uid],
                    timeouts,
                    lag,
                )
                for t in eligible
            )
        )
    finally:
        lag.stop()
    results = dict(zip((t.uid for t in eligible), per_target))
    return score_round(seed, targets, results, history, evidence, round_index, sequential, organic, block, service, probed)


def probed_models(
    round_index: int, models: Iterable[str], every: int, targets: Sequence[Target] = (), standings: Optional[Mapping[str, tuple[int, Standing]]] = None
) -> set[str]:
    """The models whose miners round ``round_index`` probes for capacity: all of them or none, once
    every ``every`` rounds, and at once when a miner was never scored (a newcomer earns nothing
    before its capacity is measured; a banned or reset miner keeps its record, so it cannot force a
    probe a round). Every miner of every model at the same moment: hotkeys in front of one engine,
    or engines of different models sharing one GPU, are measured sharing it — models probed in
    turns would each find the GPU whole. Knowing the schedule buys a miner nothing: what it
    delivers is verified, and everything it shares hardware with is probed with it."""
    models = set(models)
    new = any(t.model in models and t.hotkey not in (standings or {}) for t in targets)
    return models if new or round_index % max(1, every) == 0 else set()


def probe_sizes(targets: Iterable[Target], probing: Collection[str], probe_concurrency: int) -> dict[int, int]:
    """uid → the requests a probed miner is sent at once: its declared capacity, at most ``probe_concurrency``."""
    return {t.uid: min(t.capacity, probe_concurrency) for t in targets if t.model in probing}


def challenge_count(challenges_per_miner: int, probed: int = 0) -> int:
    """Challenges a miner is sent in a round (before a suspect's extra): a probe's ``PROBE_WAVES`` × its concurrency at least."""
    return max(challenges_per_miner, PROBE_WAVES * probed)


def score_round(
    seed: int,
    targets: list[Target],
    results: Mapping[int, list[Result]],
    history: Optional[Mapping[str, Sequence[bool]]],
    evidence: Optional[Mapping[str, Evidence]],
    round_index: int,
    sequential: SequentialParams = SequentialParams(),
    organic: Sequence[UserVerdict] = (),
    block: Optional[int] = None,
    service: Optional[Mapping[int, ServiceCounts]] = None,
    probed: Optional[Mapping[int, int]] = None,
) -> RoundReport:
    """The round's report from each queried miner's results (uid → results in challenge order)
    and the verdicts on users' answers: what ``run_round`` returns, and what ``slmnet validator
    replay`` recomputes from a record. A user's answer weighs like a challenge's: its evidence
    pools with the challenges' (a miner serving users another model is flagged on it), and a
    failed one makes the round a fidelity failure. What a miner did for users counts too: its
    score is multiplied by the share of the gateways' requests it served and the share of their
    health checks it passed (``service_factor``), so a miner that refuses users, or that users
    cannot reach, earns at most what it serves. ``probed``: uid → the requests it
    was sent at once in its capacity probe; only a probed miner's delivered capacity is measured."""
    report = RoundReport(seed=seed, probed=dict(probed or {}))
    pooled = {t.hotkey: current_evidence(evidence or {}, t, block) for t in targets}
    report.flagged = {t.uid for t in targets if pooled[t.hotkey].flagged}
    users: dict[int, list[UserVerdict]] = {}
    for verdict in organic:
        users.setdefault(verdict.uid, []).append(verdict)
    stats = {}
    for target in targets:
        answers = results.get(target.uid)
        mine = [v for v in users.get(target.uid, ()) if v.hotkey == target.hotkey]
        if answers is None and not mine:
            continue
        report.results += answers or []
        user_stats = [Result(target.uid, target.hotkey, "organic", Outcome("ok", v.passed), stats=v.stats) for v in mine]
        pooled[target.hotkey] = pool_evidence(pooled[target.hotkey], target, [*(answers or []), *user_stats], round_index, sequential, block=block)
        if pooled[target.hotkey].flagged:
            report.flagged.add(target.uid)
        failed = [v for v in mine if not v.passed]
        if failed:
            log.warning("uid %s (%s) failed verification on %d user answer(s): %s", target.uid, target.hotkey, len(failed), failed[0].reasons)
        if answers is None:
            continue
        stats[target.uid] = summarize([r.outcome for r in answers], (history or {}).get(target.hotkey, ()))
        if target.uid in report.probed and (measured := stats[target.uid].delivered) is not None:
            report.delivered[target.uid] = measured
        if stats[target.uid].fidelity_failed or failed:
            report.fidelity_failed.add(target.uid)
        if stats[target.uid].buffered:
            log.warning("uid %s (%s) sends its answers in bursts (buffered, not streamed): round score 0, standing from zero", target.uid, target.hotkey)
            report.buffered.add(target.uid)
    report.scores = round_scores(stats, {t.uid: t.model for t in targets if t.uid in stats})
    report.serves = serving_streams(report, stats, targets)
    for target in targets:  # no pay on credit: a score shrinks as the evidence against its miner rises
        if target.uid in report.scores:
            report.scores[target.uid] *= pooled[target.hotkey].credit(sequential) * service_factor((service or {}).get(target.uid))
    report.scores.update({uid: 0.0 for uid in report.flagged | report.fidelity_failed})
    report.evidence = pooled
    return report


def serving_streams(report: RoundReport, stats: Mapping[int, RoundStats], targets: Sequence[Target]) -> dict[int, int]:
    """uid → how many streams a probed miner serves at once at full speed: what it delivered over the
    best per-stream rate among the probed miners of its model (at least 1, at most what it was sent).
    A miner declaring more than its engine serves is found out here, and the gateway admits it so many."""
    model = {t.uid: t.model for t in targets}
    best: dict[str, float] = {}
    for uid in report.delivered:
        if (rate := stats[uid].tokens_per_s_p30) and not stats[uid].fidelity_failed:
            best[model[uid]] = max(best.get(model[uid], 0.0), rate)
    return {uid: max(1, min(report.probed[uid], round(delivered / best[model[uid]]))) for uid, delivered in report.delivered.items() if model[uid] in best}


def service_factor(counts: Optional[ServiceCounts]) -> float:
    """What users could get of a miner since the last round, in [0, 1]: the share of the gateways'
    requests it served (served / served + refused + failed) times the share of their health checks
    it passed. A miner no gateway can reach is never routed a user, so it refuses none; the checks
    are where that shows: time it declared capacity and failed them counts like refusing. 1 where
    the gateways saw nothing (no gateway read, or none that knows the miner yet)."""
    if counts is None:
        return 1.0
    asked = counts.served + counts.refused + counts.failed
    served = counts.served / asked if asked else 1.0
    reachable = (counts.checked - counts.unreachable) / counts.checked if counts.checked else 1.0
    return served * max(0.0, reachable)


def current_evidence(evidence: Mapping[str, Evidence], target: Target, block: Optional[int] = None) -> Evidence:
    """The target's evidence about the model it serves now: carried across any other change of its
    declaration; a flag holds (whatever it declares) until ``FLAG_HOLD_BLOCKS`` after it was raised."""
    known = evidence.get(target.hotkey)
    if known is not None and known.held(block):
        return known
    return known if known is not None and not known.flagged and known.model == target.model else Evidence(target.model)


def pool_evidence(
    evidence: Evidence,
    target: Target,
    results: list[Result],
    round_index: int,
    sequential: SequentialParams,
    announce: bool = True,
    block: Optional[int] = None,
) -> Evidence:
    was_flagged = evidence.flagged
    for result in results:
        if result.stats is not None:
            evidence = evidence.add(result.stats, target.tolerance, round_index, sequential, block)
    if announce and evidence.flagged and not was_flagged:
        log.warning(
            "uid %s (%s) flagged: its answers do not come from %s in %s (%d answers, %d/%d choices mismatched, %d/%d logprobs off; evidence %.1f ≥ %.1f); weight 0 for %d blocks, whatever it declares",
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
            FLAG_HOLD_BLOCKS,
        )
    return evidence

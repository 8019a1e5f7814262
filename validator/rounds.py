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
import logging
import time
from dataclasses import replace
from typing import Any, Collection, Iterable, Mapping, Optional, Sequence

import aiohttp

from scoring.aggregate import Outcome, Standing
from scoring.fidelity import Verdict
from scoring.latency import StreamTiming, measure
from signed.client import MinerClient
from validator.challenges import REPLAY, Challenge, UserPrompts, generate, grade, miner_seed
from validator.query import LoopLag, QueryResult, Timeouts, ask
from validator.records import Result, RoundInputs, RoundReport, Target
from validator.round_score import current_evidence, score_round
from validator.verify import ReferenceEngine, ReferenceFailed, verify

log = logging.getLogger(__name__)

PROBE_CONCURRENCY = 64  # the most requests a capacity probe sends one miner at once (--probe-concurrency)
LIGHT_CONCURRENCY = 4  # requests in flight to one miner outside its capacity probe
PROBE_WAVES = 2  # a probe sends twice its concurrency: the second half keeps the slots full while the first ends


def outcome_of(
    challenge: Challenge,
    family: str,
    verdict: Verdict,
    text: str,
    chunks: tuple[tuple[float, int], ...],
    sent_at: Optional[float] = None,
    done_at: Optional[float] = None,
) -> Outcome:
    """A verified answer's outcome, in a live round and in its replay alike. ``family``: what was sent in
    ``challenge``'s place (``REPLAY`` for a user's prompt); ``chunks``: (seconds after sending, tokens) per chunk.
    Speed only where no cache could have bought it: a replayed user prompt may sit in the miner's prefix cache (it
    served that user), a freshly generated one cannot. The grader reads the text the verifier bound to the ids."""
    timing = StreamTiming(0.0, tuple(at for at, _ in chunks), tuple(n for _, n in chunks))
    speed = measure(timing) if chunks and family != REPLAY else None
    correct = grade(challenge.answer, text) if family != REPLAY and challenge.answer is not None and verdict.passed else None
    return Outcome("ok", verdict.passed, correct, speed, chunks, sent_at, done_at)


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
    outcome = outcome_of(challenge, challenge.family, verdict, response.text, timing.relative())
    if not verdict.passed:
        log.warning("uid %s (%s) failed verification on %s: %s", target.uid, target.hotkey, challenge.family, "; ".join(verdict.reasons))
    # What a replay needs of the answer: the ids and logprobs the verdict was reached on, and the timing, unrounded
    # (seconds after sending, tokens) per chunk, so a replay's speeds equal the round's.
    record = response.model_copy(update={"chunks": list(timing.relative())})
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
    inputs: RoundInputs,
    targets: list[Target],
    references: Mapping[str, ReferenceEngine],
    challenges_per_miner: int,
    probing: Collection[str] = (),
    users: Optional[Mapping[str, UserPrompts]] = None,
    timeouts: Optional[Timeouts] = None,
    probe_concurrency: int = PROBE_CONCURRENCY,
    verify_concurrency: int = 4,
) -> RoundReport:
    """Query, verify and score every target; miners whose model has no reference are skipped. A miner already
    flagged under its current declaration (``inputs.evidence``) is not queried and scores 0; a suspect gets more
    challenges (``inputs.sequential``). ``probing``: the models whose miners this round probes for capacity
    (``probed_models``); ``users``: model → what its users recently sent, for challenges that look like it."""
    timeouts = timeouts or Timeouts()
    verifying = asyncio.Semaphore(verify_concurrency)
    already = {t.hotkey: current_evidence(inputs.evidence, t, inputs.block) for t in targets}
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
                        miner_seed(inputs.seed, t.hotkey),
                        already[t.hotkey].challenges(challenge_count(challenges_per_miner, probed.get(t.uid, 0)), inputs.sequential),
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
    return score_round(inputs, targets, dict(zip((t.uid for t in eligible), per_target)), probed)


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

"""A round's report from its results: each miner's evidence pooled (challenges' and users' answers alike), its
round stats and score, what users could get of it (``service_factor``), how many streams a probed miner served.
Pure: the live round (``validator.rounds``), the replay and the network simulation all score through it."""

from __future__ import annotations

import logging
from typing import Mapping, Optional, Sequence

from protocol.records import ServiceCounts
from scoring.aggregate import Outcome, RoundStats, round_scores, summarize
from scoring.evidence import FLAG_HOLD_BLOCKS, Evidence, SequentialParams
from validator.records import Result, RoundInputs, RoundReport, Target, UserVerdict

log = logging.getLogger(__name__)


def score_round(inputs: RoundInputs, targets: list[Target], results: Mapping[int, list[Result]], probed: Optional[Mapping[int, int]] = None) -> RoundReport:
    """The round's report from each queried miner's results (uid → results in challenge order)
    and the verdicts on users' answers: what ``run_round`` returns, and what ``slmnet validator
    replay`` recomputes from a record. A user's answer weighs like a challenge's: its evidence
    pools with the challenges' (a miner serving users another model is flagged on it), and a
    failed one makes the round a fidelity failure. What a miner did for users counts too: its
    score is multiplied by the share of the gateways' requests it served and the share of their
    health checks it passed (``service_factor``), so a miner that refuses users, or that users
    cannot reach, earns at most what it serves. ``probed``: uid → the requests it
    was sent at once in its capacity probe; only a probed miner's delivered capacity is measured."""
    block, round_index, sequential = inputs.block, inputs.round_index, inputs.sequential
    report = RoundReport(seed=inputs.seed, probed=dict(probed or {}))
    pooled = {t.hotkey: current_evidence(inputs.evidence, t, block) for t in targets}
    report.flagged = {t.uid for t in targets if pooled[t.hotkey].flagged}
    users: dict[int, list[UserVerdict]] = {}
    for verdict in inputs.organic:
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
        stats[target.uid] = summarize([r.outcome for r in answers], inputs.history.get(target.hotkey, ()))
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
            report.scores[target.uid] *= pooled[target.hotkey].credit(sequential) * service_factor(inputs.service.get(target.uid))
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

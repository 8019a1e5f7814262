"""The subnet at network scale, simulated with its own code: miners, validators, cheats, churn.

Each validator runs the project's real scoring on synthetic answers: ``validator.round_score.score_round``
(per-miner pooled evidence, hard failures, buffering, round scores), ``validator.standings``
(rewards, organic verdicts, the fold into standings), ``scoring.weights.to_weights``; once a
tempo every validator's weights go through the localnet's Yuma epoch
(``chain.localnet.yuma.epoch``, the code the localnet runs). Nothing of them is copied here:
only the answers are synthetic, drawn per answer from the rates measured in
``docs/calibration.md`` (SmolLM2-135M, bf16 declarations unless said), listed in ``KINDS``.

Assumed, not measured (each a flag or a constant below): one tempo is 72 minutes (360 blocks
of 12 s: 20 tempos a day); a validator runs ``--rounds`` rounds a tempo; honest GPU speeds are
log-normal (median 120 tokens/s, TTFT 0.2 s); answers have 24-256 tokens, 35% of them
informative, after a 60-token prompt; the model answers 45% of checkable tasks right (70% of
challenges are checkable); stake is Pareto (shape 1.16: 80/20).

What a cheat gets is its pay (Yuma incentive) against an honest miner's: a cheat is *caught*
from the tempo after which it is never again paid 1% of the mean honest miner's incentive.

    python -m bench.network_sim [--miners 256] [--validators 64] [--tempos 50] [--seeds 2] [--json]
    python -m bench.network_sim --sweep [--json]   # reference compute and detection as miners grow
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import statistics
import sys
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np

from chain.localnet import yuma
from gateway.router import sample_share
from models.subnet import ModelList, SupportedModel
from protocol.records import ServiceCounts
from scoring.aggregate import BUFFERED_WINDOW, AggregationParams, Outcome
from scoring.evidence import SequentialParams
from scoring.fidelity import AnswerStats
from scoring.latency import Speed
from scoring.weights import CAPACITY_EXPONENT, to_weights
from validator.records import Result, RoundInputs, Target, UserVerdict
from validator.round_score import score_round
from validator.rounds import challenge_count, probe_sizes, probed_models
from validator.standings import Standings, apply_rewards, capacities, effective_scores, fold

MODEL = "smollm2-135m"
TEMPOS_PER_DAY = 20  # 360 blocks of 12 s
TEMPO_SECONDS = 86_400 / TEMPOS_PER_DAY
FULL_VALIDATORS = 64  # the validator set a miner's challenge load is counted for
CHALLENGES_PER_ROUND = 4  # the sweep over rounds a tempo
RAMP_WINDOW = 10  # tempos a newcomer must have had on the subnet for its ramp to count
CHECKABLE_SHARE = 0.7
ACCURACY = 0.45  # honest SmolLM2 on the checkable families (assumed)
INFORMATIVE_SHARE = 0.35  # 43 of ~120 tokens in the calibration runs
PROMPT_TOKENS = 60
ANSWER_TOKENS = (24, 256)


@dataclass(frozen=True)
class Kind:
    """How a kind of miner answers: per-answer rates over informative positions, and what it is worth to users."""

    dtype: str  # what it declares
    mismatch: float  # share of judged choices that are not the declared model's
    exceed: float  # share of reported logprobs beyond the dtype's tolerance
    hard_fail: float = 0.0  # share of answers that fail a single-answer check
    burst: Optional[float] = None  # share of judged answers that arrive in one burst (None: the honest rate)
    accuracy: float = ACCURACY
    speed: float = 1.0  # tokens/s against an honest miner on the same hardware
    users_get: Optional[str] = None  # the kind whose answers its users get, when it serves them otherwise
    value: float = 1.0  # what its service is worth to users, per unit of honest capacity
    cheat: bool = True
    declares: float = 1.0  # the capacity it declares over the streams its engine serves
    shares: int = 1  # hotkeys in front of its engine, probed at the same moment
    reachable: bool = True  # whether gateways reach it (a dark miner fails their health checks and answers validators only)


# Rates under the declared dtype's tolerance, from docs/calibration.md Run 2 (SmolLM2-135M):
# honest bf16 is the worst honest stack measured (transformers bf16: 0.08% mismatches, 2.4%
# exceedances); int8, fp8, noise 1e-2 declaring bf16; int4 fails every answer; a bf16 engine
# declaring fp32 (0.54% / 37.5% under fp32's tolerance); a sampler with its own RNG (34% of
# choices, tiny model, Run 2 notes). The two-faced miner answers challenges honestly and users
# with int8 (users' sampled answers pool into the same evidence as challenges');
# the refuser answers challenges and refuses users; the dark miner answers challenges and fails
# every gateway's health check, so no user is ever routed to it; the steerer solves the checkable
# families from the public generator and forces the graded answer's tokens, within the evidence
# budget (4× honest bf16's mismatches); a sybil is one of two hotkeys on one engine
# (each declares and is worth half of it: its service is real, the question is whether two
# hotkeys are paid more than one); the over-declarer claims 4× the streams its engine serves;
# the burster holds every answer back and sends it whole.
KINDS: dict[str, Kind] = {
    "honest-fp32": Kind("float32", 0.0, 0.0, cheat=False),
    "honest-bf16": Kind("bfloat16", 0.000758, 0.0243, cheat=False),
    "int8": Kind("bfloat16", 0.00799, 0.172, accuracy=0.43, speed=1.3, value=0.0),
    "fp8": Kind("bfloat16", 0.0731, 0.497, accuracy=0.40, speed=1.3, value=0.0),
    "noise-1e-2": Kind("bfloat16", 0.00852, 0.209, accuracy=0.42, value=0.0),
    "int4": Kind("bfloat16", 0.272, 0.741, hard_fail=1.0, accuracy=0.2, speed=1.6, value=0.0),
    "bf16-as-fp32": Kind("float32", 0.00541, 0.375, speed=1.5, value=0.5),
    "own-rng": Kind("bfloat16", 0.34, 0.0243, value=0.5),
    "burster": Kind("bfloat16", 0.000758, 0.0243, burst=1.0, value=0.5),
    "two-faced": Kind("bfloat16", 0.000758, 0.0243, users_get="int8", value=0.0),
    "refuser": Kind("bfloat16", 0.000758, 0.0243, value=0.0),
    "dark": Kind("bfloat16", 0.000758, 0.0243, value=0.0, reachable=False),
    "steerer": Kind("bfloat16", 0.003, 0.0243, accuracy=1.0),
    "sybil": Kind("bfloat16", 0.000758, 0.0243, declares=0.5, shares=2),
    "over-declarer": Kind("bfloat16", 0.000758, 0.0243, declares=4.0),
}
CHEATS = tuple(name for name, kind in KINDS.items() if kind.cheat)


@dataclass(frozen=True)
class Settings:
    miners: int = 256
    validators: int = 64
    tempos: int = 50
    rounds: int = 2  # rounds a validator runs each tempo
    challenges: int = 8  # challenges per miner per tempo, spread over the rounds
    verify_share: float = 0.05  # of users' answers, verified by the gateway's validator
    users_per_tempo: float = 40.0  # users' answers per miner per tempo through the gateways a validator reads
    health_checks: int = 12  # health checks a gateway sends each miner between two rounds (every 5 s... of a round's 60 s here)
    gateway_share: float = 1.0  # of validators (by count, the smallest stake first: the worst case), those that run a gateway
    shared_gateways: bool = True  # every validator reads every gateway it trusts; False: only those that run one see users
    cheat_share: float = 0.2  # of miners, spread evenly over the cheat kinds
    cheats: tuple[str, ...] = CHEATS
    churn_per_day: float = 8.0  # miners replaced per day (a new hotkey, a kind drawn like the first ones)
    bf16_share: float = 0.5  # of honest miners
    speed_sigma: float = 0.5  # spread of honest GPU speeds: log-normal sigma around 120 tokens/s and a 0.2 s TTFT
    honest_burst: float = 0.05  # an honest answer judged a burst (calibration: 3.9% of 1000 on busy vCPUs, up to 16%)
    probe_every: int = 2  # rounds between capacity probes: one a tempo here (validator.config's 4 of its 16 rounds a tempo)
    probe_concurrency: int = 16  # (validator.config: 64; smaller here, with smaller engines, to keep the run short)
    aggregation: AggregationParams = field(default_factory=AggregationParams)
    sequential: SequentialParams = field(default_factory=SequentialParams)

    @property
    def per_round(self) -> int:
        return max(1, self.challenges // self.rounds)


@dataclass(frozen=True)
class Miner:
    hotkey: str
    kind: str
    joined: int  # tempo it registered in
    rate: float  # tokens/s it serves one request at, honest hardware
    ttft: float  # seconds
    capacity: int  # requests in flight its engine serves at full speed

    @property
    def declared(self) -> int:
        return max(1, round(self.capacity * KINDS[self.kind].declares))

    def worth(self) -> float:
        """What the miner delivers to users: verified capacity (its share of its engine) times how good its answers are."""
        return KINDS[self.kind].value * self.rate * self.capacity / KINDS[self.kind].shares

    def stream_rate(self, streams: int) -> float:
        """Tokens/s each of ``streams`` requests sent to it at once gets (its twins on the engine are sent as many)."""
        return self.rate * min(1.0, self.capacity / (streams * KINDS[self.kind].shares))


def roster(settings: Settings, seed: int) -> tuple[list[Miner], list[list[int]]]:
    """Every miner that ever registers, and per tempo the miner at each uid (churn replaces some)."""
    rng = np.random.default_rng([seed, 0])
    miners: list[Miner] = []

    def new(joined: int, kind: Optional[str] = None) -> int:
        if kind is None:
            cheat = rng.random() < settings.cheat_share and settings.cheats
            kind = str(rng.choice(settings.cheats)) if cheat else ("honest-bf16" if rng.random() < settings.bf16_share else "honest-fp32")
        miners.append(
            Miner(
                hotkey=f"m{len(miners)}",
                kind=kind,
                joined=joined,
                rate=float(rng.lognormal(math.log(120), settings.speed_sigma)),
                ttft=float(rng.lognormal(math.log(0.2), 0.4)),
                capacity=int(rng.choice([2, 4, 8, 16])),
            )
        )
        return len(miners) - 1

    cheats = round(settings.cheat_share * settings.miners)
    first = [new(0, settings.cheats[i % len(settings.cheats)]) for i in range(cheats if settings.cheats else 0)]
    first += [new(0, "honest-bf16" if rng.random() < settings.bf16_share else "honest-fp32") for _ in range(settings.miners - len(first))]
    rng.shuffle(first)
    at = [list(first)]
    for tempo in range(1, settings.tempos):
        uids = list(at[-1])
        for uid in rng.choice(settings.miners, size=rng.poisson(settings.churn_per_day / TEMPOS_PER_DAY), replace=False):
            uids[uid] = new(tempo)
        at.append(uids)
    return miners, at


@dataclass
class ValidatorSim:
    """One validator's state across tempos: exactly what the live validator keeps in SQLite."""

    index: int
    seed: int
    standings: Standings = field(default_factory=dict)
    evidence: dict = field(default_factory=dict)
    history: dict = field(default_factory=lambda: defaultdict(lambda: deque(maxlen=BUFFERED_WINDOW)))
    round_index: int = 0
    answers: int = 0
    reference_tokens: int = 0
    zeroed: set = field(default_factory=set)  # honest hotkeys this validator ever set to zero after they earned

    sees_users: bool = True  # it reads a gateway: service counts and users' answers reach it

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng([self.seed, 1, self.index])


def _answers(
    rng: np.random.Generator, group: list[Miner], count: int, settings: Settings, probe: Optional[list[int]] = None
) -> list[list[tuple[Outcome, AnswerStats, int]]]:
    """``count`` challenge answers from each miner of ``group``, drawn at once: (outcome, evidence counts, tokens).
    ``probe``: the requests each was sent at once in a capacity probe (its answers then carry the probe's
    clock, and each stream gets its share of the engine); None outside a probe."""
    kinds = [KINDS[m.kind] for m in group]
    shape = (len(group), count)
    column = lambda values: np.array(values, dtype=float)[:, None]  # noqa: E731
    fail_rate = column([k.hard_fail for k in kinds])
    burst_rate = column([settings.honest_burst if k.burst is None else k.burst for k in kinds])
    tokens = rng.integers(*ANSWER_TOKENS, size=shape)
    informative = rng.binomial(tokens, INFORMATIVE_SHARE)
    mismatches = rng.binomial(informative, column([k.mismatch for k in kinds]))
    exceedances = rng.binomial(informative, column([k.exceed for k in kinds]))
    failed = rng.random(shape) < fail_rate
    streams = probe or [1] * len(group)
    rate = column([m.stream_rate(p) * k.speed for m, k, p in zip(group, kinds, streams)]) * rng.lognormal(0, 0.15, shape)
    ttft = column([m.ttft for m in group]) * rng.lognormal(0, 0.3, shape)
    burst = rng.random(shape) < burst_rate
    total = ttft + tokens / rate
    checkable = rng.random(shape) < CHECKABLE_SHARE
    right = rng.random(shape) < column([k.accuracy for k in kinds])
    out = []
    for i in range(len(group)):
        row = []
        for n, inf, mis, exc, fail, first, end, held, check, ok in zip(
            tokens[i].tolist(), informative[i].tolist(), mismatches[i].tolist(), exceedances[i].tolist(), failed[i].tolist(),
            ttft[i].tolist(), total[i].tolist(), burst[i].tolist(), checkable[i].tolist(), right[i].tolist(),
        ):  # fmt: skip
            speed = Speed(ttft=end if held else first, total=end, tokens=n, tokens_per_s=n / end, streamed=not held)
            row.append((Outcome("ok", not fail, float(ok) if check else None, speed), AnswerStats(inf, mis, inf, exc), n))
        if probe is not None:  # waves of probe[i] at once: each request leaves when one before it is done
            done: list[float] = []
            for j, (outcome, stats, n) in enumerate(row):
                sent = done[j - probe[i]] if j >= probe[i] else 0.0
                done.append(sent + outcome.speed.total)
                chunks = _chunks(outcome.speed)
                row[j] = (replace(outcome, sent_at=sent, done_at=done[-1], chunks=chunks), stats, n)
        out.append(row)
    return out


def _chunks(speed: Speed, parts: int = 8) -> tuple[tuple[float, int], ...]:
    """An answer's tokens in ``parts`` chunks spread evenly from its first token to its last (a burst: one chunk)."""
    if not speed.streamed or speed.tokens < parts:
        return ((speed.total, speed.tokens),)
    step = (speed.total - speed.ttft) / (parts - 1)
    sizes = [speed.tokens // parts + (1 if i < speed.tokens % parts else 0) for i in range(parts)]
    return tuple((speed.ttft + i * step, size) for i, size in enumerate(sizes))


def validator_tempo(sim: ValidatorSim, miners: list[Miner], uids: list[int], settings: Settings, models: ModelList) -> dict[int, float]:
    """One tempo of one validator: its rounds, then the weights it sets (uid → weight)."""
    hotkeys = {uid: miners[m].hotkey for uid, m in enumerate(uids)}
    targets = [Target(uid, miners[m].hotkey, "", MODEL, miners[m].declared, KINDS[miners[m].kind].dtype, miners[m].hotkey) for uid, m in enumerate(uids)]
    rng = sim.rng
    for _ in range(settings.rounds):
        # the live round does not query a flagged miner
        queried = [t for t in targets if not (known := sim.evidence.get(t.hotkey)) or not known.flagged]
        group = [miners[uids[t.uid]] for t in queried]
        results: dict[int, list[Result]] = {}
        probing = probed_models(sim.round_index, {MODEL}, settings.probe_every, queried, sim.standings)
        probed = probe_sizes(queried, probing, settings.probe_concurrency)
        # a probe sends each miner as many at once as it declares, and as many again to keep them full
        count = challenge_count(settings.per_round, max(probed.values(), default=0))
        answered = _answers(rng, group, count, settings, [probed[t.uid] for t in queried] if probing else None)
        for target, answers in zip(queried, answered):
            answers = answers[: challenge_count(settings.per_round, probed.get(target.uid, 0))]
            results[target.uid] = [
                Result(target.uid, target.hotkey, "sim", o, stats=stats) for o, stats, _ in answers
            ]  # as the live _judge: failed answers count too
            sim.reference_tokens += sum(PROMPT_TOKENS + n for _, _, n in answers)
        # users' answers the gateway hands over, judged like challenges: a refuser answers no user, so none of its is sampled;
        # a dark miner is never routed one (it fails the gateway's health checks); a validator that reads no gateway sees none
        reachable = [KINDS[m.kind].reachable and sim.sees_users for m in group]
        routed = (rng.poisson(settings.users_per_tempo / settings.rounds, len(group)) * np.array(reachable)).tolist()
        # the gateway's share per miner follows its validator's verdict (more for the new and the suspect)
        judged = [sim.evidence.get(t.hotkey) for t in queried]
        shares = [sample_share(settings.verify_share, e.answers if e else 0, e.level(settings.sequential) if e else 0.0) for e in judged]
        sampled = rng.binomial(routed, shares).tolist()
        # what the gateways report each served and how many of their health checks it passed: a refuser served none of
        # the users routed to it, a dark miner passed no check
        checks = settings.health_checks
        service = (
            {
                t.uid: ServiceCounts(
                    served=0 if m.kind == "refuser" else n,
                    refused=n if m.kind == "refuser" else 0,
                    checked=checks,
                    unreachable=0 if KINDS[m.kind].reachable else checks,
                )
                for t, m, n in zip(queried, group, routed)
            }
            if sim.sees_users
            else {}
        )
        serving = [replace(m, kind=KINDS[m.kind].users_get or m.kind) for m in group]
        drawn = _answers(rng, serving, max(sampled, default=0), settings) if any(sampled) else [[] for _ in group]
        handed = [(target, answers[:users]) for target, miner, users, answers in zip(queried, group, sampled, drawn) if miner.kind != "refuser"]
        verdicts = [UserVerdict(t.uid, t.hotkey, bool(outcome.fidelity_passed), "sim", stats) for t, answers in handed for outcome, stats, _ in answers]
        sim.reference_tokens += sum(PROMPT_TOKENS + n for _, answers in handed for _, _, n in answers)
        sim.answers += sum(len(r) for r in results.values()) + len(verdicts)
        history = {hotkey: list(flags) for hotkey, flags in sim.history.items()}
        inputs = RoundInputs(
            seed=sim.round_index,
            round_index=sim.round_index,
            history=history,
            evidence=sim.evidence,
            organic=verdicts,
            service=service,
            sequential=settings.sequential,
        )
        report = score_round(inputs, targets, results, probed)
        apply_rewards(report, targets, models)
        for result in report.results:
            if result.streamed is not None:
                sim.history[result.hotkey].append(result.streamed)
        sim.evidence.update(report.evidence)
        before = sim.standings
        sim.standings = fold(before, hotkeys, report, sim.round_index, settings.aggregation)
        for uid in report.fidelity_failed | report.flagged | report.buffered:
            miner = miners[uids[uid]]
            earned = before.get(miner.hotkey, (uid, None))[1]
            if not KINDS[miner.kind].cheat and earned is not None and earned.ema > 0:
                sim.zeroed.add(miner.hotkey)
        sim.round_index += 1
    return to_weights(effective_scores(sim.standings, settings.aggregation, sim.round_index), capacities(sim.standings))


def run_validators(job: tuple[Settings, int, list[int], list[Miner], list[list[int]]]) -> tuple[np.ndarray, dict]:
    """Every tempo of a group of validators (validators are independent until Yuma): their weight rows."""
    settings, seed, indices, miners, at = job
    models = ModelList(version=1, models=(SupportedModel(id=MODEL, source="prepared:smollm2-135m", max_context=2048),))
    sims = [ValidatorSim(index, seed, sees_users=settings.shared_gateways or index < round(settings.gateway_share * settings.validators)) for index in indices]
    rows = np.zeros((settings.tempos, len(sims), settings.miners), dtype=np.float32)
    for tempo in range(settings.tempos):
        for i, sim in enumerate(sims):
            for uid, w in validator_tempo(sim, miners, at[tempo], settings, models).items():
                rows[tempo, i, uid] = w
    counts = {
        "answers": sum(s.answers for s in sims),
        "reference_tokens": sum(s.reference_tokens for s in sims),
        "zeroed": sorted({h for s in sims for h in s.zeroed}),
        "zeroed_events": sum(len(s.zeroed) for s in sims),
    }
    return rows, counts


def simulate(settings: Settings, seed: int, workers: int) -> dict:
    """One seeded run: the incentive each uid gets each tempo, and what the validators did."""
    miners, at = roster(settings, seed)
    rng = np.random.default_rng([seed, 2])
    stake = np.sort((rng.pareto(1.16, settings.validators) + 1) * 1000.0)  # validator 0 the smallest: gateway_share counts from it (the worst case)
    groups = [list(range(settings.validators))[i::workers] for i in range(workers)]
    jobs = [(settings, seed, g, miners, at) for g in groups if g]
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(len(jobs)) as pool:
            parts = pool.map(run_validators, jobs)
    else:
        parts = [run_validators(job) for job in jobs]
    rows = np.zeros((settings.tempos, settings.validators, settings.miners))
    for group, (part, _) in zip(groups, parts):
        rows[:, group, :] = part
    v, n = settings.validators, settings.validators + settings.miners
    bonds = np.zeros((n, n))
    incentive = np.zeros((settings.tempos, settings.miners))
    unclipped = np.zeros((settings.tempos, settings.miners))
    vtrust = np.zeros((settings.tempos, settings.validators))
    for tempo in range(settings.tempos):
        weights = np.zeros((n, n))
        weights[:v, v:] = rows[tempo]
        out = yuma.epoch(
            yuma.EpochInput(
                stake=np.concatenate([stake, np.zeros(settings.miners)]),
                validator_permit=np.arange(n) < v,
                weights=weights,
                bonds=bonds,
                active=np.ones(n, dtype=bool),
            )
        )
        bonds = out.bonds
        incentive[tempo] = out.incentive[v:]
        sums = rows[tempo].sum(axis=1, keepdims=True)
        unclipped[tempo] = (stake / stake.sum()) @ np.divide(rows[tempo], sums, out=np.zeros_like(rows[tempo]), where=sums > 0)
        vtrust[tempo] = out.validator_trust[:v]
    zeroed = sorted({h for _, c in parts for h in c["zeroed"]})
    return {
        "miners": miners,
        "at": at,
        "incentive": incentive,
        "unclipped": unclipped,
        "vtrust": vtrust,
        "gateway_stake": float(stake[: round(settings.gateway_share * settings.validators)].sum() / stake.sum()),
        "answers": sum(c["answers"] for _, c in parts),
        "reference_tokens": sum(c["reference_tokens"] for _, c in parts),
        "zeroed": zeroed,
        "zeroed_events": sum(c["zeroed_events"] for _, c in parts),
    }


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1]) if ra.std() > 0 and rb.std() > 0 else 0.0


def figures(settings: Settings, run: dict) -> dict:
    """One run's raw figures: per cheat, the tempos it was paid ≥ 1% of the mean honest miner (inf:
    still paid at the end, or when churn replaced it), its take and its recent pay in units of the mean honest miner; per new
    honest miner, the tempos to half the mean honest pay; honest miners zeroed; the rank
    correlation of pay with what miners deliver; cheats' pay before and after Yuma's clipping."""
    miners, at, incentive = run["miners"], run["at"], run["incentive"]
    honest = np.array([[not KINDS[miners[m].kind].cheat for m in at[t]] for t in range(settings.tempos)])
    honest_mean = np.array([incentive[t][honest[t]].mean() if honest[t].any() else 0.0 for t in range(settings.tempos)])
    paid = defaultdict(list)  # miner index → [(tempo, its pay / the mean honest miner's)]
    for t in range(settings.tempos):
        for uid, m in enumerate(at[t]):
            paid[m].append((t, incentive[t, uid] / honest_mean[t] if honest_mean[t] > 0 else 0.0))
    tail = max(0, settings.tempos - 10)
    cheats: dict[str, dict[str, list[float]]] = {kind: {"paid": [], "take": [], "recent": [], "per_worth": []} for kind in settings.cheats}
    ramp, honest_per_worth = [], []
    for m, series in paid.items():
        miner = miners[m]
        present = series[-1][0] == settings.tempos - 1 and series[0][0] <= tail  # here for the last 10 tempos and more
        recent = statistics.fmean(x for t, x in series if t >= tail) if present else None
        if recent is not None and miner.worth() > 0:
            # Its engine's pay (all the hotkeys in front of it) over worth ** CAPACITY_EXPONENT (the pay an honest hotkey
            # with that engine would get, up to the honest miners' common factor): > 1 is more than one honest hotkey.
            shares = KINDS[miner.kind].shares
            engine = shares * recent / (shares * miner.worth()) ** CAPACITY_EXPONENT
            (honest_per_worth if not KINDS[miner.kind].cheat else cheats[miner.kind]["per_worth"]).append(engine)
        if not KINDS[miner.kind].cheat:
            if 0 < miner.joined <= settings.tempos - RAMP_WINDOW and len(series) >= RAMP_WINDOW:  # a newcomer with time to ramp
                ramp.append(next((float(t - miner.joined) for t, x in series if x >= 0.5), math.inf))
            continue
        above = [t for t, x in series if x >= 0.01]
        still = bool(above) and above[-1] == series[-1][0]  # paid until the end, or until churn replaced it
        cheats[miner.kind]["paid"].append(math.inf if still else float(above[-1] + 1 - miner.joined) if above else 0.0)
        cheats[miner.kind]["take"].append(sum(x for _, x in series))
        if recent is not None:
            cheats[miner.kind]["recent"].append(recent)
    for kind in cheats.values():  # against the honest miners' median
        kind["per_worth"] = [x / statistics.median(honest_per_worth) for x in kind["per_worth"]] if honest_per_worth else []
    worth = np.array([miners[m].worth() for m in at[-1]])
    is_cheat = ~honest
    return {
        "cheats": cheats,
        "ramp": ramp,
        "honest_zeroed": len(run["zeroed"]),
        "days": settings.tempos / TEMPOS_PER_DAY,
        "rank_correlation": _spearman(incentive[tail:].mean(axis=0), worth),
        "cheat_pay_unclipped": float(run["unclipped"][is_cheat].sum()) / settings.tempos,
        "cheat_pay_clipped": float(incentive[is_cheat].sum()) / settings.tempos,
        "vtrust_min": float(run["vtrust"][settings.tempos // 2 :].min()),
        "gateway_stake": run["gateway_stake"],
        "reference_tokens_per_validator_tempo": run["reference_tokens"] / settings.validators / settings.tempos,
    }


def _finite(x: float) -> Optional[float]:
    return None if math.isinf(x) else x


def _combine(per_seed: list[dict], settings: Settings) -> dict:
    """Figures over every seed: per cheat kind its miners pooled; the rest averaged (zeroed counts summed)."""
    kinds = {}
    for kind in settings.cheats:
        paid = [x for f in per_seed for x in f["cheats"][kind]["paid"]]
        take = [x for f in per_seed for x in f["cheats"][kind]["take"]]
        recent = [x for f in per_seed for x in f["cheats"][kind]["recent"]]
        per_worth = [x for f in per_seed for x in f["cheats"][kind]["per_worth"]]
        kinds[kind] = {
            "miners": len(paid),
            "tempos_paid_median": _finite(statistics.median(paid)) if paid else None,
            "tempos_paid_worst": _finite(max(paid)) if paid else None,
            "still_paid": sum(math.isinf(x) for x in paid),
            "take_honest_tempos": statistics.fmean(take) if take else None,
            "pay_ratio": statistics.fmean(recent) if recent else None,
            "engine_pay_vs_honest": statistics.median(per_worth) if per_worth else None,
        }
    mean = lambda key: statistics.fmean(f[key] for f in per_seed)  # noqa: E731
    ramp = [x for f in per_seed for x in f["ramp"]]
    unclipped, clipped = mean("cheat_pay_unclipped"), mean("cheat_pay_clipped")
    return {
        "kinds": kinds,
        "honest_zeroed": sum(f["honest_zeroed"] for f in per_seed),
        "honest_zeroed_per_day": sum(f["honest_zeroed"] for f in per_seed) / sum(f["days"] for f in per_seed),
        "honest_ramp_tempos_median": _finite(statistics.median(ramp)) if ramp else None,
        "rank_correlation": mean("rank_correlation"),
        "cheat_pay_unclipped": unclipped,
        "cheat_pay_clipped": clipped,
        "cheat_pay_clip_ratio": clipped / unclipped if unclipped else 1.0,
        "vtrust_min": min(f["vtrust_min"] for f in per_seed),
        "gateway_stake": mean("gateway_stake"),
        "reference_tokens_per_validator_tempo": mean("reference_tokens_per_validator_tempo"),
    }


def run(settings: Settings, seeds: int, workers: int) -> dict:
    started = time.monotonic()
    per_seed = [figures(settings, simulate(settings, seed, workers)) for seed in range(seeds)]
    result = _combine(per_seed, settings)
    result["seconds"] = time.monotonic() - started
    return result


LIVE_ROUNDS, LIVE_CHALLENGES = 16, 64  # validator.config's defaults: 4 challenges a round, a round every 270 s of a 72-minute tempo


def _worst(result: dict) -> float:
    """The longest any detectable cheat was paid (inf: one still was when the run ended or churn replaced it)."""
    kinds = [k for name, k in result["kinds"].items() if name in DETECTABLE and k["miners"]]
    return max((math.inf if k["still_paid"] else k["tempos_paid_worst"] or 0.0) for k in kinds) if kinds else 0.0


def sweep(
    base: Settings,
    workers: int,
    budgets: tuple[int, ...],
    rounds: tuple[int, ...],
    min_rounds: tuple[int, ...],
    alphas: tuple[float, ...],
    sizes: tuple[int, ...],
) -> dict:
    """Detection, honest zeroes and an honest newcomer's ramp against the challenge budget (in
    ``base.rounds`` rounds), the rounds a tempo (``CHALLENGES_PER_ROUND`` each), and at the live
    schedule the minimum rounds and the EMA's alpha; reference compute as miners grow."""

    def row(settings: Settings) -> dict:
        r = run(settings, 1, workers)
        return {
            "worst_tempos": _worst(r),
            "honest_zeroed": r["honest_zeroed"],
            "honest_ramp_tempos": r["honest_ramp_tempos_median"],
            "cheat_pay_clip_ratio": r["cheat_pay_clip_ratio"],
            "rank_correlation": r["rank_correlation"],
            "reference_tokens_per_validator_tempo": r["reference_tokens_per_validator_tempo"],
            "miner_load_rps": FULL_VALIDATORS * settings.challenges / TEMPO_SECONDS,  # challenges a miner answers a second from a full validator set
            "seconds": r["seconds"],
        }

    live = replace(base, rounds=LIVE_ROUNDS, challenges=LIVE_CHALLENGES)
    by_size = {m: row(replace(base, miners=m)) for m in sizes}
    xs = np.log([float(m) for m in sizes])
    slope = lambda key: float(np.polyfit(xs, np.log([by_size[m][key] for m in sizes]), 1)[0])  # noqa: E731
    return {
        "by_budget": {c: row(replace(base, challenges=c, rounds=min(base.rounds, c))) for c in budgets},
        "by_rounds": {r: row(replace(base, rounds=r, challenges=CHALLENGES_PER_ROUND * r)) for r in rounds},
        "by_min_rounds": {m: row(replace(live, aggregation=replace(base.aggregation, min_rounds=m))) for m in min_rounds},
        "by_alpha": {a: row(replace(live, aggregation=replace(base.aggregation, alpha=a))) for a in alphas},
        "by_size": by_size,
        "reference_tokens_slope": slope("reference_tokens_per_validator_tempo"),
        "sim_seconds_slope": slope("seconds"),
    }


# The kinds the validator's evidence and single-answer checks are built to catch; the others
# (two-faced, refuser, sybil) answer challenges honestly and are the open issues' business.
DETECTABLE = ("int8", "fp8", "noise-1e-2", "int4", "bf16-as-fp32", "own-rng", "burster")


def _fmt(x: Optional[float], never: bool = False) -> str:
    if never or x is not None and math.isinf(x):
        return "never"
    return "—" if x is None else f"{x:.3g}"


def print_table(settings: Settings, result: dict, seeds: int) -> None:
    print(
        f"network: {settings.miners} miners, {settings.validators} validators, {settings.tempos} tempos ({settings.tempos / TEMPOS_PER_DAY:.1f} days), "
        f"{settings.challenges} challenges/miner/tempo in {settings.rounds} rounds, {seeds} seeds, {result['seconds']:.0f} s; "
        f"{'every validator reads every gateway' if settings.shared_gateways else 'a validator sees users through its own gateway only'}; "
        f"validators with a gateway: {settings.gateway_share:.0%} of them, {result['gateway_stake']:.0%} of the stake"
    )
    print(
        f"{'kind':14} {'miners':>6} {'tempos paid p50':>16} {'worst':>6} {'still paid':>10} {'take (honest tempos)':>21} {'pay ratio':>10} {'vs honest engine':>16}"
    )
    for kind, k in result["kinds"].items():
        print(
            f"{kind:14} {k['miners']:6d} {_fmt(k['tempos_paid_median'], k['still_paid'] > k['miners'] / 2):>16} "
            f"{_fmt(k['tempos_paid_worst'], k['still_paid'] > 0):>6} {k['still_paid']:10d} {_fmt(k['take_honest_tempos']):>21} {_fmt(k['pay_ratio']):>10} "
            f"{_fmt(k['engine_pay_vs_honest']):>16}"
        )
    print(
        f"honest miners zeroed: {result['honest_zeroed']} ({result['honest_zeroed_per_day']:.2f}/day); a new honest miner reaches half the mean pay in "
        f"{_fmt(result['honest_ramp_tempos_median'])} tempos (median); rank correlation of pay with worth {result['rank_correlation']:.3f}"
    )
    print(
        f"cheats' pay a tempo: {result['cheat_pay_unclipped']:.4f} of the weights, {result['cheat_pay_clipped']:.4f} after Yuma's clipping "
        f"(ratio {result['cheat_pay_clip_ratio']:.3f}); lowest validator trust {result['vtrust_min']:.3f}; "
        f"reference tokens per validator per tempo {result['reference_tokens_per_validator_tempo']:.3g}"
    )


def print_sweep(result: dict) -> None:
    sweeps = (
        ("challenges/miner/tempo", result["by_budget"]),
        (f"rounds/tempo ({CHALLENGES_PER_ROUND} each)", result["by_rounds"]),
        (f"min_rounds ({LIVE_ROUNDS} rounds/tempo)", result["by_min_rounds"]),
        (f"alpha ({LIVE_ROUNDS} rounds/tempo)", result["by_alpha"]),
        ("miners", result["by_size"]),
    )
    for name, rows in sweeps:
        for value, row in rows.items():
            print(
                f"{name} {value:g}: a detectable cheat paid at worst {_fmt(row['worst_tempos'])} tempos; honest zeroed {row['honest_zeroed']}; "
                f"a new honest miner at half pay in {_fmt(row['honest_ramp_tempos'])} tempos; cheats' pay after clipping {_fmt(row['cheat_pay_clip_ratio'])} of before; "
                f"rank correlation {row['rank_correlation']:.3f}; {row['reference_tokens_per_validator_tempo']:.3g} reference tokens per validator per tempo; "
                f"{row['miner_load_rps']:.2g} challenges/s on each miner from {FULL_VALIDATORS} validators; {row['seconds']:.0f} s"
            )
    print(f"log-log slope against miners: reference tokens {result['reference_tokens_slope']:.2f}, simulation time {result['sim_seconds_slope']:.2f}")


def _json(x: object) -> object:
    return None if isinstance(x, float) and math.isinf(x) else str(x)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = Settings()
    parser.add_argument("--miners", type=int, default=defaults.miners)
    parser.add_argument("--validators", type=int, default=defaults.validators)
    parser.add_argument("--tempos", type=int, default=defaults.tempos)
    parser.add_argument("--rounds", type=int, default=defaults.rounds, help="rounds a validator runs each tempo")
    parser.add_argument("--challenges", type=int, default=defaults.challenges, help="challenges per miner per tempo")
    parser.add_argument("--verify-share", type=float, default=defaults.verify_share, help="share of users' answers verified")
    parser.add_argument("--users", type=float, default=defaults.users_per_tempo, help="users' answers per miner per tempo per gateway")
    parser.add_argument("--gateway-share", type=float, default=defaults.gateway_share, help="share of validators (smallest stake first) that run a gateway")
    parser.add_argument(
        "--own-gateway-only",
        action="store_true",
        help="a validator sees users only through a gateway of its own (default: every validator reads every gateway)",
    )
    parser.add_argument("--cheat-share", type=float, default=defaults.cheat_share)
    parser.add_argument("--cheats", default=",".join(CHEATS), help="cheat kinds, comma-separated: " + ", ".join(CHEATS))
    parser.add_argument("--churn", type=float, default=defaults.churn_per_day, help="miners replaced per day")
    parser.add_argument("--bf16-share", type=float, default=defaults.bf16_share, help="share of honest miners serving bf16")
    parser.add_argument("--speed-sigma", type=float, default=defaults.speed_sigma, help="spread of honest GPU speeds (log-normal sigma)")
    parser.add_argument("--honest-burst", type=float, default=defaults.honest_burst, help="share of an honest miner's answers judged bursts")
    parser.add_argument("--seeds", type=int, default=2, help="seeded runs; kinds are pooled across them (2 keep the default run under 10 minutes here)")
    parser.add_argument("--workers", type=int, default=multiprocessing.cpu_count())
    parser.add_argument("--sweep", action="store_true", help="detection by challenge budget, and reference compute by network size")
    parser.add_argument("--json", action="store_true", help="end with one JSON object")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # the validator's per-miner warnings, thousands a tempo here
    cheats = tuple(c for c in args.cheats.split(",") if c)
    unknown = [c for c in cheats if c not in CHEATS]
    if unknown:
        parser.error(f"unknown cheat kinds: {', '.join(unknown)}")
    settings = Settings(
        miners=args.miners,
        validators=args.validators,
        tempos=args.tempos,
        rounds=args.rounds,
        challenges=args.challenges,
        verify_share=args.verify_share,
        users_per_tempo=args.users,
        gateway_share=args.gateway_share,
        shared_gateways=not args.own_gateway_only,
        cheat_share=args.cheat_share,
        cheats=cheats,
        churn_per_day=args.churn,
        bf16_share=args.bf16_share,
        speed_sigma=args.speed_sigma,
        honest_burst=args.honest_burst,
    )
    if args.sweep:
        base = replace(settings, miners=min(settings.miners, 128), tempos=min(settings.tempos, 20), validators=min(settings.validators, 16))
        result = sweep(base, args.workers, (2, 4, 8, 16), (2, 4, 8, 16), (4, 8, 16), (0.05, 0.1, 0.2), (128, 256, 512, 1024))
        print_sweep(result)
    else:
        result = run(settings, args.seeds, args.workers)
        print_table(settings, result, args.seeds)
    if args.json:
        print(json.dumps(result, default=_json))
    return 0


if __name__ == "__main__":
    sys.exit(main())

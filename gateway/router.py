"""Routing: which miner gets a request, and in which order the others are tried after it.

Candidates are the miners whose on-chain declaration names the requested model, that
answer ``/health``, that the validator's latest verdict does not hold out (flagged: its
evidence says another model; failing: an answer failed verification in its last round),
whose circuit breaker is closed (or half-open for one trial) and that have a free slot
(requests in flight below its capacity: the declared one, or fewer where the validator's
capacity probe found it serves fewer streams at full speed). Each gets a weight

    (incentive + INCENTIVE_FLOOR) × reliability² × speed × headroom

- incentive: the miner's on-chain incentive, normalized over the candidates (the
  validators' judgement: fidelity, quality, speed over many rounds); the floor lets an
  unproven miner be picked at all;
- reliability: 1 − EWMA of its error rate at this gateway;
- speed: ½ best TTFT / its TTFT + ½ its tokens/s / best tokens/s, both EWMAs of what this
  gateway measured (1 until measured: new miners are not punished for being new);
- headroom: 1 − in flight / capacity (that capacity): users' traffic flows to the miners
  in proportion to the capacity they really have, as the weights pay for it.

The first pick is random in proportion to weight (load spreads, no herd on one miner);
with probability ``explore`` it is instead uniform among the candidates, so new miners
earn a live record. The rest follow by weight, for failover. A breaker opens after
``BREAKER_FAILURES`` consecutive failures, for a cooldown that doubles up to
``BREAKER_MAX_COOLDOWN_S``; after it one trial request is let through (half-open).

How many of a miner's answers go to the validator (``verify_share``) follows its verdict:
the base share for a miner the evidence has judged, ``NEW_FACTOR`` times it for one with
fewer than ``NEW_ANSWERS`` judged answers (or none yet), and up to ``SUSPECT_FACTOR`` times it
as its evidence rises toward the flag — so a miner serving users a cheaper copy is looked
at more the more it looks like one, while the validator's work stays bounded (it verifies at
most ``validator.organic.SAMPLES_PER_ROUND`` a round, fewest-seen miners first).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

from gateway.auto import AutoRouter
from protocol.records import MinerVerdict

EWMA_ALPHA = 0.2
INCENTIVE_FLOOR = 0.02
BREAKER_FAILURES = 3
BREAKER_COOLDOWN_S = 5.0
BREAKER_MAX_COOLDOWN_S = 300.0
NEW_ANSWERS = 64  # judged answers under which a miner counts as new
NEW_FACTOR = 4.0
SUSPECT_FACTOR = 10.0  # at evidence 1 (the flag): the share grows linearly with the evidence up to this


@dataclass
class MinerView:
    """What the gateway knows about one miner: from the chain, and from its own traffic."""

    uid: int
    hotkey: str
    url: str
    model: str
    capacity: int
    incentive: float = 0.0
    max_context: int = 0  # declared on chain: the longest prompt + completion it takes
    healthy: bool = True
    ttft: Optional[float] = None  # EWMA seconds
    tokens_per_s: Optional[float] = None  # EWMA
    error_rate: float = 0.0  # EWMA of 0/1
    in_flight: int = 0
    requests: int = 0
    errors: int = 0
    consecutive_failures: int = 0
    open_until: float = 0.0
    cooldown: float = BREAKER_COOLDOWN_S
    trial_in_flight: bool = False
    sampled: int = 0  # answers put in the organic outbox for a validator to verify
    verdict: Optional[MinerVerdict] = None  # the validator's latest word on it (None: none yet)
    history: list[tuple[float, Optional[float], Optional[float], float]] = field(default_factory=list)  # (time, ttft, tok/s, errors)

    @property
    def serves(self) -> int:
        """Requests it is given at once: its declared capacity, or what its validator's capacity probe found it serves."""
        found = self.verdict.serves if self.verdict is not None and self.verdict.model == self.model else None
        return min(self.capacity, found) if found else self.capacity

    def breaker(self, now: float) -> str:
        if self.consecutive_failures < BREAKER_FAILURES:
            return "closed"
        return "open" if now < self.open_until or self.trial_in_flight else "half-open"

    @property
    def held_out(self) -> bool:
        """Whether its validator's verdict keeps users from it (flagged or failing, on the model it serves)."""
        return self.verdict is not None and self.verdict.model == self.model and self.verdict.standing != "ok"

    def available(self, now: float) -> bool:
        """Whether a request may go to it now: healthy, not held out, breaker not open, a free slot."""
        return self.healthy and not self.held_out and self.breaker(now) != "open" and self.in_flight < self.serves

    def take(self, now: float) -> bool:
        """Count a request in flight; True when it is the breaker's half-open trial."""
        trial = self.breaker(now) == "half-open"
        self.trial_in_flight = self.trial_in_flight or trial
        self.in_flight += 1
        return trial

    def release(self, trial: bool) -> None:
        """The request ended, however it ended (success, failure, a 429, the user hanging up):
        its slot is free, and so is the trial it was, so the breaker can never stay open for good."""
        self.in_flight -= 1
        if trial:
            self.trial_in_flight = False

    def success(self, ttft: Optional[float], tokens_per_s: Optional[float]) -> None:
        self.requests += 1
        self.error_rate *= 1 - EWMA_ALPHA
        if ttft is not None:
            self.ttft = ttft if self.ttft is None else EWMA_ALPHA * ttft + (1 - EWMA_ALPHA) * self.ttft
        if tokens_per_s is not None:
            self.tokens_per_s = tokens_per_s if self.tokens_per_s is None else EWMA_ALPHA * tokens_per_s + (1 - EWMA_ALPHA) * self.tokens_per_s
        self.consecutive_failures, self.cooldown, self.trial_in_flight = 0, BREAKER_COOLDOWN_S, False

    def failure(self, now: float) -> None:
        self.requests += 1
        self.errors += 1
        self.error_rate = EWMA_ALPHA + (1 - EWMA_ALPHA) * self.error_rate
        self.consecutive_failures += 1
        if self.consecutive_failures >= BREAKER_FAILURES:
            if self.trial_in_flight:  # the half-open trial failed too: wait longer
                self.cooldown = min(BREAKER_MAX_COOLDOWN_S, self.cooldown * 2)
            self.open_until = now + self.cooldown
            self.trial_in_flight = False


def sample_share(base: float, answers: int, evidence: float) -> float:
    """The share of a miner's answers sampled for its validator, from what its evidence says:
    ``answers`` judged so far, ``evidence`` (CUSUM over the flagging threshold, 0 to 1)."""
    factor = NEW_FACTOR if answers < NEW_ANSWERS else 1.0 + (SUSPECT_FACTOR - 1.0) * min(1.0, evidence)
    return min(1.0, base * factor)


STANDINGS = ("ok", "failing", "flagged")  # from the least to the most a validator holds against a miner


def combine(verdicts: Sequence[MinerVerdict], model: Optional[str] = None) -> MinerVerdict:
    """One miner's verdicts from every validator this gateway takes them from, as one: those on ``model`` (what it
    serves now, where any judged it) with the worst standing and the highest evidence any of them holds (a cheat one
    validator caught is out, whatever another posted after it), the fewest streams any measured, and the graded
    answers of the one that pooled the most. Verdicts come only from validators the gateway names, so no stranger's
    word takes an honest miner out."""
    same = [v for v in verdicts if v.model == model] or list(verdicts)
    most = max(same, key=lambda v: v.answers)
    serves = [v.serves for v in same if v.serves is not None]
    return most.model_copy(
        update={
            "standing": max((v.standing for v in same), key=STANDINGS.index),
            "evidence": max(v.evidence for v in same),
            "serves": min(serves) if serves else None,
        }
    )


class Router:
    """The miners a gateway knows and every request's bookkeeping on them; ``clock`` (seconds,
    monotonic) and ``rng`` are injected, so routing and breakers can be replayed in tests."""

    def __init__(
        self,
        explore: float = 0.05,
        rng: Optional[random.Random] = None,
        clock: Callable[[], float] = time.monotonic,
        prior_speeds: Optional[dict[str, float]] = None,
    ):
        self.miners: dict[int, MinerView] = {}
        self.posted: dict[tuple[str, str], MinerVerdict] = {}  # (validator, hotkey) → that validator's latest verdict on the miner
        self.verdicts: dict[str, MinerVerdict] = {}  # hotkey → every validator's latest, combined (``combine``)
        self.auto = AutoRouter(prior_speeds)  # "auto": per-model quality from the verdicts, latency from the traffic
        self.explore = explore
        self.rng = rng or random.Random()
        self.clock = clock

    def take(self, miner: MinerView) -> Optional[bool]:
        """A request goes to ``miner``: None when it cannot take one now (its breaker opened or it filled
        up since the order was drawn), else whether this request is its breaker's half-open trial."""
        now = self.clock()
        return miner.take(now) if miner.available(now) else None

    def release(self, miner: MinerView, trial: bool) -> None:
        miner.release(trial)

    def succeeded(self, miner: MinerView, ttft: Optional[float], tokens_per_s: Optional[float]) -> None:
        miner.success(ttft, tokens_per_s)

    def failed(self, miner: MinerView) -> None:
        miner.failure(self.clock())

    def breaker(self, miner: MinerView) -> str:
        return miner.breaker(self.clock())

    def update_from_chain(self, views: list[MinerView]) -> None:
        """Replace the chain-derived fields; keep what traffic taught us about miners still there."""
        fresh = {}
        for view in views:
            old = self.miners.get(view.uid)
            if old is not None and old.hotkey == view.hotkey:
                old.url, old.model, old.capacity, old.incentive = view.url, view.model, view.capacity, view.incentive
                fresh[view.uid] = old
            else:
                view.verdict = self.verdicts.get(view.hotkey)
                fresh[view.uid] = view
        self.miners = fresh

    def apply_verdicts(self, posted: Iterable[tuple[str, MinerVerdict]], replace: bool = False) -> None:
        """Validators' latest verdicts ((validator hotkey, verdict)), each validator's replacing its own only, in
        force from the next request; ``replace``: they are every verdict in force (those left out expired)."""
        changed = set()
        if replace:
            changed = {hotkey for _, hotkey in self.posted}
            self.posted.clear()
            for hotkey in changed:
                self.verdicts.pop(hotkey, None)
        for validator, verdict in posted:
            self.posted[validator, verdict.hotkey] = verdict
            changed.add(verdict.hotkey)
        by_hotkey: dict[str, list[MinerVerdict]] = {}
        for (_, hotkey), verdict in self.posted.items():
            if hotkey in changed:
                by_hotkey.setdefault(hotkey, []).append(verdict)
        models = {m.hotkey: m.model for m in self.miners.values()}
        for hotkey, verdicts in by_hotkey.items():
            self.verdicts[hotkey] = combine(verdicts, models.get(hotkey))
        for miner in self.miners.values():
            miner.verdict = self.verdicts.get(miner.hotkey)
        self.auto.learn(self.verdicts.values())

    @staticmethod
    def verify_share(miner: MinerView, base: float) -> float:
        """The share of ``miner``'s answers to hand its validator: more for the new and the suspect."""
        verdict = miner.verdict
        if verdict is None or verdict.model != miner.model:
            return sample_share(base, 0, 0.0)
        return sample_share(base, verdict.answers, verdict.evidence)

    def models(self) -> dict[str, list[MinerView]]:
        """Model id → healthy miners serving it."""
        served: dict[str, list[MinerView]] = {}
        now = self.clock()
        for m in self.miners.values():
            if m.healthy and not m.held_out and m.breaker(now) != "open":
                served.setdefault(m.model, []).append(m)
        return served

    @staticmethod
    def paid(served: dict[str, list[MinerView]]) -> dict[str, float]:
        """``models()``'s model → its miners' summed incentive (what auto falls back on)."""
        return {model: sum(m.incentive for m in miners) for model, miners in served.items()}

    @staticmethod
    def weights(pool: list[MinerView]) -> dict[int, float]:
        """Each candidate's routing weight (uid → weight); the pool's totals are taken once."""
        total_incentive = sum(m.incentive for m in pool) or 1.0
        best_ttft = min((m.ttft for m in pool if m.ttft), default=None)
        best_rate = max((m.tokens_per_s for m in pool if m.tokens_per_s), default=None)
        weights = {}
        for m in pool:
            parts = []
            if m.ttft and best_ttft:
                parts.append(best_ttft / m.ttft)
            if m.tokens_per_s and best_rate:
                parts.append(m.tokens_per_s / best_rate)
            speed = sum(parts) / len(parts) if parts else 1.0
            headroom = max(0.0, 1.0 - m.in_flight / m.serves)
            weights[m.uid] = (m.incentive / total_incentive + INCENTIVE_FLOOR) * (1.0 - m.error_rate) ** 2 * speed * headroom
        return weights

    def candidates(self, model: str) -> list[MinerView]:
        """The miners to try for ``model``, in order (empty when none can take it now)."""
        now = self.clock()
        pool = [m for m in self.miners.values() if m.model == model and m.available(now)]
        if not pool:
            return []
        weights = self.weights(pool)
        ranked = sorted(pool, key=lambda m: weights[m.uid], reverse=True)
        if self.rng.random() < self.explore:
            first = self.rng.choice(pool)
        else:
            first = self.rng.choices(ranked, weights=[max(weights[m.uid], 1e-9) for m in ranked])[0]
        return [first] + [m for m in ranked if m is not first]

    def snapshot(self) -> None:
        """Append each miner's live figures to its history (for the dashboard's charts); each served
        model's medians to auto routing."""
        now = time.time()
        for m in self.miners.values():
            m.history.append((now, m.ttft, m.tokens_per_s, m.error_rate))
            del m.history[:-360]
        for model, miners in self.models().items():
            self.auto.measured(model, [m.ttft for m in miners if m.ttft], [m.tokens_per_s for m in miners if m.tokens_per_s])

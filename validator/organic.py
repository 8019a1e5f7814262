"""Organic samples handed over by a gateway: user answers, verified like challenges in the validator's loop.

A gateway puts a sampled share of its users' answers, each as one miner sent it with the
request it answered, in its outbox (``organic_samples`` in its SQLite). The validator reads
every gateway it is given (``--organic-from URL``, repeatable) and every gateway it trusts
(``--trust-gateway``) declared on chain by a hotkey with a validator permit (``gateways``), over signed HTTP (``SignedOutbox``,
``gateway.handover``), on the same machine or not: one hand-over, which carries the samples,
what each miner did for users and the verdicts back (a database file read on the side
carried the samples alone, and paid cheats of users as honest miners). From each it takes
the samples after the last one it read (its cursor lives in its own store and moves in the
transaction that records the verdicts, so a restart neither skips nor repeats one), at most
``SAMPLES_PER_ROUND`` a round over all of them or one for each miner with a sample waiting,
whichever is more — the miners with the fewest judged answers first, the rest read past —
verifies each with its own reference engine for the model and the miner's declared dtype,
and records the verdict and its evidence, which the next round folds in: a user's answer
counts like a challenge's (a failure zeroes the round; its evidence pools with the
challenges', so a miner serving users a cheaper copy is flagged on users' answers). A sample
the reference cannot score, whose model has no reference here, or whose miner no longer
serves that model under that hotkey counts neither way.

What each gateway saw each miner do for its users (served, refused, failed, and its health
checks sent and failed: ``protocol.records.ServiceCounts``) is summed over the gateways for
the round's service factor: a miner is paid for what users could get from it, wherever they
came in. Back the other way, after each round the validator publishes its verdict on every
miner (``protocol.records.MinerVerdicts``) to every gateway it reads, which stops routing
users to a flagged or failing miner at once and samples suspect ones more.

The samples also tell what users send: the sampling choices of recent requests (which
challenges copy) and, where the gateway allows it (``slmnet gateway --replay-prompts``),
prompts a round may replay (``validator.challenges``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any, Collection, Literal, Mapping, Optional, Protocol, Sequence

import aiohttp
from pydantic import ValidationError

from chain import MetagraphView
from protocol.records import FamilyScore, MinerVerdict, MinerVerdicts, OrganicSample, OrganicSamples, RoundSummary, ServiceCounts, ServiceReports
from signed.client import MinerClient
from validator.challenges import UserPrompts, sampling_of
from validator.records import RoundReport, Target, UserVerdict
from validator.store import Store
from validator.verify import ReferenceEngine, ReferenceFailed, verify

log = logging.getLogger(__name__)
SAMPLES_PER_ROUND = 32  # verified a round at most: the reference engine's extra work (≤ 32 × (prompt + 256) tokens)
READ_PER_ROUND = 256  # read a round at most (a gateway's most a read): the share beyond the budget is read past, unverified
RECENT_REQUESTS = 200  # per model: the users' requests challenges are shaped on


class Outbox(Protocol):
    source: str  # the cursor's key in the validator's store

    async def after(self, last_id: int, limit: int) -> tuple[list[OrganicSample], int]:
        """The samples after ``last_id``, oldest first, and the last id read (rows that are not samples included)."""

    async def publish(self, verdicts: MinerVerdicts) -> None:
        """Hand the round's verdicts to the gateway (where it can take them)."""

    async def service(self) -> Optional[ServiceReports]:
        """What each miner did for the gateway's users so far (None: not known this round)."""


class SignedOutbox:
    """A gateway's outbox over signed HTTP (``gateway.handover``), addressed to the gateway's hotkey: the one it
    is registered under (a gateway found on chain), or the one its ``/health`` names (a URL given by hand)."""

    def __init__(self, session: aiohttp.ClientSession, url: str, keypair: Any, hotkey: Optional[str] = None):
        self.session, self.url, self.keypair = session, url.rstrip("/"), keypair
        self.source = self.url
        self.hotkey = hotkey
        self.client: Optional[MinerClient] = None

    async def _client(self) -> MinerClient:
        if self.client is None:
            if self.hotkey is None:
                async with self.session.get(self.url + "/health", timeout=aiohttp.ClientTimeout(total=10)) as response:
                    hotkey = (await response.json(content_type=None)).get("hotkey")
                if not isinstance(hotkey, str):
                    raise aiohttp.ClientError(f"{self.url}/health names no hotkey: not an slmnet gateway")
                self.hotkey = hotkey
            self.client = MinerClient(self.session, self.url, self.keypair, self.hotkey)
        return self.client

    async def resolve(self) -> Optional[str]:
        """The gateway's hotkey (None while it cannot be reached)."""
        try:
            await self._client()
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            log.warning("gateway %s not reached: %s", self.url, exc)
        return self.hotkey

    async def after(self, last_id: int, limit: int) -> tuple[list[OrganicSample], int]:
        try:
            client = await self._client()
            async with client.get(f"/v1/organic/samples?after={last_id}&limit={limit}", timeout=aiohttp.ClientTimeout(total=30)) as response:
                raw = await response.read()
                if response.status != 200:
                    log.warning("gateway %s refused its samples: %s %s", self.url, response.status, raw[:300].decode(errors="replace"))
                    return [], last_id
            read = OrganicSamples.model_validate_json(raw)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValidationError) as exc:
            log.warning("no organic samples from %s this round: %s", self.url, exc)
            return [], last_id
        return read.samples, max([last_id, *read.skipped, *(s.id for s in read.samples)])

    async def service(self) -> Optional[ServiceReports]:
        try:
            client = await self._client()
            async with client.get("/v1/organic/service", timeout=aiohttp.ClientTimeout(total=30)) as response:
                raw = await response.read()
                if response.status != 200:
                    log.warning("gateway %s refused its service counts: %s %s", self.url, response.status, raw[:300].decode(errors="replace"))
                    return None
            return ServiceReports.model_validate_json(raw)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValidationError) as exc:
            log.warning("no service counts from %s this round: %s", self.url, exc)
            return None

    async def publish(self, verdicts: MinerVerdicts) -> None:
        try:
            client = await self._client()
            async with client.post("/v1/organic/verdicts", verdicts.model_dump(), timeout=aiohttp.ClientTimeout(total=30)) as response:
                if response.status != 200:
                    log.warning("gateway %s refused the verdicts: %s %s", self.url, response.status, (await response.text())[:300])
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.warning("verdicts not handed to %s this round: %s", self.url, exc)


def open_outbox(url: str, session: aiohttp.ClientSession, keypair: Any) -> SignedOutbox:
    """``--organic-from URL``: a gateway, over signed HTTP (``neurons.validator`` refuses anything but a URL)."""
    return SignedOutbox(session, url, keypair)


async def gateways(
    outboxes: Sequence[SignedOutbox], graph: MetagraphView, session: aiohttp.ClientSession, keypair: Any, trusted: Collection[str]
) -> list[SignedOutbox]:
    """The gateways to read this round: those given by hand, and every gateway declared on chain by a
    hotkey with a validator permit (``NeuronView.trusted_gateway``) that this validator trusts (``trusted``:
    ``--trust-gateway``, and its own hotkey), each once (by its hotkey: a gateway given by URL and found on
    chain is read once, so no user's answer is judged twice). Only trusted ones: a gateway's samples are its
    word for what a miner sent (miners sign nothing they send), so a gateway read on a permit alone could
    frame any miner at every validator that reads it."""
    known = {o.url for o in outboxes}
    found = [
        SignedOutbox(session, n.endpoint, keypair, n.hotkey)
        for n in graph.neurons
        if n.trusted_gateway and n.hotkey in trusted and n.endpoint and n.endpoint not in known
    ]
    everyone = [*outboxes, *found]
    await asyncio.gather(*(o.resolve() for o in everyone if o.hotkey is None))
    distinct, seen = [], set()
    for outbox in everyone:
        if outbox.hotkey is None or outbox.hotkey not in seen:
            distinct.append(outbox)
            seen.add(outbox.hotkey)
    if new := [o for o in found if o in distinct]:
        log.info("gateways found on chain: %s", ", ".join(f"{o.url} ({o.hotkey})" for o in new))
    return distinct


class UsersSeen:
    """The requests of users lately sampled, per model: what challenges are shaped on."""

    def __init__(self, limit: int = RECENT_REQUESTS):
        self.recent: dict[str, deque[OrganicSample]] = {}
        self.limit = limit

    def add(self, samples: Sequence[OrganicSample]) -> None:
        for sample in samples:
            self.recent.setdefault(sample.model, deque(maxlen=self.limit)).append(sample)

    def prompts(self, model: str) -> UserPrompts:
        seen = self.recent.get(model, ())
        return UserPrompts(
            shapes=tuple(sampling_of(s.request) for s in seen),
            replays=tuple(s.request for s in seen if s.replayable and isinstance(s.request.get("messages"), list)),
        )


def budgeted(samples: Sequence[OrganicSample], judged: Mapping[str, int], limit: int) -> list[OrganicSample]:
    """At most ``limit`` samples, the miners with the fewest judged answers first (``judged``: hotkey →
    answers its evidence pools), each miner's oldest first, taking turns."""
    queues: dict[str, deque[OrganicSample]] = {}
    for sample in samples:
        queues.setdefault(sample.hotkey, deque()).append(sample)
    order = sorted(queues, key=lambda hotkey: judged.get(hotkey, 0))
    chosen: list[OrganicSample] = []
    while len(chosen) < limit and any(queues.values()):
        for hotkey in order:
            if queues[hotkey] and len(chosen) < limit:
                chosen.append(queues[hotkey].popleft())
    return sorted(chosen, key=lambda s: s.id)


async def verify_samples(
    outbox: Outbox,
    store: Store,
    references: Mapping[str, ReferenceEngine],
    targets: Mapping[str, Target],
    users: Optional[UsersSeen] = None,
    limit: int = SAMPLES_PER_ROUND,
) -> int:
    """Verify the samples not yet read (at most ``limit``, or one for each miner with a sample waiting,
    whichever is more) and record their verdicts; returns how many were judged. ``targets``: hotkey → the miner as it declares itself now (its dtype is its tolerance)."""
    samples, last_id = await outbox.after(store.organic_cursor(outbox.source), READ_PER_ROUND)
    if users is not None:
        users.add(samples)
    evidence = store.evidence()
    # Every miner with an answer waiting gets at least one verified a round, however many miners there are:
    # a flat budget would verify ~0.1 a miner a round at 256 miners.
    chosen = budgeted(samples, {hotkey: e.answers for hotkey, e in evidence.items()}, max(limit, len({s.hotkey for s in samples})))
    if len(chosen) < len(samples):
        log.info("%d of %d users' answers read past unverified: over the round's budget of %d", len(samples) - len(chosen), len(samples), limit)
    verdicts = []
    for sample in chosen:
        reference, target = references.get(sample.model), targets.get(sample.hotkey)
        if reference is None or target is None or target.model != sample.model:
            continue
        try:
            verdict = await verify(reference, sample.request, sample.answer, tolerance=target.tolerance)
        except ReferenceFailed as exc:
            log.warning("organic sample %s of uid %s not verified: %s", sample.id, sample.uid, exc)
            continue
        if not verdict.passed:
            log.warning("uid %s failed verification on a user's answer: %s", target.uid, "; ".join(verdict.reasons))
        verdicts.append((time.time(), sample.model, UserVerdict(target.uid, sample.hotkey, verdict.passed, "; ".join(verdict.reasons), verdict.stats)))
    if last_id != store.organic_cursor(outbox.source):
        store.record_organic(outbox.source, last_id, verdicts)
    return len(verdicts)


def verdicts_of(
    round_index: int,
    targets: Sequence[Target],
    report: RoundReport,
    threshold: float,
    serves: Optional[Mapping[tuple[str, str], int]] = None,
    quality: Optional[Mapping[tuple[str, str], list[FamilyScore]]] = None,
) -> MinerVerdicts:
    """The round's word on every miner, for the gateway; ``serves``: (hotkey, model) → the streams it
    serves at once, from its last capacity probe (this round's where it was probed); ``quality``:
    (hotkey, model) → its graded answers by family (``Store.quality``)."""
    verdicts = []
    for target in targets:
        evidence = report.evidence.get(target.hotkey)
        standing: Literal["ok", "failing", "flagged"] = (
            "flagged" if target.uid in report.flagged else "failing" if target.uid in report.fidelity_failed else "ok"
        )
        verdicts.append(
            MinerVerdict(
                uid=target.uid,
                hotkey=target.hotkey,
                model=target.model,
                standing=standing,
                answers=evidence.answers if evidence else 0,
                evidence=min(1.0, evidence.cusum / threshold) if evidence else 0.0,
                serves=report.serves.get(target.uid) or (serves or {}).get((target.hotkey, target.model)),
                quality=(quality or {}).get((target.hotkey, target.model), []),
            )
        )
    return MinerVerdicts(round=round_index, verdicts=verdicts)


def service_since(reports: ServiceReports, seen: Mapping[str, ServiceCounts]) -> tuple[dict[str, ServiceCounts], dict[str, ServiceCounts]]:
    """From a gateway's running counts and those seen at the previous round: (hotkey → what happened
    since, hotkey → the running counts now). Counts that went down (a new ledger) count from zero."""
    now = {r.hotkey: r.counts() for r in reports.miners}
    since = {hotkey: delta for hotkey, counts in now.items() if not (delta := counts.since(seen.get(hotkey, ServiceCounts()))).empty}
    return since, now


def service_picture(since: Mapping[str, ServiceCounts], targets: Sequence[Target], previous: Optional[RoundSummary]) -> dict[int, ServiceCounts]:
    """uid → what the gateways saw it do since the last round (``since``: hotkey → counts). What they saw
    nothing new of keeps the last round's picture, under the same hotkey: a miner no user was sent to
    since (rounds closer together than users come, or a refuser the gateway has stopped trying) keeps
    its last served share, one not checked since keeps its last reachability. A refuser or a dark
    miner is not paid in the gaps."""
    last = {t.uid: previous.service[t.uid] for t in targets if previous and t.uid in previous.service and previous.targets.get(t.uid, ("",))[0] == t.hotkey}
    service = dict(last)
    for t in targets:
        now = since.get(t.hotkey)
        if now is None:
            continue
        before = last.get(t.uid, ServiceCounts())
        asked, checked = now.served + now.refused + now.failed, now.checked
        service[t.uid] = ServiceCounts(
            served=now.served if asked else before.served,
            refused=now.refused if asked else before.refused,
            failed=now.failed if asked else before.failed,
            checked=checked if checked else before.checked,
            unreachable=now.unreachable if checked else before.unreachable,
        )
    return service


async def read_service(
    outboxes: Sequence[Outbox], seen: Mapping[str, Mapping[str, ServiceCounts]]
) -> tuple[dict[str, ServiceCounts], dict[str, dict[str, ServiceCounts]]]:
    """What every gateway saw since the previous round, summed per hotkey, and each gateway's running
    counts now (``seen``: gateway source → hotkey → its counts at the previous round). A gateway that
    does not answer this round keeps its last counts: what it saw meanwhile counts at the next read."""
    total: dict[str, ServiceCounts] = {}
    now = {source: dict(counts) for source, counts in seen.items()}
    for outbox in outboxes:
        reports = await outbox.service()
        if reports is None:
            continue
        since, now[outbox.source] = service_since(reports, seen.get(outbox.source, {}))
        for hotkey, counts in since.items():
            total[hotkey] = total.get(hotkey, ServiceCounts()) + counts
    return total, now

"""Running a validator: reference engines, the round loop, state, logs, weights.

Each round: read the metagraph, derive the round seed from the head block's hash, query
every miner that declares a supported model, verify and score, then write the round and
the new standings to SQLite in one transaction, append it to the JSONL log (and wandb),
and set weights when the chain's rate limit allows.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import sqlite3
import time
from dataclasses import asdict
from functools import partial
from typing import Any, Optional

import aiohttp

import chain
from models.subnet import ModelListMismatch, check_graph
from protocol.commitment import NodeCommitment
from protocol.records import RoundSummary
from protocol.version import VERSION_KEY, __version__
from scoring.aggregate import BUFFERED_WINDOW
from scoring.evidence import SequentialParams
from scoring.weights import to_weights
from shell.role import StartupError, on_chain, require_registered, stop_on_signals, supervise
from validator.challenges import round_secret, round_seed, seed_commitment, tempo_secret
from validator.config import ValidatorConfig
from validator.crashpoints import crashpoint
from validator.journal import RoundLog
from validator.organic import (
    RECENT_REQUESTS,
    SAMPLES_PER_ROUND,
    SignedOutbox,
    UsersSeen,
    gateways,
    open_outbox,
    read_service,
    service_picture,
    verdicts_of,
    verify_samples,
)
from validator.records import RoundInputs, RoundReport, Target
from validator.references import References
from validator.rounds import probed_models, run_round
from validator.standings import Standings, apply_rewards, capacities, effective_scores, fold
from validator.store import Store
from validator.verify import ReferenceEngine

log = logging.getLogger(__name__)


class Validator:
    def __init__(self, config: ValidatorConfig):
        self.config = config
        self.store = Store(config.state_dir / "validator.sqlite")
        self.wallet = config.chain.wallet()
        self.keypair = self.wallet.hotkey
        self.round_log = RoundLog(config, self.store)
        self.secret = round_secret(config.state_dir / "round-secret")
        self._seeds_skipped: Optional[int] = None  # the tempo it last said it cannot commit its seeds
        self.outboxes: list[SignedOutbox] = []  # one per gateway it reads: given by hand (``run``) and found on chain (each round)
        self.users = UsersSeen()
        # (hotkey, model) → streams it served at once in its last capacity probe (since this process started): a uid
        # taken by another hotkey, or a model declared anew, starts without one.
        self.serves: dict[tuple[str, str], int] = {}

    def apply(self, before: Standings, round_index: int, graph: chain.MetagraphView, report: RoundReport) -> Standings:
        """New standings: this round's scores folded into ``before``; hotkeys gone from the subnet dropped."""
        return fold(before, {n.uid: n.hotkey for n in graph.neurons}, report, round_index, self.config.aggregation)

    async def one_round(self, net: chain.Chain, session: aiohttp.ClientSession, references: dict[str, ReferenceEngine]) -> tuple[Standings, int]:
        """Run, store and log one round; returns the standings after it and the subnet's tempo."""
        round_index = self.store.last_round() + 1
        for hotkey in self.store.apply_forgiveness(round_index):
            log.warning("%s forgiven (slmnet validator forgive): its evidence starts afresh this round (%d)", hotkey, round_index)
        graph = await on_chain("reading the metagraph", lambda: net.metagraph(self.config.chain.netuid))
        tempo = graph.block // (graph.tempo + 1)
        if await commit_seeds(net, self.wallet, graph, self.secret, tempo) == "kept" and tempo != self._seeds_skipped:
            log.warning("round seeds not committed: this hotkey commits something else (the owner's model list?), kept as it is")
            self._seeds_skipped = tempo
        block_hash = await on_chain("reading the block hash", lambda: net.block_hash(graph.block))
        seed = round_seed(block_hash, self.keypair.ss58_address, round_index, tempo_secret(self.secret, tempo))
        started = time.time()
        targets = [
            Target(n.uid, n.hotkey, n.endpoint, n.model.model, n.model.capacity, n.model.dtype, n.model.to_commitment())
            for n in self.config.models.serving(graph.neurons, self.keypair.ss58_address)
            if n.model is not None and n.endpoint is not None  # as serving() ensures: said again for the type checker
        ]
        ready = {model: ref for model, ref in references.items() if ref is not None}
        self.outboxes = await gateways(self.outboxes, graph, session, self.keypair, {self.keypair.ss58_address, *self.config.trust_gateways})
        previous = self.store.summary(round_index - 1)
        seen, service = previous.service_seen if previous else {}, {}
        if self.outboxes:
            share = max(1, SAMPLES_PER_ROUND // len(self.outboxes))
            for outbox in self.outboxes:
                await verify_samples(outbox, self.store, ready, {t.hotkey: t for t in targets}, self.users, share)
            since, seen = await read_service(self.outboxes, seen)
            service = service_picture(since, targets, previous)
        organic = self.store.take_organic(round_index)
        before = self.store.standings()
        inputs = RoundInputs(
            seed=seed,
            round_index=round_index,
            block=graph.block,
            history=self.store.recent_streamed(BUFFERED_WINDOW),
            evidence=self.store.evidence(),
            organic=organic,
            service=service,
        )
        report = await run_round(
            session,
            self.keypair,
            inputs,
            targets,
            ready,
            self.config.challenges_per_miner,
            probing=probed_models(round_index, ready, self.config.probe_every, targets, before),
            users={model: self.users.prompts(model) for model in ready},
            timeouts=self.config.timeouts,
            probe_concurrency=self.config.probe_concurrency,
        )
        apply_rewards(report, targets, self.config.models)
        crashpoint("organic-taken")
        standings = self.apply(before, round_index, graph, report)
        effective = effective_scores(standings, self.config.aggregation, round_index + 1)
        rows = [r.row(round_index) for r in report.results]
        summary = RoundSummary(
            round=round_index,
            block=graph.block,
            seed=str(seed),
            seed_tempo=tempo,
            miners=len(targets),
            challenges=self.config.challenges_per_miner,
            targets={t.uid: (t.hotkey, t.model, t.dtype, t.declaration) for t in targets},  # what a replay needs to rebuild the round
            scores=report.scores,
            fidelity_failed=sorted(report.fidelity_failed),
            buffered=sorted(report.buffered),
            flagged=sorted(report.flagged),
            effective=effective,
            service=service,
            service_seen=seen,
            probed=report.probed,
            delivered=report.delivered,
            duration_s=time.time() - started,
        )
        self.store.save_round(round_index, seed, graph.block, started, summary, standings, rows, report.evidence)
        crashpoint("round-stored")
        self.round_log.round(summary, report)
        self.serves.update({(t.hotkey, t.model): report.serves[t.uid] for t in targets if t.uid in report.serves})
        verdicts = verdicts_of(round_index, targets, report, SequentialParams().threshold, self.serves, self.store.quality())
        for outbox in self.outboxes:
            await outbox.publish(verdicts)
        return standings, graph.tempo

    async def maybe_set_weights(self, net: chain.Chain, standings: Standings, tempo: int) -> Optional[dict[int, float]]:
        block = await on_chain("reading the block", net.block)
        last = self.store.last_weights()
        interval = self.config.weights_interval_blocks or tempo
        if last is not None and block - last[0] < interval:
            return None
        weights = to_weights(effective_scores(standings, self.config.aggregation, self.store.last_round() + 1), capacities(standings))
        if not weights:
            log.info("no miner has a positive standing yet; no weights set")
            return None
        try:
            (await on_chain("setting weights", lambda: net.set_weights(self.wallet, self.config.chain.netuid, weights, VERSION_KEY))).raise_for_failure()
        except chain.RateLimited as exc:
            log.info("weights rate-limited, will retry: %s", exc)
            return None
        except chain.WriteFailed as exc:
            log.warning("setting weights failed: %s", exc)
            return None
        crashpoint("weights-accepted")
        self.store.save_weights(block, weights)
        self.round_log.metrics.weights_set.inc()
        log.info("set weights at block %s: %s", block, {u: round(w, 4) for u, w in weights.items()})
        return weights

    async def run(self, stop: asyncio.Event) -> None:
        # One engine per model id: started and supervised here, or attached to.
        references_of = References(self.config)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=3)) as session, chain.connect(self.config.chain.network) as net:
            await require_registered(net, self.config.chain.netuid, self.keypair.ss58_address, "register the validator's hotkey first")
            await self._check_subnet(net)
            self.outboxes = [open_outbox(url, session, self.keypair) for url in self.config.organic_from]
            if not self.outboxes and not self.config.trust_gateways:
                log.warning(
                    "no gateway to read (--organic-from URL, --trust-gateway SS58; only one under this hotkey, if it announces itself): "
                    "miners that refuse users or that users cannot reach are paid here as if they served them"
                )
            for outbox in self.outboxes:
                # The users' requests sampled lately, for challenges shaped like them from the first round on.
                cursor = self.store.organic_cursor(outbox.source)
                self.users.add((await outbox.after(max(0, cursor - RECENT_REQUESTS), min(cursor, RECENT_REQUESTS)))[0] if cursor else [])
            if appended := self.round_log.catch_up():
                log.warning("rounds %s were stored but missing from %s (a restart after a kill): appended", appended, self.round_log.journal.name)
            self.round_log.start_wandb(self.keypair.ss58_address)
            tasks = [asyncio.create_task(supervise(f"reference engine {name}", partial(e.run, session))) for name, e in references_of.engines.items()]
            metrics_runner = await self.round_log.serve_metrics()
            try:
                while not stop.is_set():
                    began = time.monotonic()
                    references = references_of.ready(session)
                    if references:
                        await self._round_and_weights(net, session, references)
                        if self.config.max_rounds is not None and self.store.last_round() + 1 >= self.config.max_rounds:
                            break
                    else:
                        log.info("waiting for reference engines: %s", references_of.states())
                    try:
                        await asyncio.wait_for(stop.wait(), max(1.0, self.config.round_interval - (time.monotonic() - began)) if references else 2.0)
                    except asyncio.TimeoutError:
                        pass
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                if metrics_runner is not None:
                    await metrics_runner.cleanup()
                self.round_log.finish()
                self.store.close()

    async def _check_subnet(self, net: chain.Chain) -> None:
        """Refuse to start with a model list or a version the subnet does not accept."""
        netuid = self.config.chain.netuid
        required = await on_chain("reading the weights version", lambda: net.weights_version(netuid))
        if VERSION_KEY < required:
            raise StartupError(
                f"subnet {netuid} requires version key {required}; this is slmnet {__version__} (key {VERSION_KEY}): upgrade with `slmnet update`"
            )
        try:
            graph = await on_chain("reading the metagraph", lambda: net.metagraph(netuid))
            warning = check_graph(graph, self.config.models, net.network)
        except ModelListMismatch as exc:
            raise StartupError(str(exc)) from exc
        if warning:
            log.warning(warning)

    async def _round_and_weights(self, net: chain.Chain, session: aiohttp.ClientSession, references: dict[str, ReferenceEngine]) -> None:
        """One round and a weights attempt; a failure is logged and the loop goes on to the next round."""
        try:
            standings, tempo = await self.one_round(net, session, references)
        except chain.ChainLayerError as exc:
            log.error("round skipped: the chain failed after retries: %s", exc)
            return
        except (sqlite3.OperationalError, OSError) as exc:
            if not state_unwritable(exc):
                raise
            log.error(
                "round not stored: the state folder %s cannot be written (%s); nothing was half-written, the next round tries again", self.config.state_dir, exc
            )
            return
        except Exception:
            log.exception("round failed; the next one starts on schedule")
            return
        try:
            await self.maybe_set_weights(net, standings, tempo)
        except chain.ChainLayerError as exc:
            log.error("weights not set this round: the chain failed after retries: %s", exc)
        except (sqlite3.OperationalError, OSError) as exc:  # the disk filled between storing the round and recording its weights
            if not state_unwritable(exc):
                raise
            log.error("weights not recorded: the state folder %s cannot be written (%s); the next round tries again", self.config.state_dir, exc)


async def commit_seeds(net: chain.Chain, wallet: Any, graph: chain.MetagraphView, master: bytes, tempo: int) -> Optional[str]:
    """Commit ``tempo``'s seed secret (its hash) and reveal the last one committed, where the chain does not show it yet:
    once a tempo, before its first round. Returns "committed", "kept" (the hotkey commits something else, such as the
    owner's model list, which stays) or None (already on chain, or the write failed: logged, and the round goes on,
    its seeds checkable by others only from the next commitment)."""
    neuron = graph.by_hotkey(wallet.hotkey.ss58_address)
    text = neuron.commitment if neuron else None
    current = NodeCommitment.of(text)
    if current is None:
        return "kept"
    if current.seeds is not None and current.seeds.tempo == tempo:
        return None
    revealed = current.seeds.tempo if current.seeds is not None else None
    commitment = NodeCommitment.with_part(text, seeds=seed_commitment(master, tempo, revealed)) or ""
    try:
        (await on_chain("committing round seeds", lambda: net.commit(wallet, graph.netuid, commitment))).raise_for_failure()
    except chain.ChainLayerError as exc:
        log.warning("round seeds of tempo %d not committed (the next round tries again): %s", tempo, exc)
        return None
    log.info("committed the round seeds of tempo %d%s", tempo, f", revealed tempo {revealed}'s" if revealed is not None else "")
    return "committed"


async def run_validator(config: ValidatorConfig) -> None:
    stop = stop_on_signals()
    try:
        config.state_dir.mkdir(parents=True, exist_ok=True)
        (config.state_dir / "config.json").write_text(json.dumps({k: str(v) for k, v in asdict(config).items()}, indent=2))
        validator = Validator(config)
    except (sqlite3.Error, OSError) as exc:
        raise StartupError(f"the state folder {config.state_dir} cannot be written ({exc}): give a writable --state-dir with free space") from exc
    await validator.run(stop)


def state_unwritable(exc: BaseException) -> bool:
    """Whether ``exc`` says the state folder cannot take a write: full, over quota, read-only."""
    if isinstance(exc, sqlite3.OperationalError):
        return any(words in str(exc) for words in ("disk is full", "readonly database", "disk I/O error", "unable to open"))
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES)

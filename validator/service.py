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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

import chain
from chain import ChainConfig
from engine import Engine, EngineSpec
from scoring.aggregate import BUFFERED_WINDOW, AggregationParams
from scoring.weights import to_weights
from shell import StartupError, on_chain, require_registered, serve, stop_on_signals, supervise
from validator.challenges import round_seed
from validator.crashpoints import crashpoint
from models.subnet import ModelList, ModelListMismatch, check_graph
from protocol.records import RoundSummary
from protocol.version import VERSION_KEY, __version__
from validator.organic import Outbox, verify_samples
from validator.query import Timeouts
from validator.rounds import Result, RoundReport, Target, run_round
from validator.standings import Standings, apply_organic, apply_rewards, effective_scores, fold
from validator.store import Store
from models.tokenizer import ModelTokenizer
from validator.verify import ReferenceEngine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidatorConfig:
    chain: ChainConfig  # network, netuid, wallet
    state_dir: Path
    models: ModelList
    tokenizers: tuple[tuple[str, str], ...] = ()  # (model id, folder with its tokenizer): ids and text are bound with it
    references: tuple[tuple[str, str], ...] = ()  # (model id, URL of a running reference engine)
    engines: tuple[EngineSpec, ...] = ()  # reference engines to start and supervise
    challenges_per_miner: int = 8
    per_miner_concurrency: int = 4
    round_interval: float = 30.0  # seconds between round starts
    weights_interval_blocks: Optional[int] = None  # default: the subnet's tempo
    timeouts: Timeouts = field(default_factory=Timeouts)
    aggregation: AggregationParams = field(default_factory=AggregationParams)
    metrics_port: Optional[int] = None  # Prometheus on loopback
    wandb_project: Optional[str] = None  # online wandb; offline runs are written under state_dir
    max_rounds: Optional[int] = None  # stop after this many rounds (tests, smoke runs)
    organic_from: Optional[Path] = None  # a gateway's SQLite: its organic outbox of user answers to verify


class ValidatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.rounds = Counter("slmnet_validator_rounds", "Rounds completed", registry=self.registry)
        self.responses = Counter("slmnet_validator_responses", "Challenge outcomes", ["outcome"], registry=self.registry)
        self.fidelity_failures = Counter("slmnet_validator_fidelity_failures", "Answers that failed verification", registry=self.registry)
        self.weights_set = Counter("slmnet_validator_weights_set", "Weight vectors accepted by the chain", registry=self.registry)
        self.score = Gauge("slmnet_validator_effective_score", "Effective standing per miner", ["uid"], registry=self.registry)


class Validator:
    def __init__(self, config: ValidatorConfig):
        self.config = config
        self.store = Store(config.state_dir / "validator.sqlite")
        self.metrics = ValidatorMetrics()
        self.wallet = config.chain.wallet()
        self.keypair = self.wallet.hotkey
        self.journal = config.state_dir / "rounds.jsonl"
        self._journaled: Optional[int] = None  # the last round in the journal, once read (catch_up_journal)
        self.outbox = Outbox(config.organic_from) if config.organic_from else None
        self._wandb: Any = None

    def apply(self, round_index: int, graph: chain.MetagraphView, report: RoundReport) -> Standings:
        """New standings: this round's scores folded in; hotkeys gone from the subnet dropped."""
        return fold(self.store.standings(), {n.uid: n.hotkey for n in graph.neurons}, report, round_index, self.config.aggregation)

    async def one_round(self, net: chain.Chain, session: aiohttp.ClientSession, references: dict[str, ReferenceEngine]) -> tuple[dict[int, float], int]:
        """Run, store and log one round; returns the effective standings and the subnet's tempo."""
        round_index = self.store.last_round() + 1
        graph = await on_chain("reading the metagraph", lambda: net.metagraph(self.config.chain.netuid))
        seed = round_seed(await on_chain("reading the block hash", net.block_hash), self.keypair.ss58_address, round_index)
        started = time.time()
        targets = [
            Target(n.uid, n.hotkey, n.endpoint, n.model.model, n.model.capacity, n.model.dtype, n.model.to_commitment())
            for n in self.config.models.serving(graph.neurons, self.keypair.ss58_address)
        ]
        ready = {model: ref for model, ref in references.items() if ref is not None}
        report = await run_round(
            session,
            self.keypair,
            seed,
            targets,
            ready,
            self.config.challenges_per_miner,
            self.config.per_miner_concurrency,
            timeouts=self.config.timeouts,
            history=self.store.recent_streamed(BUFFERED_WINDOW),
            evidence=self.store.evidence(),
            round_index=round_index,
        )
        apply_rewards(report, targets, self.config.models)
        if self.outbox is not None:
            await verify_samples(self.outbox, self.store, ready)
        apply_organic(report, self.store.take_organic(round_index), {n.uid: n.hotkey for n in graph.neurons})
        crashpoint("organic-taken")
        standings = self.apply(round_index, graph, report)
        effective = effective_scores(standings, self.config.aggregation, round_index + 1)
        rows = [_result_row(round_index, r) for r in report.results]
        summary = RoundSummary(
            round=round_index,
            block=graph.block,
            seed=str(seed),
            miners=len(targets),
            challenges=self.config.challenges_per_miner,
            targets={t.uid: (t.hotkey, t.model, t.dtype, t.declaration) for t in targets},  # what a replay needs to rebuild the round
            scores=report.scores,
            fidelity_failed=sorted(report.fidelity_failed),
            buffered=sorted(report.buffered),
            flagged=sorted(report.flagged),
            effective=effective,
            duration_s=time.time() - started,
        )
        self.store.save_round(round_index, seed, graph.block, started, summary, standings, rows, report.evidence)
        crashpoint("round-stored")
        self._log(summary, report)
        return effective, graph.tempo

    def catch_up_journal(self) -> list[int]:
        """Make rounds.jsonl hold each stored round once, in order: drop a line torn by a kill, and
        append the rounds stored after its last line (this round, and any a kill or a full disk
        kept out before). The file is read only at start and after a failed write; otherwise the
        last round written is known. Returns the rounds appended."""
        last = self._journaled if self._journaled is not None else -1
        if self._journaled is None and self.journal.exists():
            with self.journal.open("rb+") as f:
                size = f.seek(0, 2)
                f.seek(max(0, size - (1 << 20)))
                tail = f.read()
                end = tail.rfind(b"\n") + 1
                if end < len(tail):
                    f.truncate(size - (len(tail) - end))
                lines = tail[:end].splitlines()
                last = RoundSummary.model_validate_json(lines[-1]).round if lines else -1
        missing = self.store.summaries_after(last)
        self._journaled = None  # unknown until the append below succeeds
        if missing:
            with self.journal.open("a") as f:
                f.writelines(summary.model_dump_json() + "\n" for summary in missing)
        self._journaled = missing[-1].round if missing else last
        return [s.round for s in missing]

    def _log(self, summary: RoundSummary, report: RoundReport) -> None:
        try:
            appended = self.catch_up_journal()
        except OSError as exc:  # the round is stored: the journal catches up on the next round that can write
            log.error("round %s stored, but %s cannot be written (%s)", summary.round, self.journal, exc)
        else:
            if appended[:-1]:
                log.warning("rounds %s were stored but missing from %s (a kill or a full disk): appended", appended[:-1], self.journal.name)
        self.metrics.rounds.inc()
        for r in report.results:
            self.metrics.responses.labels(r.outcome.kind).inc()
            if r.outcome.fidelity_passed is False:
                self.metrics.fidelity_failures.inc()
        for uid, value in summary.effective.items():
            self.metrics.score.labels(str(uid)).set(value)
        if self._wandb is not None:
            self._wandb.log(
                {
                    "round": summary.round,
                    "miners": summary.miners,
                    "fidelity_failed": len(summary.fidelity_failed),
                    **{f"effective/{uid}": v for uid, v in summary.effective.items()},
                }
            )
        log.info(
            "round %s: %s miners, scores %s, fidelity failures %s",
            summary.round,
            summary.miners,
            {u: round(s, 3) for u, s in summary.scores.items()},
            summary.fidelity_failed,
        )

    async def maybe_set_weights(self, net: chain.Chain, effective: dict[int, float], tempo: int) -> Optional[dict[int, float]]:
        block = await on_chain("reading the block", net.block)
        last = self.store.last_weights()
        interval = self.config.weights_interval_blocks or tempo
        if last is not None and block - last[0] < interval:
            return None
        weights = to_weights(effective)
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
        self.metrics.weights_set.inc()
        log.info("set weights at block %s: %s", block, {u: round(w, 4) for u, w in weights.items()})
        return weights

    def _start_wandb(self) -> None:
        import wandb

        mode = "online" if self.config.wandb_project else "offline"
        self._wandb = wandb.init(
            project=self.config.wandb_project or "slmnet-validator",
            mode=mode,
            dir=str(self.config.state_dir),
            config={"netuid": self.config.chain.netuid, "hotkey": self.keypair.ss58_address, "models": self.config.models.version},
            settings=wandb.Settings(silent=True),
        )

    async def run(self, stop: asyncio.Event) -> None:
        # One engine per model id: started and supervised here, or attached to.
        engines = {spec.served_name: Engine(url=spec.url, spec=spec) for spec in self.config.engines}
        engines.update({model: Engine(url=url) for model, url in self.config.references})
        tokenizers = {model: ModelTokenizer(folder) for model, folder in self.config.tokenizers}
        missing = sorted(set(engines) - set(tokenizers))
        if missing:
            raise StartupError(f"no tokenizer for {', '.join(missing)}: give --tokenizer ID=DIR")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=3)) as session, chain.connect(self.config.chain.network) as net:
            await require_registered(net, self.config.chain.netuid, self.keypair.ss58_address, "register the validator's hotkey first")
            await self._check_subnet(net)
            if appended := self.catch_up_journal():
                log.warning("rounds %s were stored but missing from %s (a restart after a kill): appended", appended, self.journal.name)
            self._start_wandb()
            tasks = [asyncio.create_task(supervise(f"reference engine {name}", lambda e=e: e.run(session))) for name, e in engines.items()]
            metrics_runner = await self._serve_metrics()
            try:
                while not stop.is_set():
                    began = time.monotonic()
                    references = {name: self._reference(session, name, e.url, tokenizers[name]) for name, e in engines.items() if e.ready}
                    if references:
                        await self._round_and_weights(net, session, references)
                        if self.config.max_rounds is not None and self.store.last_round() + 1 >= self.config.max_rounds:
                            break
                    else:
                        log.info("waiting for reference engines: %s", {n: e.state for n, e in engines.items()})
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
                if self._wandb is not None:
                    self._wandb.finish()
                self.store.close()

    async def _check_subnet(self, net: chain.Chain) -> None:
        """Refuse to start with a model list or a version the subnet does not accept."""
        netuid = self.config.chain.netuid
        required = await on_chain("reading the weights version", lambda: net.weights_version(netuid))
        if VERSION_KEY < required:
            raise StartupError(
                f"subnet {netuid} requires version key {required}; this is slmnet {__version__} (key {VERSION_KEY}): upgrade with `git pull && make install`"
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
            effective, tempo = await self.one_round(net, session, references)
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
            await self.maybe_set_weights(net, effective, tempo)
        except chain.ChainLayerError as exc:
            log.error("weights not set this round: the chain failed after retries: %s", exc)

    def _reference(self, session: aiohttp.ClientSession, model: str, url: str, vocabulary: ModelTokenizer) -> ReferenceEngine:
        supported = self.config.models.get(model)
        return ReferenceEngine(
            session,
            url,
            model,
            vocabulary,
            end_token_ids=supported.end_token_ids if supported else (),
            max_context=supported.max_context if supported else 1 << 30,
        )

    async def _serve_metrics(self) -> Optional[web.AppRunner]:
        if self.config.metrics_port is None:
            return None

        async def metrics(request: web.Request) -> web.Response:
            return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        return await serve(app, "127.0.0.1", self.config.metrics_port)


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


def _result_row(round_index: int, r: Result) -> dict[str, Any]:
    """One challenge's result as the store's ``results`` row, by column name."""
    speed = r.outcome.speed
    return {
        "round": round_index,
        "uid": r.uid,
        "hotkey": r.hotkey,
        "family": r.family,
        "outcome": r.outcome.kind,
        "passed": None if r.outcome.fidelity_passed is None else int(r.outcome.fidelity_passed),
        "reasons": "; ".join(r.reasons) or r.detail or None,
        "correct": r.outcome.correct,
        "ttft": speed.ttft if speed else None,
        "tokens_per_s": speed.tokens_per_s if speed else None,
        "tokens": speed.tokens if speed else None,
        "streamed": None if r.streamed is None else int(r.streamed),
        "stats": json.dumps(asdict(r.stats)) if r.stats is not None else None,
        "answer": r.answer.model_dump_json() if r.answer is not None else None,
    }

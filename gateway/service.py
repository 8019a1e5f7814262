"""Running a gateway: chain sync, miner health, the organic outbox, the HTTP server.

Three loops beside the server: the ledger's retention rule (hourly: ``Store.prune``), the metagraph (every ``settings.metagraph_interval`` s: miners with an
endpoint and a declaration of a supported model, their capacity and incentive), and each
miner's unsigned ``/health`` (every ``health_interval`` s), which also counts, per miner, the
checks sent and failed (what validators read as reachability: ``ServiceReport.unreachable``)
and takes a snapshot of the live figures for the dashboard's charts. A gateway that cannot reach the chain at start exits
with the reason; one that loses it later keeps routing on the last metagraph it read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Callable, Optional

import aiohttp
from aiohttp import web

import chain
from chain import ChainConfig
from gateway.router import MinerView, Router
from gateway.server import create_app
from gateway.state import GatewaySettings, GatewayState
from gateway.store import Store
from models.subnet import ModelList, ModelListMismatch, check_graph
from models.tokenizer import ModelTokenizer
from protocol.commitment import NodeCommitment
from protocol.records import MinerVerdict
from shell.role import StartupError, require_registered, serve, stop_on_signals, supervise

log = logging.getLogger(__name__)
RETENTION_INTERVAL_S = 3600.0


@dataclass(frozen=True)
class GatewayConfig:
    chain: ChainConfig  # network, netuid, wallet
    host: str
    port: int
    db: Path
    models: ModelList
    tokenizers: dict[str, str]  # model id → folder with its tokenizer
    settings: GatewaySettings = field(default_factory=GatewaySettings)
    health_interval: float = 5.0
    workers: int = 1  # processes sharing the port (SO_REUSEPORT); above 1 the limits must be in Redis
    recover_ledger: bool = True  # mark requests a killed gateway left open as interrupted (once, before workers start)
    announce: Optional[tuple[str, int]] = None  # (ip, port) to serve on chain with the gateway role: every permitted validator reads it

    def __post_init__(self) -> None:
        if self.announce is not None:
            self.chain.check_announced(self.announce[0])
        if self.workers < 1:
            raise ValueError("--workers must be at least 1")
        if self.workers > 1 and not self.settings.redis_url:
            raise ValueError(
                f"--workers {self.workers} needs --redis URL: each worker would keep its own per-key windows and quotas, "
                f"letting a key through {self.workers} times its limits"
            )


def views_from(graph: chain.MetagraphView, models: ModelList, own_hotkey: str) -> list[MinerView]:
    """A routing view of each miner serving a supported model, with its share of the incentive.
    Not routed to until its /health answers 200 (the health loop probes new miners at once)."""
    total = sum(n.incentive for n in graph.neurons) or 1.0
    return [
        MinerView(n.uid, n.hotkey, n.endpoint, n.model.model, n.model.capacity, incentive=n.incentive / total, max_context=n.model.max_context, healthy=False)
        for n in models.serving(graph.neurons, own_hotkey)
        if n.model is not None and n.endpoint is not None  # as serving() ensures: said again for the type checker
    ]


class Gateway:
    def __init__(self, config: GatewayConfig):
        self.config = config
        self.wallet = config.chain.wallet()
        self.store = Store(config.db)
        if config.recover_ledger:
            recover_ledger(self.store)
        tokenizers = {model: ModelTokenizer(folder) for model, folder in config.tokenizers.items()}
        self.state = GatewayState(
            store=self.store,
            router=Router(explore=config.settings.explore, prior_speeds={m.id: m.stream_tokens_per_s for m in config.models.models}),
            tokenizers=tokenizers,
            keypair=self.wallet.hotkey,
            settings=config.settings,
            contexts={m.id: m.max_context for m in config.models.models},
        )
        if config.settings.verify_share:
            log.info(
                "organic samples: %.0f%% of chat answers go to the outbox in %s for a validator (slmnet validator --organic-from)",
                100 * config.settings.verify_share,
                config.db,
            )
        else:
            log.info("organic verification is off (--verify-share 0): no user answer is handed to a validator")
        self.state.router.apply_verdicts(self._fresh_verdicts(), replace=True)  # a restart keeps held-out miners out
        self.app = create_app(self.state)

    async def sync(self, net: chain.Chain) -> None:
        graph = await net.metagraph(self.config.chain.netuid)
        self.route(graph)
        await self.announce(net, graph)

    def route(self, graph: chain.MetagraphView) -> None:
        self.state.router.update_from_chain(views_from(graph, self.config.models, self.wallet.hotkey.ss58_address))
        self.state.permitted = frozenset(n.hotkey for n in graph.neurons if n.validator_permit)

    async def announce(self, net: chain.Chain, graph: chain.MetagraphView) -> None:
        """Serve the endpoint and commit the gateway role, where they differ from the chain's (``--external-ip``)."""
        if self.config.announce is None:
            return
        ip, port = self.config.announce
        neuron = graph.by_hotkey(self.wallet.hotkey.ss58_address)
        # The role joins whatever else the hotkey commits (a validator's round seeds under the same hotkey).
        commitment = NodeCommitment.with_part(neuron.commitment if neuron else None, role="gateway")
        if commitment is None:
            log.error(
                "not announced as a gateway: hotkey %s commits something else (%.60s) that the role would erase",
                self.wallet.hotkey.ss58_address,
                neuron and neuron.commitment,
            )
            return
        try:
            if written := await chain.announce(net, self.wallet, graph, ip, port, commitment):
                log.info("announced on chain as a gateway at %s:%s (%s)", ip, port, ", ".join(written))
        except chain.ChainLayerError as exc:  # routing users goes on; the next metagraph read tries again
            log.warning("could not announce this gateway on chain: %s", exc)

    async def _sync_loop(self, net: chain.Chain) -> None:
        while True:
            await asyncio.sleep(self.config.settings.metagraph_interval)
            try:
                await self.sync(net)
            except Exception as exc:  # the chain may come back; keep routing on what we have
                log.warning("metagraph sync failed, keeping the last one: %s", exc)

    async def _health_loop(self) -> None:
        async def probe(miner: MinerView) -> None:
            try:
                async with self.state.session.get(miner.url + "/health", timeout=aiohttp.ClientTimeout(total=2)) as response:
                    miner.healthy = response.status == 200
            except (aiohttp.ClientError, asyncio.TimeoutError):
                miner.healthy = False

        while True:
            try:
                miners = list(self.state.router.miners.values())
                await asyncio.gather(*(probe(m) for m in miners))
                # What users could reach, for the validators: a miner that fails its check is not routed to, and
                # that time counts against it like refusing (validator.round_score.service_factor).
                if self.state.clients is not None and miners:
                    self.state.ledger.count_health({m.hotkey: m.healthy for m in miners})
                self.state.router.snapshot()
                # posted to any worker: in force in every one within a tick (read off the loop: users' streams go on)
                self.state.router.apply_verdicts(await asyncio.to_thread(self._fresh_verdicts), replace=True)
            except Exception:  # a bug here must not stop health checks for good: log it, go on at the next tick
                log.exception("health round failed")
            await asyncio.sleep(self.config.health_interval)

    def _fresh_verdicts(self) -> list[tuple[str, MinerVerdict]]:
        """Every trusted validator's latest verdicts, those posted within ``verdict_ttl_s``: a validator that
        stopped posting stops holding a miner out (or letting it in)."""
        return self.store.verdicts(since=time.time() - self.config.settings.verdict_ttl_s)

    async def _retention_loop(self) -> None:
        """The ledger's retention rule (``Store.prune``), at start and then hourly, in the ledger's writer thread."""
        while True:
            self.state.ledger.prune(self.config.settings.ledger_days * 86400, self.config.settings.samples_days * 86400)
            await asyncio.sleep(RETENTION_INTERVAL_S)

    def _loops_ctx(self, net: chain.Chain) -> Callable[[web.Application], AsyncIterator[None]]:
        """The metagraph, health and retention loops, for the app's lifetime (after its client session opens, before it closes)."""

        async def loops(app: web.Application) -> AsyncIterator[None]:
            tasks = [
                asyncio.create_task(supervise("the metagraph sync", lambda: self._sync_loop(net))),
                asyncio.create_task(supervise("the health checks", self._health_loop)),
                asyncio.create_task(supervise("the ledger's retention", self._retention_loop)),
            ]
            yield
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        return loops

    async def run(self, stop: asyncio.Event) -> None:
        async with chain.connect(self.config.chain.network) as net:
            await require_registered(
                net, self.config.chain.netuid, self.wallet.hotkey.ss58_address, "miners answer registered validators only: register the gateway's hotkey first"
            )
            graph = await net.metagraph(self.config.chain.netuid)
            try:
                if warning := check_graph(graph, self.config.models, net.network):
                    log.warning(warning)
            except ModelListMismatch as exc:
                raise StartupError(str(exc)) from exc
            self.route(graph)
            await self.announce(net, graph)
            self.app.cleanup_ctx.append(self._loops_ctx(net))
            runner = await serve(self.app, self.config.host, self.config.port, reuse_port=self.config.workers > 1)
            log.info(
                "gateway on http://%s:%s: %s miners, models %s",
                self.config.host,
                self.config.port,
                len(self.state.router.miners),
                sorted(self.state.router.models()),
            )
            try:
                await stop.wait()
            finally:
                await runner.cleanup()
                self.store.close()


def recover_ledger(store: Store) -> None:
    interrupted = store.mark_interrupted()
    if interrupted:
        log.warning("%s request(s) were in flight when the gateway last stopped; kept in the ledger as 'interrupted'", interrupted)


async def run_gateway(config: GatewayConfig) -> None:
    await Gateway(config).run(stop_on_signals())

"""The miner's metagraph loop: who may call it, and whether the chain still shows what it serves."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncIterator, Callable

from aiohttp import web

from chain import Chain, ChainLayerError, announce
from miner.state import STATE, MinerState
from shell.role import supervise

log = logging.getLogger(__name__)


async def refresh(state: MinerState, chain: Chain, wallet: Any) -> list[str]:
    """One pass: read the metagraph, swap it into the gate, re-publish what differs; returns the writes."""
    graph = await chain.metagraph(state.config.chain.netuid)
    state.gate.update(graph)
    neuron = graph.by_hotkey(state.hotkey)
    state.uid = neuron.uid if neuron else None
    return await announce(chain, wallet, graph, state.config.external_ip, state.config.announced_port, state.declaration.to_commitment())


async def _loop(state: MinerState, chain: Chain, wallet: Any) -> None:
    while True:
        await asyncio.sleep(state.config.metagraph_interval)
        try:
            written = await refresh(state, chain, wallet)
        except ChainLayerError as exc:
            # Keep serving with the last metagraph: a chain outage must not stop a miner.
            log.warning("metagraph refresh failed (keeping block %s): %s", state.gate.block, exc)
            continue
        if written:
            log.warning("the chain no longer showed this miner's presence; re-published: %s", ", ".join(written))


def metagraph_ctx(chain: Chain, wallet: Any) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(supervise("the metagraph refresh", lambda: _loop(app[STATE], chain, wallet)), name="metagraph")
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    return ctx

"""Running a miner: check the chain, attach to or start the engine, serve, announce."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp

import chain
from engine import Engine
from miner.admission import Admission
from miner.auth import Gatekeeper
from miner.config import MinerConfig
from miner.metrics import MinerMetrics
from miner.server import create_app
from miner.state import MinerState
from miner.sync import refresh
from protocol.commitment import ModelDeclaration
from shell.role import StartupError, require_registered, serve, stop_on_signals

log = logging.getLogger(__name__)


def load_hotkey_wallet(config: MinerConfig) -> Any:
    wallet = config.chain.wallet()
    try:
        wallet.hotkey  # noqa: B018 - loads the keyfile, so a missing one fails here
    except Exception as exc:  # the SDK raises several types for missing/unreadable keyfiles
        raise StartupError(f"cannot load hotkey {config.chain.wallet_name}/{config.chain.wallet_hotkey} from {config.chain.wallet_path}: {exc}") from exc
    return wallet


async def attached_max_context(url: str, model_id: str, wait: float) -> int:
    """The max context of ``model_id`` on a running engine; StartupError if it serves another model."""
    deadline = time.monotonic() + wait
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while True:
            try:
                async with session.get(f"{url}/v1/models") as response:
                    listing = await response.json()
                break
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                if time.monotonic() > deadline:
                    raise StartupError(f"no engine answers at {url} after {wait:g} s: {exc}") from exc
                await asyncio.sleep(1)
    served = {entry["id"]: entry for entry in listing.get("data", [])}
    if model_id not in served:
        raise StartupError(f"the engine at {url} serves {sorted(served)}, not {model_id!r}: start it with --served-model-name {model_id}")
    return int(served[model_id].get("max_model_len") or 0)


def build_state(config: MinerConfig, hotkey: str, max_context: int) -> MinerState:
    declaration = ModelDeclaration(
        model=config.model_id,
        revision=config.revision,
        weights_sha256=config.weights_sha256,
        max_context=max_context,
        capacity=config.capacity,
        dtype=config.dtype,
    )
    engine = Engine(url=config.upstream, spec=config.engine)
    return MinerState(
        config=config,
        hotkey=hotkey,
        declaration=declaration,
        gate=Gatekeeper(hotkey, config.min_stake),
        admission=Admission(config.capacity, config.caller_limit),
        engine=engine,
        metrics=MinerMetrics(),
    )


async def run_miner(config: MinerConfig, stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set (or SIGINT/SIGTERM). StartupError / ChainLayerError when it cannot start."""
    wallet = load_hotkey_wallet(config)
    hotkey = wallet.hotkey.ss58_address
    async with chain.connect(config.chain.network) as net:
        await require_registered(net, config.chain.netuid, hotkey, f"register the hotkey on subnet {config.chain.netuid} first")
        max_context = config.max_context
        if config.engine_url is not None:
            max_context = await attached_max_context(config.upstream, config.model_id, config.engine_wait) or max_context
        state = build_state(config, hotkey, max_context)
        await refresh(state, net, wallet)
        # A caller that hangs up (a validator whose time to first token ran out) frees its slot and the engine's
        # work at once: otherwise both stay held until the engine writes again, and its next request meets a 429.
        runner = await serve(create_app(state, net, wallet), config.host, config.port, cancel_on_hang_up=True)
        log.warning(
            "miner uid %s (%s) serves %s on %s:%s, announced as %s:%s; engine %s",
            state.uid,
            hotkey,
            config.model_id,
            config.host,
            config.port,
            config.external_ip,
            config.announced_port,
            config.upstream,
        )
        stop = stop_on_signals(stop)
        try:
            await stop.wait()
        finally:
            log.warning("miner stopping")
            await runner.cleanup()

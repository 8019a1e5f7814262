"""validator/query: a timeout is the miner's, unless the validator itself was too busy to tell."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web
from bittensor.wallets import Keypair

from signed.client import MinerClient
from validator.query import LoopLag, Timeouts, ask

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}


async def _silent_miner() -> tuple[web.AppRunner, str]:
    async def never(request: web.Request) -> web.Response:
        await asyncio.sleep(3)  # longer than the timeouts below
        return web.Response()

    app = web.Application()
    app.router.add_post("/v1/chat/completions", never)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"


async def test_a_timeout_while_the_validators_loop_was_starved_is_nobodys_fault():
    runner, url = await _silent_miner()
    keypair = Keypair.create_from_uri("//Validator")
    try:
        async with aiohttp.ClientSession() as session:
            client = MinerClient(session, url, keypair, keypair.ss58_address)
            lag = LoopLag(interval=0.05).start()
            quiet = await ask(client, BODY, Timeouts(ttft=0.5), lag)
            asyncio.get_running_loop().call_later(0.1, time.sleep, 1.5)  # the validator's own machine stalls its loop
            busy = await ask(client, BODY, Timeouts(ttft=0.5), lag)
            lag.stop()
    finally:
        await runner.cleanup()
    assert quiet.kind == "timeout"  # a miner that does not answer in time: its failure
    assert busy.kind == "unverified" and "busy" in busy.detail  # it may have answered: counts neither way

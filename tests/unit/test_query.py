"""validator/query: a timeout is the miner's, unless the validator itself was too busy to tell."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web
from bittensor.wallets import Keypair

from signed.client import MinerClient
from tests.harness.served import served
from validator.query import LoopLag, Timeouts, ask

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}


def _silent_miner() -> web.Application:
    async def never(request: web.Request) -> web.Response:
        await asyncio.sleep(3)  # longer than the timeouts below
        return web.Response()

    app = web.Application()
    app.router.add_post("/v1/chat/completions", never)
    return app


async def test_a_timeout_while_the_validators_loop_was_starved_is_nobodys_fault():
    keypair = Keypair.create_from_uri("//Validator")
    async with served(_silent_miner()) as url, aiohttp.ClientSession() as session:
        client = MinerClient(session, url, keypair, keypair.ss58_address)
        lag = LoopLag(interval=0.05).start()
        quiet = await ask(client, BODY, Timeouts(ttft=0.5), lag)
        asyncio.get_running_loop().call_later(0.1, time.sleep, 1.5)  # the validator's own machine stalls its loop
        busy = await ask(client, BODY, Timeouts(ttft=0.5), lag)
        lag.stop()
    assert quiet.kind == "timeout"  # a miner that does not answer in time: its failure
    assert busy.kind == "unverified" and "busy" in busy.detail  # it may have answered: counts neither way

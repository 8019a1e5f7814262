"""A miner that refuses requests in-band — a 200 whose stream is an engine's error event before any token, as the
harness's ``refuse-event`` miner does — is excused only where every miner that tried the request refused it (the
request's fault: the user's 400). Where another miner served it, the refuser failed it: refusing is no way to skip
work without it counting."""

from __future__ import annotations

import json

import aiohttp
from aiohttp import web
from bittensor.sp_core import Keypair

from gateway.router import MinerView, Router
from gateway.server import create_app
from gateway.settings import GatewaySettings
from gateway.state import GatewayState
from gateway.store import Store
from models.tiny import build_tiny
from models.tokenizer import ModelTokenizer
from tests.harness.served import served

MODEL = "slmnet/tiny-qwen2-s0"
REFUSER, HONEST = 1, 2


def _event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _miner(handler) -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    return app


async def _refuse(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(_event({"error": {"message": "cannot run this request", "type": "BadRequestError", "code": 400}}) + b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def _honest(tokenizer: ModelTokenizer):
    ids = tokenizer.fast.encode("Paris", add_special_tokens=False).ids

    async def answer(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        choice = {"index": 0, "delta": {"content": tokenizer.decode(ids)}, "token_ids": ids, "finish_reason": "stop"}
        choice["logprobs"] = {"content": [{"token": f"token_id:{i}", "logprob": -0.5, "top_logprobs": []} for i in ids]}
        await response.write(_event({"object": "chat.completion.chunk", "choices": [choice]}) + b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    return answer


async def _ask(tmp_path, miners: dict[int, str], attempts: int) -> tuple[list[tuple[int, str]], Store]:
    """Requests until the refuser has been asked (the router prefers it: it alone is paid) or one is refused;
    (status, the miners that were asked) of each, and the gateway's store."""
    store = Store(tmp_path / "g.sqlite")
    plaintext, _ = store.create_key("k")
    router = Router(explore=0.0)
    router.update_from_chain([MinerView(uid, f"h{uid}", url, MODEL, capacity=4, incentive=1.0 if uid == REFUSER else 0.0) for uid, url in miners.items()])
    for miner in router.miners.values():
        miner.healthy = True
    state = GatewayState(
        store=store,
        router=router,
        tokenizers={MODEL: ModelTokenizer(tmp_path / "tiny")},
        keypair=Keypair.create_from_uri("//G"),
        settings=GatewaySettings(max_attempts=attempts),
    )
    answers: list[tuple[int, str]] = []
    body = {"model": MODEL, "messages": [{"role": "user", "content": "The capital of France?"}], "max_tokens": 8}
    async with served(create_app(state)) as url, aiohttp.ClientSession() as session:
        while not any(status != 200 or str(REFUSER) in asked.split(",") for status, asked in answers) and len(answers) < 30:
            async with session.post(url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {plaintext}"}) as response:
                await response.read()
                answers.append((response.status, response.headers.get("x-slmnet-miner-uid", "")))
        await state.ledger.synced()
    return answers, store


async def test_a_miner_that_refuses_in_band_fails_the_requests_another_miner_serves(tmp_path):
    build_tiny(tmp_path / "tiny", seed=0)
    async with served(_miner(_refuse)) as refuser_url, served(_miner(_honest(ModelTokenizer(tmp_path / "tiny")))) as honest_url:
        answers, store = await _ask(tmp_path, {REFUSER: refuser_url, HONEST: honest_url}, attempts=2)
    assert answers[-1] == (200, f"{REFUSER},{HONEST}")  # the refuser was asked first; the honest miner answered
    assert all(status == 200 for status, _ in answers)
    reports = {r.hotkey: r for r in store.service_reports()}
    assert (reports[f"h{REFUSER}"].failed, reports[f"h{REFUSER}"].served) == (1, 0)
    assert reports[f"h{HONEST}"].served == len(answers) and reports[f"h{HONEST}"].failed == 0


async def test_a_request_every_miner_refuses_is_the_users_400_and_no_miners_failure(tmp_path):
    build_tiny(tmp_path / "tiny", seed=0)
    async with served(_miner(_refuse)) as refuser_url:
        answers, store = await _ask(tmp_path, {REFUSER: refuser_url}, attempts=2)
    assert answers == [(400, "")]  # (a failed request names no miner that answered)
    assert all(report.failed == 0 for report in store.service_reports())

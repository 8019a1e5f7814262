"""The second model family end to end: Gemma 3 270M (prepared from PyPI's GGUF chunk packages)
on the real vLLM engine, verified by the validator's code, served through the gateway beside
the tiny model, with "auto" routing each request by the validators' per-family figures."""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.request
from pathlib import Path

import aiohttp
import openai
import pytest

from models import subnet as model_list
from models.prepare import model_folder
from models.tiny import build_tiny
from models.tokenizer import ModelTokenizer
from protocol.records import FamilyScore, MinerVerdict, MinerVerdicts
from tests.harness.localnet import make_localnet
from tests.harness.processes import create_key, start_gateway, start_miners, start_vllm
from validator.challenges import generate
from validator.organic import SignedOutbox
from validator.verify import ReferenceEngine, collect, verify

pytestmark = pytest.mark.slow
GEMMA = "slmnet/gemma-3-270m-Q4_K_M"
TINY = "slmnet/tiny-qwen2-s0"
ENDS = model_list.load().get(GEMMA).end_token_ids


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gemma")
    folder = Path(model_folder("prepared:gemma3-270m", Path(os.environ["SLMNET_CACHE"])))  # `make models` prepared it
    engine = start_vllm(folder, GEMMA, tmp, max_model_len=2048)
    try:
        engine.wait_healthy(timeout=600)
        yield engine, folder, tmp
    finally:
        engine.stop()


async def _answer(session: aiohttp.ClientSession, url: str, body: dict):
    from protocol.streams import sse_events

    async with session.post(url + "/v1/chat/completions", json=body) as response:
        assert response.status == 200, await response.text()
        return collect([event async for event in sse_events(response)])


def test_gemmas_honest_answers_pass_verification_and_their_newline_end_spells_nothing(gemma):
    engine, folder, _ = gemma
    tokenizer = ModelTokenizer(folder)

    async def run():
        async with aiohttp.ClientSession() as session:
            reference = ReferenceEngine(session, engine.url, GEMMA, tokenizer, ENDS, max_context=2048)
            bodies = [c.request(GEMMA) for c in generate(seed=7, count=6)]
            answers = await asyncio.gather(*(_answer(session, engine.url, body) for body in bodies))  # a round's challenges at once
            verdicts = await asyncio.gather(*(verify(reference, body, answer) for body, answer in zip(bodies, answers)))
            return bodies, answers, verdicts

    bodies, answers, verdicts = asyncio.run(run())
    assert [v.reasons for v in verdicts if not v.passed] == []
    ended = [a for a in answers if a.finish_reason == "stop" and a.token_ids[-1] in (107, 108)]
    assert ended and all(not a.text.endswith("\n") for a in ended)  # the engine never shows the end token's text
    # the gateway counts a prompt as the engine does (Gemma's own tokenizer and template, <bos> included)
    assert all(len(a.prompt_token_ids) == tokenizer.count(tokenizer.render(messages=b["messages"])) for a, b in zip(answers, bodies))


def test_auto_routes_each_kind_of_request_to_the_family_the_validators_graded_best(gemma, tiny_engine):
    engine, folder, tmp = gemma
    build_tiny(tmp / "s0", seed=0)
    net = make_localnet(tmp)
    wallets, uids = net.register(("gemma", "tiny", "gateway"))
    net.stake(wallets["gateway"], 2000)
    servers = []
    try:
        start_miners(net, {"gemma": engine.url}, folder, tmp, servers, capacity=4)
        start_miners(net, {"tiny": tiny_engine.url}, tmp / "s0", tmp, servers, capacity=4)
        db = tmp / "gateway.sqlite"
        key = create_key(db, "tester")
        gateway = start_gateway(net, "gateway", db, f"{GEMMA}={folder}", tmp, "--tokenizer", f"{TINY}={tmp / 's0'}")
        servers.append(gateway)
        c = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, timeout=120)
        listed = {m.id for m in c.models.list().data}
        for _ in range(60):  # the gateway sees both miners healthy within a few health ticks
            if {GEMMA, TINY} <= listed:
                break
            time.sleep(1)
            listed = {m.id for m in c.models.list().data}
        assert listed == {GEMMA, TINY, "auto", "auto:fast", "auto:best"}

        # the validator's word: Gemma right on arithmetic, the tiny model on uppercase (figures a round hands over)
        graded = {"gemma": [("arithmetic", 40, 30), ("uppercase", 40, 2)], "tiny": [("arithmetic", 40, 1), ("uppercase", 40, 35)]}
        model_of = {"gemma": GEMMA, "tiny": TINY}
        verdicts = [
            MinerVerdict(
                uid=uids[name], hotkey=wallets[name].hotkey.ss58_address, model=model_of[name], standing="ok", answers=80, evidence=0.0,
                quality=[FamilyScore(family=f, answers=a, correct=r) for f, a, r in scores],
            )
            for name, scores in graded.items()
        ]  # fmt: skip

        async def publish() -> None:
            async with aiohttp.ClientSession() as session:
                await SignedOutbox(session, gateway.url, wallets["gateway"].hotkey).publish(MinerVerdicts(round=0, verdicts=verdicts))

        asyncio.run(publish())
        sum_ = c.chat.completions.with_raw_response.create(model="auto:best", messages=[{"role": "user", "content": "What is 17 + 25?"}], max_tokens=8)
        shout = c.chat.completions.with_raw_response.create(
            model="auto:best", messages=[{"role": "user", "content": "Write 'hello' in uppercase."}], max_tokens=8
        )
        assert (sum_.parse().model, sum_.headers["x-slmnet-model"]) == (GEMMA, GEMMA)
        assert sum_.headers["x-slmnet-route"].startswith("auto:best; kind=arithmetic;")
        assert (shout.parse().model, shout.headers["x-slmnet-model"]) == (TINY, TINY)
        # streamed through auto, usage counted: what the OpenAI client expects of any model
        chunks = list(
            c.chat.completions.create(
                model="auto", messages=[{"role": "user", "content": "What is 3 + 4?"}], max_tokens=8, stream=True, stream_options={"include_usage": True}
            )
        )
        assert {ch.model for ch in chunks} == {GEMMA} and chunks[-1].usage.completion_tokens > 0
        with pytest.raises(openai.NotFoundError) as unknown:
            c.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}])
        assert unknown.value.body["code"] == "model_not_found"
        assert f"the models served now: '{GEMMA}', '{TINY}', 'auto', 'auto:fast', 'auto:best'" in unknown.value.body["message"]
        quality = {m["id"]: m for m in json.loads(urllib.request.urlopen(gateway.url + "/api/quality", timeout=30).read())["models"]}
        assert quality[GEMMA]["families"]["arithmetic"] == {"answers": 40, "correct": 30, "accuracy": 0.75}
        assert quality[TINY]["graded_answers"] == 80
    finally:
        for server in reversed(servers):
            server.stop()

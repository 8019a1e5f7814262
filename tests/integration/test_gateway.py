"""`slmnet gateway` on a localnet in front of real miners, used through the official OpenAI client.

Four miners declare the tiny model: two attached to the engine directly, two behind a
slow tampering engine (3 s, then 150 ms a token), so a stream lasts long enough to kill its miner
in the middle. The kill tests run last, in this order: they take miners away (fast1,
then fast2, so that the mid-stream kill hits a slow miner and the other slow one goes on);
the tests after them stream from that last slow miner, which no CPU can make fast.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Literal

import aiohttp
import openai
import pydantic
import pytest

from gateway.store import Store as GatewayStore
from models import subnet as model_list
from models.tiny import build_tiny
from models.tokenizer import ModelTokenizer
from protocol.records import AnswerRecord, FamilyScore, MinerVerdict, MinerVerdicts, OrganicSample
from protocol.responses import StreamFold
from tests.harness.localnet import make_localnet
from tests.harness.processes import RedisServer, create_key, ledger_rows, start_adversary, start_gateway, start_miners
from validator.organic import SignedOutbox, verify_samples
from validator.records import Target
from validator.store import Store
from validator.verify import ReferenceEngine, verify

pytestmark = pytest.mark.slow
MODEL = "slmnet/tiny-qwen2-s0"
MINERS = ("fast1", "fast2", "slow1", "slow2")
METRICS_TOKEN = "a-scrapers-secret"  # the two-worker gateway's --metrics-token
ENDS = model_list.load().get(MODEL).end_token_ids
ARTIFACTS = Path(__file__).resolve().parents[1] / ".artifacts"
ORIGIN = "https://app.example"


def slmnet(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "neurons.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def subnet(tmp_path_factory, tiny_engine):
    tmp = tmp_path_factory.mktemp("gateway")
    build_tiny(tmp / "s0", seed=0)
    engine = tiny_engine
    net = make_localnet(tmp)
    wallets, uids = net.register((*MINERS, "gateway"))
    net.stake(wallets["gateway"], 2000)
    servers = []
    try:
        servers.append(slow := start_adversary(engine.url, "slow", tmp))
        slow.wait_healthy(timeout=60)
        upstream = {name: slow.url if name.startswith("slow") else engine.url for name in MINERS}
        miners = start_miners(net, upstream, tmp / "s0", tmp, servers)
        db = tmp / "gateway.sqlite"
        key = create_key(db, "tester")
        flags = ("--verify-share", "1", "--stall-timeout", "3", "--max-attempts", "4", "--cors-origin", ORIGIN)
        gateway = start_gateway(net, "gateway", db, f"{MODEL}={tmp / 's0'}", tmp, *flags)
        servers.append(gateway)
        yield {
            "net": net,
            "servers": servers,
            "tmp": tmp,
            "db": db,
            "url": gateway.url,
            "engine": engine,
            "key": key,
            "uids": uids,
            "miners": miners,
            "gateway": gateway,
            "wallets": wallets,
        }
    finally:
        for server in reversed(servers):
            server.stop()


def verified(subnet, sample: OrganicSample) -> bool:
    """Whether a sampled user answer passes the validator's verifier on the module's reference engine."""

    async def judge() -> bool:
        async with aiohttp.ClientSession() as session:
            reference = ReferenceEngine(session, subnet["engine"].url, MODEL, ModelTokenizer(subnet["tmp"] / "s0"), ENDS)
            return (await verify(reference, sample.request, sample.answer)).passed

    return asyncio.run(judge())


def client(subnet, key=None) -> openai.OpenAI:
    return openai.OpenAI(base_url=subnet["url"] + "/v1", api_key=key or subnet["key"], max_retries=0, timeout=120)


def post(subnet, path: str, body: bytes | None, key: str | None = None, method: str = "POST", **headers: str) -> tuple[int, dict, dict]:
    """One request on a fresh connection (so a multi-worker gateway's kernel can pick any worker)."""
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key or subnet['key']}", **headers}
    request = urllib.request.Request(subnet["url"] + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, dict(response.headers), json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"{}")


def ledger(subnet, request_id: str) -> tuple:
    db = sqlite3.connect(subnet["db"])
    return db.execute("SELECT status, prompt_tokens, completion_tokens, failovers FROM usage WHERE request_id = ?", (request_id,)).fetchone()


def test_models_lists_the_served_model_and_auto(subnet):
    ids = {m.id for m in client(subnet).models.list().data}
    assert ids == {MODEL, "auto", "auto:fast", "auto:best"}
    assert all(client(subnet).models.retrieve(model).id == model for model in ids)  # every listed id answers on its own
    status, _, body = post(subnet, "/v1/nothing", None, method="GET")
    assert (status, body["error"]["code"]) == (404, "unknown_path")  # an unknown path is a 404, not a 405
    # before any validator's verdict: no graded answer, and every flavour takes the one model there is
    quality = json.loads(urllib.request.urlopen(subnet["url"] + "/api/quality", timeout=30).read())
    assert [(m["id"], m["graded_answers"]) for m in quality["models"]] == [(MODEL, 0)]
    assert {model for routes in quality["auto"].values() for model in routes.values()} == {MODEL}


def test_the_openai_client_gets_whole_and_streamed_answers_with_usage_counted_by_the_gateway(subnet):
    c = client(subnet)
    whole = c.chat.completions.with_raw_response.create(model=MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=12, temperature=0)
    completion = whole.parse()
    assert completion.choices[0].message.content and completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage.completion_tokens > 0 and completion.usage.prompt_tokens > 0
    tokenizer = ModelTokenizer(subnet["tmp"] / "s0")  # counted, not the bound the request was checked on before the miner was asked
    assert completion.usage.prompt_tokens == tokenizer.count(tokenizer.render(messages=[{"role": "user", "content": "Say hi."}]))
    assert completion.usage.completion_tokens_details.reasoning_tokens == 0 and completion.usage.prompt_tokens_details.cached_tokens == 0
    assert "cost" not in completion.usage.model_dump()  # a key without a price: no cost is made up
    priced = create_key(subnet["db"], "priced", "--price", "2.5")  # per million tokens
    status, _, body = post(
        subnet, "/v1/chat/completions", json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}).encode(), priced
    )
    assert status == 200 and body["usage"]["cost"] == pytest.approx(body["usage"]["total_tokens"] * 2.5e-6)
    assert whole.headers["x-request-id"] and float(whole.headers["x-slmnet-overhead-ms"]) >= 0
    ((status, prompt_tokens, completion_tokens, failovers),) = ledger_rows(
        subnet["db"], [whole.headers["x-slmnet-request-id"]], "status, prompt_tokens, completion_tokens, failovers"
    )
    assert (status, prompt_tokens, completion_tokens, failovers) == ("ok", completion.usage.prompt_tokens, completion.usage.completion_tokens, 0)

    chunks = list(
        c.chat.completions.create(
            model="auto",
            messages=[{"role": "user", "content": "Count to five."}],
            max_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert sum(1 for ch in chunks if ch.choices and ch.choices[0].delta.content) >= 5  # really streamed, chunk by chunk
    assert all(ch.model == MODEL for ch in chunks)  # 'auto' resolved to the model that answered
    best = c.chat.completions.with_raw_response.create(model="auto:best", messages=[{"role": "user", "content": "What is 12 + 30?"}], max_tokens=8)
    assert best.parse().model == MODEL and best.headers["x-slmnet-model"] == MODEL
    assert best.headers["x-slmnet-route"].startswith("auto:best; kind=arithmetic;")

    text_completion = c.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=0)
    assert text_completion.choices[0].text and text_completion.usage.completion_tokens > 0
    # Logprobs on a whole text completion, as OpenAI's: a token each, the alternatives asked for, spelled from the ids.
    lp = (
        c.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6, temperature=0, logprobs=2, extra_body={"ignore_eos": True})
        .choices[0]
        .logprobs
    )
    assert lp is not None and len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert all(len(top) >= 1 and not any(t.startswith("token_id:") for t in [*top, token]) for top, token in zip(lp.top_logprobs, lp.tokens))


def test_the_readmes_openai_snippet_streams_an_answer_from_auto(subnet):
    """The README's Python block, as written but for the URL and key `make demo` prints."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    found = re.search(r"<!-- readme-test: openai snippet[^>]*-->\n```python\n(.*?)```", readme, re.S)
    assert found, "the README lost its openai snippet marker"
    script = found.group(1).replace("http://127.0.0.1:8000/v1", subnet["url"] + "/v1").replace('"slm-…"', repr(subnet["key"]))
    assert subnet["url"] in script and subnet["key"] in script  # the snippet still names the demo's URL and key
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]  # (its text may be empty: the random test model can end at once)


def test_bad_keys_unknown_models_and_malformed_bodies_get_openai_errors(subnet):
    with pytest.raises(openai.AuthenticationError) as bad_key:
        client(subnet, key="slm-not-a-key").chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert bad_key.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.NotFoundError) as unknown:
        client(subnet).chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}])
    assert unknown.value.body["code"] == "model_not_found"
    assert f"the models served now: '{MODEL}', 'auto', 'auto:fast', 'auto:best'" in unknown.value.body["message"]
    status, headers, body = post(subnet, "/v1/chat/completions", b"{not json")
    assert (status, body["error"]["code"]) == (400, "invalid_json") and headers["X-Request-Id"]
    status, _, body = post(subnet, "/v1/chat/completions", json.dumps({"model": MODEL, "messages": [], "temperature": 9}).encode())
    assert status == 400 and "messages" in body["error"]["message"] and "temperature" in body["error"]["message"]
    functions = [{"name": "f", "parameters": {}}]  # OpenAI's deprecated spelling of tools
    status, _, body = post(
        subnet, "/v1/chat/completions", json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "functions": functions}).encode()
    )
    assert (status, body["error"]["code"]) == (400, "unsupported_parameter") and "functions" in body["error"]["message"]
    named = {"type": "function", "function": {"name": "g"}}
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    status, _, body = post(
        subnet,
        "/v1/chat/completions",
        json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "tools": tools, "tool_choice": named}).encode(),
    )
    assert (status, body["error"]["code"]) == (400, "invalid_tools") and "'g'" in body["error"]["message"]
    status, _, body = post(subnet, "/v1/completions", json.dumps({"model": MODEL, "prompt": "hi", "echo": True}).encode())
    assert (status, body["error"]["code"]) == (400, "unsupported_parameter") and "echo" in body["error"]["message"]
    # What clients send by default and asks for nothing the models do not do: answered.
    defaults = {"response_format": {"type": "text"}, "tool_choice": "none", "parallel_tool_calls": False, "max_tokens": 2}
    status, _, body = post(subnet, "/v1/chat/completions", json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **defaults}).encode())
    assert status == 200 and body["choices"][0]["finish_reason"] in ("stop", "length"), body
    status, _, body = post(subnet, "/v1/chat/completions", b'{"model": "x", "messages": [{"role": "user", "content": "' + b"a" * (2 << 20) + b'"}]}')
    assert (status, body["error"]["code"]) == (413, "payload_too_large")


class Reading(pydantic.BaseModel):
    """What a client's ``parse`` asks for: a typed object, its fields bounded so the random test model ends it."""

    ok: bool
    level: Literal["low", "high"]
    count: int = pydantic.Field(ge=0, le=99)


def test_structured_output_reaches_the_openai_clients_parse_and_is_verified_under_its_grammar(subnet):
    """``response_format`` is decoded under its grammar by the miner's engine (the openai client's ``parse`` gets
    its pydantic object, whole or streamed), every sampled answer passes the validator's verifier under the same
    grammar, and the same request answered as free text — a miner ignoring the grammar — fails it."""
    c = client(subnet)
    messages = [{"role": "user", "content": "Read the gauge."}]
    for seed in range(4):
        parsed = c.beta.chat.completions.parse(model=MODEL, messages=messages, response_format=Reading, max_tokens=100, seed=seed)
        assert parsed.choices[0].finish_reason == "stop" and isinstance(parsed.choices[0].message.parsed, Reading)
    with c.beta.chat.completions.stream(model=MODEL, messages=messages, response_format=Reading, max_tokens=100, temperature=0.7) as stream:
        final = stream.get_final_completion()
    assert isinstance(final.choices[0].message.parsed, Reading)
    whole = c.chat.completions.create(model=MODEL, messages=messages, response_format={"type": "json_object"}, max_tokens=40)
    assert whole.choices[0].finish_reason == "length" or isinstance(json.loads(whole.choices[0].message.content), dict)
    deadline, samples = time.monotonic() + 10, []
    while len(samples) < 6 and time.monotonic() < deadline:  # the ledger's thread writes them just after each answer
        samples = [s for s in GatewayStore(subnet["db"]).samples_after(0, 10_000)[0] if s.request.get("response_format")]
        time.sleep(0.2)
    assert len(samples) == 6 and all(verified(subnet, s) for s in samples)

    async def free_text(url: str) -> AnswerRecord:  # the sampled request, answered by a miner that drops its grammar
        request = samples[0].request
        async with aiohttp.ClientSession() as session, session.post(url + "/v1/chat/completions", json=request) as answer:
            fold = StreamFold(chat=True, max_tokens=request["max_tokens"])
            async for line in answer.content:
                if line.startswith(b"data: "):
                    fold.add(line[6:].decode().strip())
        return AnswerRecord.from_fold(fold)

    ignoring = start_adversary(subnet["engine"].url, "ignore-grammar", subnet["tmp"])
    try:
        ignoring.wait_healthy(timeout=60)
        answer = asyncio.run(free_text(ignoring.url))
    finally:
        ignoring.stop()
    assert answer.text != samples[0].answer.text  # (the same seed, another answer: not the grammar's)
    assert not verified(subnet, samples[0].model_copy(update={"answer": answer}))
    status, _, body = post(subnet, "/v1/completions", json.dumps({"model": MODEL, "prompt": "hi", "response_format": {"type": "json_object"}}).encode())
    assert (status, body["error"]["code"]) == (400, "unsupported_parameter") and "response_format" in body["error"]["message"]


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city now.",
        "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}}, "required": ["city"], "additionalProperties": False},
    },
}


def test_a_tool_call_round_trip_through_the_openai_client_is_verified_like_any_answer(subnet):
    """Tools on a model without a tool format: the client gets ``tool_calls`` whose arguments follow the tool's
    schema (asked for, named, or streamed), sends the result back, and gets a plain answer; every answer a miner
    wrote for it is a grammar's answer the validator verifies."""
    c = client(subnet)
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    called = c.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER], tool_choice="required", max_tokens=60)
    call = called.choices[0].message.tool_calls[0]
    assert called.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather" and call.id.startswith("call_")
    assert json.loads(call.function.arguments)["city"] in ("Paris", "Rome")
    named = {"type": "function", "function": {"name": "get_weather"}}
    streamed = c.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER], tool_choice=named, max_tokens=60, stream=True)
    deltas = [chunk.choices[0] for chunk in streamed if chunk.choices]
    assert deltas[0].delta.tool_calls[0].function.name == "get_weather" and deltas[-1].finish_reason == "tool_calls"
    result = {"role": "tool", "tool_call_id": call.id, "content": '{"celsius": 21}'}
    answered = c.chat.completions.create(model=MODEL, messages=[*messages, called.choices[0].message, result], tools=[WEATHER], max_tokens=60)
    choice = answered.choices[0]  # "auto": a call or content, each in OpenAI's shape
    assert (choice.finish_reason == "tool_calls" and choice.message.tool_calls) or isinstance(choice.message.content, str)
    plain = c.chat.completions.create(model=MODEL, messages=[*messages, called.choices[0].message, result], tools=[WEATHER], tool_choice="none", max_tokens=8)
    assert plain.choices[0].message.tool_calls is None and plain.choices[0].finish_reason in ("stop", "length")
    deadline, samples = time.monotonic() + 10, []
    while len(samples) < 3 and time.monotonic() < deadline:  # the three answered under the tool grammar
        samples = [s for s in GatewayStore(subnet["db"]).samples_after(0, 10_000)[0] if "tool_call" in json.dumps(s.request.get("response_format"))]
        time.sleep(0.2)
    assert len(samples) == 3 and all(verified(subnet, s) for s in samples)
    assert all("tools" not in s.request and "tool_choice" not in s.request for s in samples)  # a miner sees turns and a grammar


def test_a_request_every_miner_refuses_is_the_users_400_and_no_miners_failure(subnet):
    """A user who sends what the gateway accepts and every engine refuses (a budget past the engines' 1024-token
    context, within the model list's 2048) cannot grief the miners: the user gets a 400 naming it, no miner's
    failures (what validators pay by) move, and the miners keep serving."""
    failed = lambda: {r.hotkey: r.failed for r in GatewayStore(subnet["db"]).service_reports()}  # noqa: E731
    before = failed()
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1500}
    for _ in range(3):
        status, _, error = post(subnet, "/v1/chat/completions", json.dumps(body).encode())
        assert status == 400 and "every miner that tried this request refused it" in error["error"]["message"], error
    time.sleep(0.5)  # the ledger commits a few milliseconds behind the answers
    assert failed() == before
    answer = client(subnet).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert answer.choices[0].finish_reason in ("stop", "length")  # no breaker opened on them


def within_one_minute(seconds: float) -> None:
    """Wait, if need be, so the next ``seconds`` stay inside one UTC minute: the limits are sliding
    window counters, which weigh the previous minute's count by its overlap with the last 60 s, so
    right after a minute boundary they let one request more through than an exact window would (an O(1)
    approximation, gateway/limits.py). A test asserting exact counts keeps clear of it."""
    into = time.time() % 60
    if into > 60 - seconds:
        time.sleep(60 - into + 0.2)


def test_request_limits_hold_under_concurrency_and_say_when_to_retry(subnet):
    within_one_minute(20)
    key = json.loads(slmnet("keys", "create", "limited", "--db", str(subnet["db"]), "--rpm", "4", "--json").stdout)["key"]
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}).encode()

    async def burst() -> list:
        return await asyncio.gather(*(asyncio.to_thread(post, subnet, "/v1/chat/completions", body, key) for _ in range(10)))

    statuses = sorted(status for status, _, _ in asyncio.run(burst()))
    assert statuses == [200] * 4 + [429] * 6
    status, headers, error = post(subnet, "/v1/chat/completions", body, key)
    assert status == 429 and error["error"]["code"] == "rate_limit_requests" and int(headers["Retry-After"]) >= 1

    quota_key = json.loads(slmnet("keys", "create", "quota", "--db", str(subnet["db"]), "--quota", "60", "--json").stdout)["key"]
    first = post(subnet, "/v1/chat/completions", body, quota_key)
    assert first[0] == 200
    status, _, error = post(
        subnet, "/v1/chat/completions", json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 60}).encode(), quota_key
    )
    assert status == 402 and error["error"]["code"] == "insufficient_quota"  # not a retryable 429: it refills only with its period
    revoked = slmnet("keys", "revoke", "quota", "--db", str(subnet["db"]))
    assert revoked.returncode == 0
    assert post(subnet, "/v1/chat/completions", body, quota_key)[2]["error"]["code"] == "api_key_revoked"
    usage = json.loads(slmnet("keys", "usage", "limited", "--db", str(subnet["db"]), "--json").stdout)
    assert usage["requests"] == 4 and usage["completion_tokens"] > 0


def test_rate_limit_headers_own_key_model_metadata_and_key_updates_as_openai_clients_expect(subnet):
    db = str(subnet["db"])
    made = json.loads(
        slmnet("keys", "create", "headers", "--db", db, "--rpm", "50", "--tpm", "100000", "--quota", "5000", "--quota-period", "day", "--json").stdout
    )
    c = client(subnet, made["key"])
    ask = dict(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=8)
    whole = c.chat.completions.with_raw_response.create(**ask)
    assert whole.headers["x-ratelimit-limit-requests"] == "50" and whole.headers["x-ratelimit-remaining-requests"] == "49"
    assert whole.headers["x-ratelimit-limit-tokens"] == "100000" and int(whole.headers["x-ratelimit-remaining-tokens"]) < 100000
    assert whole.headers["x-ratelimit-reset-requests"].endswith("s") and int(whole.headers["x-slmnet-quota-remaining-tokens"]) < 5000
    streamed = c.chat.completions.with_raw_response.create(**ask, stream=True)
    assert streamed.headers["x-ratelimit-remaining-requests"] == "48"
    list(streamed.parse())

    status, _, mine = post(subnet, "/v1/key", None, made["key"], method="GET")
    assert status == 200 and mine["limits"] == {"requests_per_minute": 50, "tokens_per_minute": 100000, "quota_tokens": 5000, "quota_period_s": 86400}
    assert mine["remaining"]["requests_this_minute"] == 48 and mine["usage"]["requests"] == 2
    assert mine["remaining"]["quota_tokens"] == 5000 - mine["usage_this_period"] and mine["quota_resets_at"] > time.time()

    model = c.models.retrieve(MODEL)
    assert model.context_length == 2048 and 0 < model.max_completion_tokens < 2048 and model.miners >= 1
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("gpt-5")
    with pytest.raises(openai.AuthenticationError):  # a typo in the key is never a 200, on any /v1 path
        client(subnet, "slm-typo").models.list()
    assert post(subnet, "/v1/key", None, "slm-typo", method="GET")[0] == 401

    assert slmnet("keys", "update", "headers", "--db", db, "--rpm", "1").returncode == 0  # the next request sees it, in a fresh window
    status, headers, _ = post(subnet, "/v1/chat/completions", json.dumps(ask).encode(), made["key"])
    assert status == 200 and headers["x-ratelimit-limit-requests"] == "1" and headers["x-ratelimit-remaining-requests"] == "0"
    status, headers, error = post(subnet, "/v1/chat/completions", json.dumps(ask).encode(), made["key"])
    assert status == 429 and error["error"]["code"] == "rate_limit_requests" and headers["x-ratelimit-remaining-requests"] == "0"
    assert slmnet("keys", "update", "headers", "--db", db, "--expires", "2000-01-01").returncode == 0
    with pytest.raises(openai.AuthenticationError) as expired:
        c.chat.completions.create(**ask)
    assert expired.value.body["code"] == "api_key_expired"


def test_browsers_on_allowed_origins_get_cors_and_others_do_not(subnet):
    status, headers, _ = post(subnet, "/v1/chat/completions", None, method="OPTIONS", Origin=ORIGIN, **{"Access-Control-Request-Method": "POST"})
    assert status == 204 and headers["Access-Control-Allow-Origin"] == ORIGIN and "Authorization" in headers["Access-Control-Allow-Headers"]
    status, headers, _ = post(subnet, "/v1/models", None, method="GET", Origin=ORIGIN)
    assert status == 200 and headers["Access-Control-Allow-Origin"] == ORIGIN and "x-ratelimit-remaining-requests" in headers["Access-Control-Expose-Headers"]
    status, headers, _ = post(subnet, "/v1/models", None, "slm-typo", method="GET", Origin=ORIGIN)
    assert status == 401 and headers["Access-Control-Allow-Origin"] == ORIGIN  # the browser app can read the error too
    status, headers, _ = post(subnet, "/v1/models", None, method="GET", Origin="https://evil.example")
    assert status == 200 and "Access-Control-Allow-Origin" not in headers
    assert post(subnet, "/v1/chat/completions", None, method="OPTIONS", Origin="https://evil.example")[0] == 403


@pytest.fixture(scope="module")
def workers(subnet):
    """A second gateway on the same miners: two worker processes on one port, limits in a real redis-server."""
    tmp = subnet["tmp"] / "workers"
    tmp.mkdir()
    redis = RedisServer(tmp)
    subnet["servers"].append(redis)
    db = tmp / "gateway.sqlite"
    key = create_key(db, "tester")
    flags = ("--workers", "2", "--redis", redis.url, "--keepalive", "0.5", "--max-attempts", "4", "--metrics-token", METRICS_TOKEN)
    gateway = start_gateway(subnet["net"], "gateway", db, f"{MODEL}={subnet['tmp'] / 's0'}", tmp, *flags)
    subnet["servers"].append(gateway)
    # Healthy means one worker answers; the tests need both listening (a burst sent while one still starts all goes to the other).
    seen, deadline = set(), time.monotonic() + 120
    while seen != {"w0", "w1"} and time.monotonic() < deadline:
        seen.add(post({"url": gateway.url, "key": key}, "/health", None, method="GET")[1].get("x-slmnet-worker"))
        time.sleep(0.1)
    assert seen == {"w0", "w1"}, seen
    return {**subnet, "url": gateway.url, "db": db, "key": key, "redis": redis, "gateway": gateway}


def test_workers_without_redis_refuse_to_start(subnet):
    refused = slmnet("gateway", *subnet["net"].flags("gateway"), "--workers", "2", "--tokenizer", f"{MODEL}={subnet['tmp'] / 's0'}")
    assert refused.returncode == 1 and "--workers 2 needs --redis URL" in refused.stderr


def test_limits_and_quotas_are_exact_across_two_workers(workers):
    within_one_minute(20)
    db = str(workers["db"])
    limited = json.loads(slmnet("keys", "create", "rpm", "--db", db, "--rpm", "6", "--json").stdout)["key"]
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}).encode()

    async def burst(key: str, payload: bytes, n: int) -> list:
        return await asyncio.gather(*(asyncio.to_thread(post, workers, "/v1/chat/completions", payload, key) for _ in range(n)))

    answers = asyncio.run(burst(limited, body, 20))
    assert sorted(status for status, _, _ in answers) == [200] * 6 + [429] * 14
    assert {headers["x-slmnet-worker"] for _, headers, _ in answers} == {"w0", "w1"}  # both workers answered (each alone would let 6 through)

    # The quota never overshoots across workers: what admitted requests used stays within it (each alone would allow it twice).
    quota = json.loads(slmnet("keys", "create", "quota", "--db", db, "--quota", "200", "--json").stdout)["key"]
    ask = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 30, "ignore_eos": True}).encode()
    answers = asyncio.run(burst(quota, ask, 12))
    used = [answer["usage"]["total_tokens"] for status, _, answer in answers if status == 200]
    refused = [answer["error"]["code"] for status, _, answer in answers if status == 402]
    assert len(used) + len(refused) == 12 and refused and set(refused) == {"insufficient_quota"}
    assert sum(used) <= 200 and len(used) >= 3  # each reserves prompt + 30 (about 50) and is charged at most that


def test_redis_down_fails_closed_and_the_gateway_recovers_when_it_returns(workers):
    key = json.loads(slmnet("keys", "create", "outage", "--db", str(workers["db"]), "--rpm", "100", "--json").stdout)["key"]
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}).encode()
    assert post(workers, "/v1/chat/completions", body, key)[0] == 200
    workers["redis"].stop()
    status, headers, error = post(workers, "/v1/chat/completions", body, key)
    assert status == 503 and error["error"]["code"] == "limits_unavailable" and headers["Retry-After"]
    workers["redis"].start()
    deadline = time.monotonic() + 30
    while (status := post(workers, "/v1/chat/completions", body, key)[0]) != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert status == 200


def test_user_answers_and_verdicts_cross_between_gateway_and_validator_over_signed_http(subnet):
    """The hand-over needs no shared disk: the validator reads the sampled answers over signed HTTP and
    verifies them with its own reference; its verdict takes a flagged miner out of routing at once."""
    c = client(subnet)
    c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Name a colour."}], max_tokens=16)
    c.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=12)  # a text completion is sampled and verified too
    wallets, uids = subnet["wallets"], subnet["uids"]
    validator = wallets["gateway"].hotkey  # the gateway trusts its own hotkey by default (a local subnet's validator shares it)
    store = Store(subnet["tmp"] / "validator.sqlite")
    targets = {wallets[name].hotkey.ss58_address: Target(uids[name], wallets[name].hotkey.ss58_address, "", MODEL, 4) for name in MINERS}

    async def hand_over() -> tuple:
        async with aiohttp.ClientSession() as session:
            unsigned = await session.get(subnet["url"] + "/v1/organic/samples?after=0")
            stranger = await SignedOutbox(session, subnet["url"], wallets["fast1"].hotkey).after(0, 10)  # a miner may not read users' answers
            outbox = SignedOutbox(session, subnet["url"], validator)
            references = {MODEL: ReferenceEngine(session, subnet["engine"].url, MODEL, ModelTokenizer(subnet["tmp"] / "s0"), ENDS)}
            first = await verify_samples(outbox, store, references, targets)
            again = await verify_samples(outbox, store, references, targets)
            service = await outbox.service()
            flagged = MinerVerdict(uid=uids["fast1"], hotkey=wallets["fast1"].hotkey.ss58_address, model=MODEL, standing="flagged", answers=300, evidence=1.0)
            await outbox.publish(MinerVerdicts(round=0, verdicts=[flagged]))
            return unsigned.status, (await unsigned.json())["error"]["code"], stranger, first, again, service

    status, code, stranger, first, again, service = asyncio.run(hand_over())
    assert sum(m.served for m in service.miners) >= 1 and {m.hotkey for m in service.miners} <= set(targets)  # what each miner did for users
    assert status == 401 and code == "auth_missing" and stranger == ([], 0)
    rows = store.take_organic(round_index=0)
    assert first >= 2 and again == 0  # --verify-share 1: every answer sampled, each verified once (the cursor is the validator's)
    assert len(rows) == first and all(v.passed and v.stats.tokens >= 0 for v in rows)  # honest miners pass on real traffic, with their evidence
    text = [s for s in GatewayStore(subnet["db"]).samples_after(0, 10_000)[0] if s.request.get("prompt") == "Once upon a time"]
    assert text and verified(subnet, text[-1])
    served = {
        c.chat.completions.with_raw_response.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2).headers["x-slmnet-miner-uid"]
        for _ in range(12)
    }
    assert str(uids["fast1"]) not in served  # held out from the next request on (it would take about half of them)
    board = {m["uid"]: m for m in json.loads(urllib.request.urlopen(subnet["url"] + "/api/leaderboard", timeout=30).read())["miners"]}
    assert board[uids["fast1"]]["verdict"] == "flagged"

    async def forgive() -> None:
        async with aiohttp.ClientSession() as session:
            ok = MinerVerdict(uid=uids["fast1"], hotkey=wallets["fast1"].hotkey.ss58_address, model=MODEL, standing="ok", answers=300, evidence=0.0)
            await SignedOutbox(session, subnet["url"], validator).publish(MinerVerdicts(round=1, verdicts=[ok]))

    asyncio.run(forgive())  # the tests after this one need every miner
    store.close()


@pytest.mark.parametrize("setup", ["one process", "two workers"])
def test_dashboard_shows_the_leaderboard_quality_by_family_and_streams_in_the_playground(setup, request):
    from playwright.sync_api import sync_playwright

    subnet = request.getfixturevalue("subnet" if setup == "one process" else "workers")
    shot = ARTIFACTS / f"dashboard-{setup.replace(' ', '-')}.png"
    # what a validator's round hands over: two miners' graded answers on the model, by family
    graded = {"fast1": [("arithmetic", 12, 9), ("uppercase", 10, 4)], "fast2": [("arithmetic", 8, 6)]}
    verdicts = [
        MinerVerdict(
            uid=subnet["uids"][name], hotkey=subnet["wallets"][name].hotkey.ss58_address, model=MODEL, standing="ok", answers=300, evidence=0.0,
            quality=[FamilyScore(family=f, answers=a, correct=c) for f, a, c in scores],
        )
        for name, scores in graded.items()
    ]  # fmt: skip

    async def publish() -> None:
        async with aiohttp.ClientSession() as session:
            await SignedOutbox(session, subnet["url"], subnet["wallets"]["gateway"].hotkey).publish(MinerVerdicts(round=2, verdicts=verdicts))

    asyncio.run(publish())
    workers = {"w0", "w1"} if setup == "two workers" else {None}
    up_to_date, deadline = set(), time.monotonic() + 30  # posted to one worker: in force in every one within a health tick
    while up_to_date != workers and time.monotonic() < deadline:
        with urllib.request.urlopen(subnet["url"] + "/api/quality", timeout=30) as response:  # a fresh connection: any worker
            quality = {m["id"]: m for m in json.loads(response.read())["models"]}
            if quality[MODEL]["graded_answers"] == 30:
                up_to_date.add(response.headers.get("x-slmnet-worker"))
        time.sleep(0.1)
    assert up_to_date == workers
    assert quality[MODEL]["families"] == {
        "arithmetic": {"answers": 20, "correct": 15, "accuracy": 0.75},
        "uppercase": {"answers": 10, "correct": 4, "accuracy": 0.4},
    }  # summed over the model's miners; each miner's own figures beside them
    assert {m["uid"]: m["families"] for m in quality[MODEL]["miners"]}[subnet["uids"]["fast2"]] == {"arithmetic": {"answers": 8, "correct": 6}}
    listed = client(subnet).models.retrieve(MODEL).model_extra["quality"]
    assert listed["graded_answers"] == 30 and listed["families"]["uppercase"]["accuracy"] == 0.4

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(subnet["url"] + "/")
        page.wait_for_function("document.querySelectorAll('#board tbody tr').length >= 4")
        assert MODEL in page.inner_text("#board")
        card = f'#model-cards [data-model="{MODEL}"]'
        page.wait_for_selector(f"{card} svg rect")
        assert "30 graded answers" in page.inner_text(card)
        bars = {page.get_attribute(f"{card} svg rect:nth-of-type({i})", "height") for i in (1, 2)}
        assert {round(float(h), 1) for h in bars} == {82.5, 44.0}  # 75% and 40% of the chart's 110 units
        assert "75% of 20" in page.inner_text(card) and "40% of 10" in page.inner_text(card)
        assert MODEL in page.inner_text("#quality") and "30" in page.inner_text("#quality")
        page.fill("#key", subnet["key"])
        page.click("#send")
        page.wait_for_function("document.getElementById('meta').textContent.includes('tokens')", timeout=60_000)
        assert page.inner_text("#answer").strip()
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 10_000


def _kill(subnet, uid: int) -> None:
    name = next(n for n, u in subnet["uids"].items() if u == uid)
    os.killpg(subnet["miners"][name].process.pid, signal.SIGKILL)


def _fast_miner_the_router_prefers(subnet, body: bytes) -> int:
    """The fast miner that answers a request now (the router weighs miners by what it measured: one often takes most requests)."""
    fast = {subnet["uids"]["fast1"], subnet["uids"]["fast2"]}
    for _ in range(40):
        status, headers, _ = post(subnet, "/v1/chat/completions", body)
        uid = int(headers["x-slmnet-miner-uid"].split(",")[-1])
        if status == 200 and uid in fast:
            return uid
    pytest.fail("no request was answered by a fast miner")


def test_a_miner_killed_before_the_first_token_costs_the_user_nothing(subnet, figure):
    """Requests sent the moment a miner dies, before the gateway's health probe (every 5 s)
    can notice: those routed to it are retried on another miner, and every user gets an answer.
    The miner killed is the fast one the router sends requests to (whatever earlier tests taught it)."""
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6}).encode()
    victim = subnet["killed"] = _fast_miner_the_router_prefers(subnet, body)
    _kill(subnet, victim)

    async def at_once() -> list:
        return await asyncio.gather(*(asyncio.to_thread(post, subnet, "/v1/chat/completions", body) for _ in range(16)))

    answers = asyncio.run(at_once())
    figure("miner SIGKILLed as 16 requests arrive", f"{sum(status == 200 for status, _, _ in answers)}/16 user requests completed")
    assert [status for status, _, _ in answers] == [200] * 16
    assert all(answer["choices"][0]["message"]["content"] is not None for _, _, answer in answers)
    metrics = urllib.request.urlopen(subnet["url"] + "/metrics").read().decode()
    assert 'slmnet_gateway_miner_errors_total{kind="connection",uid="%d"}' % victim in metrics


def test_a_miner_killed_mid_stream_is_replaced_without_a_visible_break(subnet, figure):
    # Only the slow miners are left (one fast miner died in the test before): the stream lands on one of them.
    for name in ("fast1", "fast2"):
        if subnet["uids"][name] != subnet.get("killed"):
            _kill(subnet, subnet["uids"][name])
    slow_uids = {subnet["uids"]["slow1"], subnet["uids"]["slow2"]}
    c = client(subnet)
    ask = dict(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me a story."}],
        max_tokens=48,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    for _ in range(5):
        stream = c.chat.completions.with_raw_response.create(**ask)
        first_miner = int(stream.headers["x-slmnet-miner-uid"].split(",")[-1])  # the one streaming (a dead one tried first is listed before it)
        chunks = stream.parse()
        if first_miner in slow_uids:
            break
        list(chunks)
    else:
        pytest.fail("no request was routed to a slow miner")
    events, before_kill = [], None
    for chunk in chunks:
        events.append(chunk)
        if before_kill is None and sum(1 for e in events if e.choices and e.choices[0].delta.content) >= 3:
            before_kill = "".join(e.choices[0].delta.content or "" for e in events if e.choices)
            _kill(subnet, first_miner)
    text = "".join(e.choices[0].delta.content or "" for e in events if e.choices)
    finish = [e.choices[0].finish_reason for e in events if e.choices and e.choices[0].finish_reason]
    assert before_kill and text.startswith(before_kill) and len(text) > len(before_kill) + 20  # went on after the kill
    assert finish == ["length"] and events[-1].usage is not None  # ended normally: no error event, usage, [DONE]
    request_id = stream.headers["x-slmnet-request-id"]
    deadline = time.monotonic() + 10  # the row is closed just after the last byte went out
    while ledger(subnet, request_id)[0] == "open" and time.monotonic() < deadline:
        time.sleep(0.1)
    # failovers mid-stream in the ledger: the slow miner's, then one for each dead fast miner the
    # continuation met before the health checks saw it die (each is tried once: 3 at most)
    assert 1 <= ledger(subnet, request_id)[3] <= 3
    figure(
        "miner SIGKILLed mid-stream",
        f"the stream went on on another miner: {len(before_kill)} characters before, {len(text)} in all, {ledger(subnet, request_id)[3]} failover(s)",
    )
    metrics = urllib.request.urlopen(subnet["url"] + "/metrics").read().decode()
    assert 'slmnet_gateway_failovers_total{phase="mid_stream"}' in metrics
    # The continuing miner's part is sampled too (--verify-share 1), with the continuation it was sent, and verifies honest.
    continued = [s for s in GatewayStore(subnet["db"]).samples_after(0, 10_000)[0] if s.request.get("continue_final_message")]
    assert continued and text.endswith(continued[-1].answer.text)
    assert continued[-1].request["messages"][-1] == {"role": "assistant", "content": text[: len(text) - len(continued[-1].answer.text)]}
    assert verified(subnet, continued[-1])


def test_a_user_who_hangs_up_mid_stream_is_charged_for_what_was_sent_and_the_row_says_cancelled(subnet):
    """Only a slow miner is left (150 ms a token): 400 tokens take a minute, so the user surely
    leaves with most of the answer still to come, however fast the machine."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 400, "stream": True, "ignore_eos": True}
    request = urllib.request.Request(
        subnet["url"] + "/v1/chat/completions", data=json.dumps(body).encode(), method="POST", headers={"Authorization": f"Bearer {subnet['key']}"}
    )
    response = urllib.request.urlopen(request, timeout=60)
    request_id = response.headers["x-slmnet-request-id"]
    while not response.readline().startswith(b"data: {"):
        pass
    response.close()  # the user goes away after the first chunk
    deadline = time.monotonic() + 30
    while ledger(subnet, request_id)[0] == "open" and time.monotonic() < deadline:
        time.sleep(0.2)
    status, _, completion_tokens, _ = ledger(subnet, request_id)
    assert status == "cancelled" and 0 < completion_tokens < 400


def test_a_stream_waiting_for_its_first_token_gets_keepalive_comments(workers):
    """After the kill tests only a slow miner is left (3 s to its first token); the gateway with
    --keepalive 0.5 sends SSE comments meanwhile, and the answer then streams as usual."""
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}).encode()
    request = urllib.request.Request(workers["url"] + "/v1/chat/completions", data=body, method="POST", headers={"Authorization": f"Bearer {workers['key']}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        lines = [line.decode().strip() for line in response if line.strip()]
    first_data = next(i for i, line in enumerate(lines) if line.startswith("data: {"))
    assert first_data >= 2 and all(line == ": keep-alive" for line in lines[:first_data])
    assert lines[-1] == "data: [DONE]"


def test_metrics_are_read_with_the_token_the_gateway_was_given_and_refused_without(workers):
    status, _, body = post(workers, "/metrics", None, method="GET")  # on this host, but the gateway was given a token
    assert (status, body["error"]["code"]) == (403, "metrics_not_allowed")
    request = urllib.request.Request(workers["url"] + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200 and b"slmnet_gateway_requests_total" in response.read()


def test_a_gateway_killed_mid_request_keeps_a_ledger_that_charges_what_was_streamed(subnet, figure):
    """SIGKILL of the gateway with streams in flight through a slow miner (3 s, then 150 ms a token),
    at a random moment 2 to 5 s into the tokens. After a restart on the same ledger: every request
    has its row, marked 'interrupted', charged the tokens of its last committed progress write
    (every second): never more than the user was sent, at most one interval's tokens less (and one:
    a write queued in the ledger's last 5 ms is lost with the process); and the
    key's quota counts exactly what the ledger says."""
    key = create_key(subnet["db"], "kill-test", "--quota", "100000")
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 100, "stream": True, "ignore_eos": True}
    body["return_token_ids"] = True  # each chunk names its tokens: what the user was sent, counted exactly
    received: dict[int, tuple[str, int]] = {}

    def stream(i: int) -> None:
        request = urllib.request.Request(
            subnet["url"] + "/v1/chat/completions", data=json.dumps(body).encode(), method="POST", headers={"Authorization": f"Bearer {key}"}
        )
        request_id, tokens = None, 0
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                request_id = response.headers["x-slmnet-request-id"]
                for line in response:
                    if line.startswith(b"data: {") and (choices := json.loads(line[6:])["choices"]):
                        tokens += len(choices[0].get("token_ids") or [])
        except (OSError, http.client.HTTPException):
            pass  # the gateway died under it
        received[i] = (request_id, tokens)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    delay = random.Random().uniform(5.0, 8.0)  # 3 s to the first token, then 2-5 s of tokens
    time.sleep(delay)
    os.kill(subnet["gateway"].process.pid, signal.SIGKILL)
    for t in threads:
        t.join(timeout=60)
    rows = {rid: ledger(subnet, rid) for rid, _ in received.values()}
    assert None not in rows and len(rows) == 4 and all(row[0] == "open" for row in rows.values())  # the kill left them open
    restarted = start_gateway(subnet["net"], "gateway", subnet["db"], f"{MODEL}={subnet['tmp'] / 's0'}", subnet["tmp"], "--stall-timeout", "3")
    subnet["servers"].append(restarted)
    per_interval = 1.0 / 0.15 + 2  # an interval's tokens, and one more: the ledger writes ~5 ms behind, so a progress write queued at the kill is lost
    pairs = []
    for request_id, sent in received.values():
        status, _, completion_tokens, _ = ledger(subnet, request_id)
        pairs.append(f"{sent}/{completion_tokens}")
        assert status == "interrupted" and sent > 0
        # charged at the last progress write: at most one interval's tokens behind, never ahead (one chunk may be in flight)
        assert sent - per_interval <= completion_tokens <= sent + 1, (sent, completion_tokens)
    db = sqlite3.connect(subnet["db"])
    (charged,) = db.execute(
        "SELECT SUM(prompt_tokens + completion_tokens) FROM usage u JOIN api_keys k ON u.key_id = k.id WHERE k.name = 'kill-test'"
    ).fetchone()
    own = json.loads(urllib.request.urlopen(urllib.request.Request(restarted.url + "/v1/key", headers={"Authorization": f"Bearer {key}"})).read())
    assert own["remaining"]["quota_tokens"] == 100000 - charged and own["usage"]["requests"] == 4
    figure(f"gateway SIGKILLed {delay:.1f} s into 4 streams", f"4/4 rows 'interrupted'; tokens sent/charged {', '.join(pairs)}; quota = ledger")

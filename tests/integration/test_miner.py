"""`slmnet miner` in front of the real vLLM CPU engine (tiny model) on a localnet, called like a validator would."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from dataclasses import dataclass

import aiohttp
import bittensor as bt
import pytest

import chain
from models.tiny import build_tiny
from signed.client import MinerClient, signed_headers
from tests.harness.localnet import make_localnet
from tests.harness.processes import free_port, health_json, start_adversary, start_miner
from tests.harness.sse import read_sse

pytestmark = pytest.mark.slow
MODEL = "slmnet/tiny-qwen2-s0"
CAPACITY, PER_CALLER, BODY_LIMIT = 3, 2, 64 * 1024
METRICS_TOKEN = "a-scrapers-secret"  # the slow miner's --metrics-token
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "What is 17 + 25?"}], "max_tokens": 16, "temperature": 0, "seed": 7}


@dataclass
class Subnet:
    network: str
    wallets_dir: str
    miner: bt.Wallet
    validators: list[bt.Wallet]  # registered, 2000 TAO staked, validator permits
    unstaked: bt.Wallet  # registered, no stake
    outsider: bt.Wallet  # not registered
    miner_url: str
    engine_url: str
    weights_sha256: str
    slow: bt.Wallet  # a second miner, behind an engine that takes 150 ms a token (the harness's "slow" mode)
    slow_url: str


@pytest.fixture(scope="module")
def subnet(tmp_path_factory, tiny_engine):
    tmp = tmp_path_factory.mktemp("miner")
    digest = build_tiny(tmp / "tiny", seed=0)
    engine = tiny_engine
    net = make_localnet(tmp)
    miner, slow, unstaked, outsider = net.wallet("miner"), net.wallet("slow"), net.wallet("unstaked"), net.wallet("outsider")
    validators = [net.wallet(f"validator{i}") for i in range(3)]

    async def register() -> None:
        async with chain.connect(net.network) as c:
            for wallet in [miner, slow, unstaked, *validators]:
                (await c.register(wallet, net.netuid)).raise_for_failure()

    asyncio.run(register())
    for wallet in validators:
        net.stake(wallet, 2000)
    limits = ["--capacity", str(CAPACITY), "--max-in-flight-per-caller", str(PER_CALLER), "--max-body-bytes", str(BODY_LIMIT), "--metagraph-interval", "1"]
    slow_engine, miners = start_adversary(engine.url, "slow", tmp), []
    try:
        slow_engine.wait_healthy(timeout=60)
        for name, url, extra in (("miner", engine.url, []), ("slow", slow_engine.url, ["--metrics-token", METRICS_TOKEN])):
            miners.append(start_miner([*net.flags(name), "--model", str(tmp / "tiny"), "--engine-url", url, *limits, *extra], free_port(), tmp))
        for process in miners:
            process.wait_healthy(timeout=120)
        yield Subnet(net.network, str(net.wallets_dir), miner, validators, unstaked, outsider, miners[0].url, engine.url, digest, slow, miners[1].url)
    finally:
        for process in miners:
            assert process.stop() == 0, process.log_tail()
        slow_engine.stop()


def client(session: aiohttp.ClientSession, subnet: Subnet, sender: bt.Wallet, slow: bool = False) -> MinerClient:
    """``sender`` calling the module's miner, or (``slow``) the one behind the slow engine."""
    if slow:
        return MinerClient(session, subnet.slow_url, sender.hotkey, subnet.slow.hotkey.ss58_address)
    return MinerClient(session, subnet.miner_url, sender.hotkey, subnet.miner.hotkey.ss58_address)


async def test_signed_stream_carries_tokens_logprobs_and_token_ids_like_the_engine(subnet):
    body = {**CHAT, "max_tokens": 24, "ignore_eos": True, "stream": True, "logprobs": True, "top_logprobs": 2, "return_token_ids": True}
    async with aiohttp.ClientSession() as session:
        async with client(session, subnet, subnet.validators[0]).post("/v1/chat/completions", body) as response:
            assert response.status == 200 and response.content_type == "text/event-stream"
            assert response.headers["X-Request-Id"]
            events, done, _ = await read_sse(response)
        async with session.post(subnet.engine_url + "/v1/chat/completions", json=body) as direct:
            direct_events, _, _ = await read_sse(direct)
    assert done
    assert events[0]["prompt_token_ids"]
    token_ids = [t for e in events for t in e["choices"][0].get("token_ids") or []]
    logprobs = [lp for e in events if e["choices"][0]["logprobs"] for lp in e["choices"][0]["logprobs"]["content"]]
    assert len(token_ids) == len(logprobs) == 24
    assert all(len(lp["top_logprobs"]) == 2 and lp["logprob"] <= 0 for lp in logprobs)
    # Byte for byte the engine's answer (greedy), only proxied.
    assert token_ids == [t for e in direct_events for t in e["choices"][0].get("token_ids") or []]


async def test_the_miner_passes_each_token_on_as_the_engine_writes_it(subnet):
    """Judged behind the slow engine, whose writes are 150 ms apart: the tiny engine itself sometimes
    writes a whole answer at its end (vLLM's CPU front end on 2 cores; docs/calibration.md), so read
    counts straight from it say nothing about the miner."""
    body = {**CHAT, "max_tokens": 6, "ignore_eos": True, "stream": True}
    async with aiohttp.ClientSession() as session:
        async with client(session, subnet, subnet.validators[0], slow=True).post("/v1/chat/completions", body) as response:
            assert response.status == 200
            _, done, chunks = await read_sse(response)
    assert done
    # 7+ writes (the role, six tokens) 150 ms apart: a buffering relay would hand them over in one or two reads.
    assert chunks >= 5


async def test_chat_and_text_completions_report_usage_and_token_ids(subnet):
    async with aiohttp.ClientSession() as session:
        c = client(session, subnet, subnet.validators[0])
        async with c.post("/v1/chat/completions", {**CHAT, "max_tokens": 5, "ignore_eos": True, "return_token_ids": True}) as response:
            chat = await response.json()
        async with c.post(
            "/v1/completions",
            {"model": MODEL, "prompt": "Reverse the list [1, 2, 3]", "max_tokens": 4, "ignore_eos": True, "logprobs": 1, "return_token_ids": True},
        ) as response:
            text = await response.json()
    assert chat["usage"]["completion_tokens"] == 5 and len(chat["choices"][0]["token_ids"]) == 5
    assert chat["usage"]["prompt_tokens"] == len(chat["prompt_token_ids"])
    assert text["usage"]["completion_tokens"] == 4 and len(text["choices"][0]["token_ids"]) == 4
    assert len(text["choices"][0]["logprobs"]["token_logprobs"]) == 4


async def test_models_lists_the_declared_identity_and_the_chain_shows_it(subnet):
    async with aiohttp.ClientSession() as session:
        async with client(session, subnet, subnet.validators[1]).get("/v1/models") as response:
            listing = await response.json()
    (entry,) = listing["data"]
    assert entry["id"] == MODEL and entry["max_model_len"] == 1024
    declared = entry["slmnet"]["declaration"]
    assert declared == {"model": MODEL, "weights_sha256": subnet.weights_sha256, "max_context": 1024, "capacity": CAPACITY, "dtype": "float32", "v": 1}
    async with chain.connect(subnet.network) as c:
        neuron = (await c.metagraph(1)).by_hotkey(subnet.miner.hotkey.ss58_address)
    assert neuron.endpoint == subnet.miner_url
    assert neuron.model.model_dump(exclude_none=True) == declared


async def test_health_needs_no_signature_and_metrics_a_scraper_on_this_host_the_token_or_a_signature(subnet):
    assert health_json(subnet.miner_url)["engine"] == "ready"
    async with aiohttp.ClientSession() as session:
        async with session.get(subnet.miner_url + "/metrics") as response:  # Prometheus on this host, no token set
            assert response.status == 200 and "slmnet_miner_engine_up 1.0" in await response.text()
        # The slow miner was started with --metrics-token: then nobody reads it without the token or a signature.
        async with session.get(subnet.slow_url + "/metrics") as response:
            assert response.status == 401
        async with session.get(subnet.slow_url + "/metrics", headers={"Authorization": "Bearer wrong"}) as response:
            assert response.status == 401
        async with session.get(subnet.slow_url + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}) as response:
            assert response.status == 200
        async with client(session, subnet, subnet.validators[0]).get("/metrics") as response:
            text = await response.text()
    assert 'slmnet_miner_requests_total{route="/v1/chat/completions",status="200"}' in text
    assert "slmnet_miner_engine_up 1.0" in text


def _auth_case(name: str, subnet: Subnet, body: bytes) -> dict[str, str]:
    path, receiver = "/v1/chat/completions", subnet.miner.hotkey.ss58_address
    validator = subnet.validators[0].hotkey
    if name == "missing":
        return {"Content-Type": "application/json"}
    if name == "forged":  # signed for another body
        return signed_headers(validator, receiver, "POST", path, body + b" ")
    if name == "stale":
        return signed_headers(validator, receiver, "POST", path, body, nonce_ns=time.time_ns() - 30 * 10**9)
    if name == "misaddressed":
        return signed_headers(validator, subnet.validators[1].hotkey.ss58_address, "POST", path, body)
    if name == "spoofed":  # claims to be the validator, signed by the outsider
        headers = signed_headers(subnet.outsider.hotkey, receiver, "POST", path, body)
        return {**headers, "X-Bittensor-Hotkey": validator.ss58_address}
    if name == "unregistered":
        return signed_headers(subnet.outsider.hotkey, receiver, "POST", path, body)
    if name == "unstaked":
        return signed_headers(subnet.unstaked.hotkey, receiver, "POST", path, body)
    raise ValueError(name)


@pytest.mark.parametrize(
    "case, status, code",
    [
        ("missing", 401, "auth_missing"),
        ("forged", 401, "auth_bad_signature"),
        ("stale", 401, "auth_stale"),
        ("misaddressed", 401, "auth_wrong_receiver"),
        ("spoofed", 401, "auth_bad_signature"),
        ("unregistered", 403, "sender_not_registered"),
        ("unstaked", 403, "sender_not_staked"),
    ],
)
async def test_requests_without_a_valid_signature_from_a_staked_hotkey_are_refused(subnet, case, status, code):
    body = json.dumps(CHAT).encode()
    async with aiohttp.ClientSession() as session:
        async with session.post(subnet.miner_url + "/v1/chat/completions", data=body, headers=_auth_case(case, subnet, body)) as response:
            assert response.status == status
            error = (await response.json())["error"]
    assert error["code"] == code and error["message"]


async def test_a_replayed_request_is_refused(subnet):
    path = "/v1/models"
    headers = signed_headers(subnet.validators[0].hotkey, subnet.miner.hotkey.ss58_address, "GET", path)
    async with aiohttp.ClientSession() as session:
        async with session.get(subnet.miner_url + path, headers=headers) as first:
            assert first.status == 200
        async with session.get(subnet.miner_url + path, headers=headers) as again:
            assert again.status == 401
            assert (await again.json())["error"]["code"] == "auth_replayed"


@pytest.mark.parametrize(
    "body, status, code, words",
    [
        (b"{not json", 400, "invalid_json", "not valid JSON"),
        (b"[1, 2]", 400, "invalid_json", "JSON object"),
        (json.dumps({"model": MODEL}).encode(), 400, "invalid_fields", "messages"),
        (json.dumps({**CHAT, "temperature": 5}).encode(), 400, "invalid_fields", "temperature"),
        (json.dumps({**CHAT, "top_logprobs": 3}).encode(), 400, "invalid_fields", "requires logprobs"),
        (json.dumps({**CHAT, "model": "gpt-4o"}).encode(), 404, "model_not_found", "gpt-4o"),
        (json.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * BODY_LIMIT}]}).encode(), 413, "payload_too_large", "limit"),
    ],
)
async def test_bad_bodies_get_their_status_and_a_clear_message(subnet, body, status, code, words):
    headers = signed_headers(subnet.validators[0].hotkey, subnet.miner.hotkey.ss58_address, "POST", "/v1/chat/completions", body)
    async with aiohttp.ClientSession() as session:
        async with session.post(subnet.miner_url + "/v1/chat/completions", data=body, headers=headers) as response:
            assert response.status == status
            error = (await response.json())["error"]
    assert error["code"] == code and words in error["message"]


async def _open_stream(c: MinerClient) -> aiohttp.ClientResponse:
    # Behind the slow engine 1000 tokens take 150 s: held until the caller hangs up, however fast the machine
    # (a stream straight from the tiny engine ends in under 2 s, and did end before the check on a fast one).
    response = await c.post("/v1/chat/completions", {**CHAT, "max_tokens": 1000, "ignore_eos": True, "stream": True})
    assert response.status == 200
    await response.content.readline()  # the first event: the request is in flight
    return response


async def test_in_flight_limits_per_caller_and_overall_answer_429_and_free_up(subnet):
    async with aiohttp.ClientSession() as session:
        first, second, third = (client(session, subnet, v, slow=True) for v in subnet.validators)
        held = [await _open_stream(first), await _open_stream(first)]
        async with first.post("/v1/chat/completions", CHAT) as response:
            assert response.status == 429 and response.headers["Retry-After"] == "1"
            assert (await response.json())["error"]["code"] == "caller_busy"
        held.append(await _open_stream(second))  # the miner is now at its capacity of 3
        async with third.post("/v1/chat/completions", CHAT) as response:
            assert response.status == 429
            assert (await response.json())["error"]["code"] == "miner_busy"
        for response in held:  # callers hang up mid-stream
            response.close()
        deadline = time.monotonic() + 30
        while health_json(subnet.slow_url)["in_flight"] and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        async with third.post("/v1/chat/completions", CHAT) as response:
            assert response.status == 200


async def test_a_caller_that_hangs_up_before_the_first_token_frees_its_slots_at_once(subnet):
    # The slow engine sends its first token 3 s after a request: a validator that gives up before then (its time to
    # the first token ran out) must not hold the miner's slots until the engine writes, or its next request meets a 429.
    async with aiohttp.ClientSession() as session:
        caller = client(session, subnet, subnet.validators[0], slow=True)
        body = {**CHAT, "max_tokens": 1000, "ignore_eos": True, "stream": True}
        held = [await caller.post("/v1/chat/completions", body) for _ in range(PER_CALLER)]  # headers back, no token yet
        assert all(r.status == 200 for r in held) and health_json(subnet.slow_url)["in_flight"] == PER_CALLER
        hung_up = time.monotonic()
        for response in held:
            response.close()
        while health_json(subnet.slow_url)["in_flight"] and time.monotonic() - hung_up < 1.5:
            await asyncio.sleep(0.05)
        assert health_json(subnet.slow_url)["in_flight"] == 0  # well before the engine's first token
        async with caller.post("/v1/chat/completions", CHAT) as response:
            assert response.status == 200


def test_an_unregistered_hotkey_cannot_start_a_miner(subnet, tmp_path):
    args = ["--network", subnet.network, "--netuid", "1", "--wallet-path", subnet.wallets_dir, "--wallet-name", "outsider"]
    args += ["--model", MODEL, "--engine-url", subnet.engine_url, "--port", str(free_port())]
    done = subprocess.run([sys.executable, "-m", "neurons.cli", "miner", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert f"hotkey {subnet.outsider.hotkey.ss58_address} is not registered on subnet 1" in done.stderr


def test_the_readme_script_asks_the_miner_and_prints_tokens_and_logprobs(subnet):
    args = ["--miner-url", subnet.miner_url, "--miner-hotkey", subnet.miner.hotkey.ss58_address, "--wallet-path", subnet.wallets_dir]
    args += ["--wallet-name", "validator2", "--model", MODEL, "--max-tokens", "6", "What is 2 + 2?"]
    done = subprocess.run([sys.executable, "examples/ask_miner.py", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    token_ids = json.loads(next(line for line in lines if line.startswith("token ids: ")).removeprefix("token ids: "))
    logprobs = json.loads(next(line for line in lines if line.startswith("logprobs: ")).removeprefix("logprobs: "))
    assert 1 <= len(token_ids) == len(logprobs) <= 6 and all(lp <= 0 for lp in logprobs)
    assert "'completion_tokens': " + str(len(token_ids)) in lines[-1]

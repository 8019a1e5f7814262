"""Hostile miners: each a real `slmnet miner` attached to a hostile engine (``tests.harness.adversary``).

One honest miner and one miner per hostile mode, all declaring the tiny seed-0 model on a
localnet. The real `slmnet validator` runs two rounds against them: it keeps running,
names each breach, and pays every hostile miner nothing. Then the real `slmnet gateway`
routes ordinary user requests among all of them, picking the first miner uniformly
(``--explore 1``) so that hostile miners really are tried: every user gets a whole answer,
none a 5xx or a word a miner wrote beside the honest text.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

import chain
from models.tiny import build_tiny
from tests.harness.adversary import HOSTILE, HOSTILE_TEXT
from tests.harness.localnet import make_localnet
from tests.harness.processes import create_key, engine_env, ledger_rows, start_adversary, start_gateway, start_miners

pytestmark = pytest.mark.slow
MODEL = "slmnet/tiny-qwen2-s0"
# What the validator records for each hostile miner: the breach, in its own words.
BREACH = {
    "list-event": "JSON list",
    "string-error": "not a valid ErrorEvent",
    "bad-ids": "outside the model's vocabulary|not the chunk's token id",
    "html-text": "not what the token ids spell",
    "refuse-html": "HTTP 400",
    "oversized-event": "event is over",
    "endless": "more token ids than max_tokens",
    "drip": "first token",
    "empty-drip": "first token",
    "html-page": "without a finish_reason",
    "bad-utf8": "not UTF-8",
    "double-ids": "more token ids than max_tokens|logprob entries for",
    "after-done": r"after \[DONE\]",
    "html-logprobs": "not the chunk's token id",
    "refuse-event": "reported an error",
}
NOT_FIDELITY = ("refuse-html", "drip", "empty-drip", "refuse-event")  # an error status and timeouts: unpaid, but not a verdict on the model


@pytest.fixture(scope="module")
def subnet(tmp_path_factory, tiny_engine):
    tmp = tmp_path_factory.mktemp("hostile")
    build_tiny(tmp / "s0", seed=0)
    engine = tiny_engine
    net = make_localnet(tmp)
    wallets, uids = net.register(("honest", *HOSTILE, "validator"))
    net.stake(wallets["validator"], 2000)
    servers = []
    try:
        servers.append(hostile := start_adversary(engine.url, None, tmp))
        hostile.wait_healthy(timeout=60)
        upstream = {name: engine.url if name == "honest" else f"{hostile.url}/{name}" for name in ("honest", *HOSTILE)}
        miners = start_miners(net, upstream, tmp / "s0", tmp, servers)
        yield {"tmp": tmp, "net": net, "uids": uids, "engine": engine, "miners": miners, "servers": servers}
    finally:
        for server in reversed(servers):
            server.stop()


def test_the_validator_survives_every_hostile_miner_names_each_breach_and_pays_them_nothing(subnet):
    tmp, net, uids = subnet["tmp"], subnet["net"], subnet["uids"]
    state = tmp / "validator"
    args = [
        *net.flags("validator"),
        "--state-dir",
        str(state),
        "--reference",
        f"{MODEL}={subnet['engine'].url}",
        "--tokenizer",
        f"{MODEL}={tmp / 's0'}",
        "--challenges-per-miner",
        "4",
        "--probe-concurrency",  # the first round probes capacity: still 4 challenges, 2 at once
        "2",
        "--ttft-timeout",  # a miner that never sends a token is timed out sooner (the honest one answers in ~1 s)
        "8",
        "--round-interval",
        "1",
        "--weights-interval",
        "1",
        "--max-rounds",
        "2",
    ]
    done = subprocess.run([sys.executable, "-m", "neurons.cli", "validator", *args], capture_output=True, text=True, timeout=600, env=engine_env(tmp))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]  # no miner reached past the validation into the code

    rounds = [json.loads(line) for line in (state / "rounds.jsonl").read_text().splitlines()]
    assert len(rounds) == 2 and all(r["miners"] == 1 + len(HOSTILE) for r in rounds)
    fidelity_failed = {uid for r in rounds for uid in r["fidelity_failed"]}
    assert fidelity_failed == {uids[name] for name in HOSTILE if name not in NOT_FIDELITY}

    db = sqlite3.connect(state / "validator.sqlite")
    for name in HOSTILE:
        reasons = [r for (r,) in db.execute("SELECT reasons FROM results WHERE uid = ?", (uids[name],))]
        assert reasons and all(r and re.search(BREACH[name], r) for r in reasons), (name, reasons[:2])
    honest = db.execute("SELECT COUNT(*), SUM(passed) FROM results WHERE uid = ?", (uids["honest"],)).fetchone()
    assert honest == (8, 8)
    (weights_json,) = db.execute("SELECT weights FROM weights ORDER BY block DESC LIMIT 1").fetchone()
    weights = {int(uid): w for uid, w in json.loads(weights_json).items() if w > 0}
    assert weights == {uids["honest"]: pytest.approx(1.0)}


def _gateway(subnet) -> tuple[str, str, str]:
    tmp, net = subnet["tmp"], subnet["net"]
    db = tmp / "gateway.sqlite"
    key = create_key(db, "user")
    gateway = start_gateway(net, "validator", db, f"{MODEL}={tmp / 's0'}", tmp, "--explore", "1", "--first-token-timeout", "3", "--stall-timeout", "3")
    subnet["servers"].append(gateway)
    deadline = time.monotonic() + 30  # the health loop probes every miner before it routes to one
    while len(json.loads(urllib.request.urlopen(gateway.url + "/api/leaderboard").read())["miners"]) < 1 + len(HOSTILE) and time.monotonic() < deadline:
        time.sleep(0.5)
    return gateway.url, key, str(db)


@pytest.fixture(scope="module")
def gateway(subnet):
    return _gateway(subnet)


def _post(url: str, key: str, path: str, body: bytes, headers: dict | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(
        url + path, data=body, method="POST", headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _incentive_paid(subnet) -> dict[int, float]:
    async def read() -> dict[int, float]:
        async with chain.connect(subnet["net"].network) as c:
            return {n.uid: n.incentive for n in (await c.metagraph(1)).neurons}

    return asyncio.run(read())


def test_users_never_see_a_hostile_miner_through_the_gateway(subnet, gateway):
    url, key, _ = gateway
    deadline = time.monotonic() + 30  # the validator's weights reach incentive at the next epoch
    while _incentive_paid(subnet)[subnet["uids"]["honest"]] == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    asks = []
    for i in range(24):
        if i % 4 == 3:  # half of them with logprobs: a text completion's tokens are spelled from their ids too
            asks.append(("/v1/completions", {"model": MODEL, "prompt": f"Once upon a time {i}", "max_tokens": 24, **({"logprobs": 2} if i % 8 == 3 else {})}))
        elif i % 4 == 2:  # logprobs with alternatives: every token spelled from its id, never a miner's string
            body = {"model": MODEL, "messages": [{"role": "user", "content": f"Count to {i}."}], "max_tokens": 24, "logprobs": True, "top_logprobs": 3}
            asks.append(("/v1/chat/completions", {**body, "stream": i % 8 == 2}))
        else:
            asks.append(
                (
                    "/v1/chat/completions",
                    {
                        "model": MODEL,
                        "messages": [{"role": "user", "content": f"Tell me about the number {i}."}],
                        "max_tokens": 24,
                        "stream": i % 4 == 1,
                        "temperature": 0.7,
                    },
                )
            )
    answers = [_post(url, key, path, json.dumps(body).encode()) for path, body in asks]
    assert [status for status, _, _ in answers] == [200] * len(asks), [(s, b[:200]) for s, _, b in answers if s != 200]
    for (_path, body), (_, _headers, raw) in zip(asks, answers):
        text = raw.decode()
        assert "<script" not in text and HOSTILE_TEXT not in text and "BUY" not in text
        if body.get("stream"):
            assert text.rstrip().endswith("data: [DONE]") and '"finish_reason":"error"' not in text
        else:
            choice = json.loads(raw)["choices"][0]
            text = choice["text"] if "text" in choice else choice["message"]["content"]
            if body.get("logprobs") and "prompt" in body:  # a text completion's: a token each, each spelled from its id
                tokens = choice["logprobs"]["tokens"]
                assert len(tokens) == json.loads(raw)["usage"]["completion_tokens"] and not any(t.startswith("token_id:") for t in tokens)
            elif body.get("logprobs"):
                entries = choice["logprobs"]["content"]
                assert entries and all(len(e["top_logprobs"]) == 3 for e in entries)
                assert all(not e["token"].startswith("token_id:") and e["bytes"] == list(e["token"].encode()) for e in entries)
            # the honest text: some words, or none when the random test model drew its end token first (each request gets a fresh seed)
            assert isinstance(text, str) and (choice["finish_reason"] == "stop" or (choice["finish_reason"] == "length" and text))
    metrics = urllib.request.urlopen(url + "/metrics").read().decode()
    failed = {int(uid) for uid in re.findall(r'slmnet_gateway_miner_errors_total\{kind="[a-z_0-9]+",uid="(\d+)"\}', metrics)}
    assert len(failed & {subnet["uids"][name] for name in HOSTILE}) >= 6  # the hostile miners were really tried
    assert subnet["uids"]["honest"] not in failed


def test_odd_requests_get_a_clear_400_and_odd_content_is_served(gateway):
    url, key, _ = gateway
    cases = {
        "deep": (
            b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "metadata": ' % MODEL.encode() + b"[" * 5000 + b"]" * 5000 + b"}",
            "invalid_json",
        ),
        "image": (
            json.dumps({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}).encode(),
            "unsupported_content",
        ),
        "penalty": (json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "presence_penalty": 9}).encode(), "presence_penalty"),
        "seed": (json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "seed": 10**30}).encode(), "seed"),
        "context": (json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100_000}).encode(), "context"),
        "empty-stop": (json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stop": [""]}).encode(), "stop"),  # vLLM refuses it
        "five-stops": (json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stop": list("abcde")}).encode(), "stop"),
        # a lone surrogate escape is no text a tokenizer reads (it was a 500 where the prompt was counted)
        "lone-surrogate": (json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi \ud800"}]}).encode(), "invalid_json"),
    }
    for name, (body, expected) in cases.items():
        status, headers, raw = _post(url, key, "/v1/chat/completions", body)
        error = json.loads(raw)["error"]
        assert status == 400 and expected in (error["code"] + error["message"]), (name, status, raw[:300])
    parts = {
        "model": MODEL,
        "max_tokens": 8,
        "messages": [{"role": "system", "content": None}, {"role": "user", "content": [{"type": "text", "text": "Say "}, {"type": "text", "text": "hi."}]}],
        # null is OpenAI's "the default"; vLLM refuses some nulls (ignore_eos), so they must not reach a miner (found by the fuzzer)
        **dict.fromkeys(("ignore_eos", "temperature", "stop", "seed", "top_k", "stream_options", "logprobs"), None),
    }
    status, _, raw = _post(url, key, "/v1/chat/completions", json.dumps(parts).encode())
    choice = json.loads(raw)["choices"][0]
    # Answered (the random tiny model may spend 8 tokens on bytes of unfinished characters: the text can be empty).
    assert status == 200 and isinstance(choice["message"]["content"], str) and choice["finish_reason"] in ("stop", "length")


def test_a_reused_request_id_is_echoed_but_each_request_keeps_its_own_ledger_row(gateway):
    url, key, db = gateway
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}).encode()
    first, second = (_post(url, key, "/v1/chat/completions", body, {"X-Request-Id": "client-retry-1"}) for _ in range(2))
    assert first[0] == second[0] == 200
    assert first[1]["X-Request-Id"] == second[1]["X-Request-Id"] == "client-retry-1"
    ours = [first[1]["x-slmnet-request-id"], second[1]["x-slmnet-request-id"]]
    assert len(set(ours)) == 2 and ledger_rows(db, ours) == [("ok",), ("ok",)]

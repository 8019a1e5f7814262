"""A two-faced miner, caught on what users get (issue 24).

Real processes on a localnet: two honest `slmnet miner`s on the tiny engine, and a third in
front of ``tests.harness.adversary --mode two-faced``, which has read our challenge generator:
whatever looks like a challenge it streams from the declared model, and every other prompt
— users' — from a copy with 1e-2 weight noise (a cheaper model, which the validator's suite
catches on every answer it sees). The gateway samples users' answers and lets its users'
prompts be replayed; the validator reads them over signed HTTP (no shared disk), pools them
with its challenges' evidence, and hands its verdicts back.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import urllib.request

import openai
import pytest

from models.tiny import build_tiny
from tests.harness.adversary import looks_like_challenge, perturbed_copy
from tests.harness.localnet import make_localnet
from tests.harness.processes import create_key, engine_env, start_adversary, start_gateway, start_miners, start_vllm
from validator.challenges import generate

pytestmark = pytest.mark.slow
MODEL = "slmnet/tiny-qwen2-s0"
HONEST = ("honest1", "honest2")
# What users ask here: nothing the generator's vocabulary or phrasings would give away.
USERS = ("Name a colour.", "Suggest a name for a cat.", "Give me a fun fact about bees.", "Say hello in Spanish.", "Recommend a board game.", "Tell me a joke.")


def test_the_adversary_tells_our_generated_challenges_from_these_users():
    generated = [{"messages": c.body["messages"]} for c in generate(11, 400)]
    assert all(looks_like_challenge(body) for body in generated)  # it sees through every generated challenge
    assert not any(looks_like_challenge({"messages": [{"role": "user", "content": text}]}) for text in USERS)


@pytest.fixture(scope="module")
def subnet(tmp_path_factory, tiny_engine):
    tmp = tmp_path_factory.mktemp("two-faced")
    build_tiny(tmp / "s0", seed=0)
    perturbed_copy(tmp / "s0", tmp / "s0-noise", "noise", 1e-2)
    servers = [cheap := start_vllm(tmp / "s0-noise", MODEL, tmp)]
    net = make_localnet(tmp)
    wallets, uids = net.register((*HONEST, "two-faced", "validator"))
    net.stake(wallets["validator"], 2000)
    try:
        cheap.wait_healthy()
        servers.append(proxy := start_adversary(tiny_engine.url, "two-faced", tmp, cheap=cheap.url))
        proxy.wait_healthy(timeout=60)
        upstream = {**{name: tiny_engine.url for name in HONEST}, "two-faced": proxy.url}
        start_miners(net, upstream, tmp / "s0", tmp, servers, capacity=4)
        db = tmp / "gateway.sqlite"
        key = create_key(db, "users")
        # The gateway signs with the validator's hotkey, so it trusts that validator by default (as `slmnet up` runs them).
        servers.append(gateway := start_gateway(net, "validator", db, f"{MODEL}={tmp / 's0'}", tmp, "--verify-share", "0.25", "--replay-prompts"))
        yield {"tmp": tmp, "net": net, "uids": uids, "gateway": gateway, "key": key, "engine": tiny_engine}
    finally:
        for server in reversed(servers):
            server.stop()


def _board(url: str) -> dict[int, dict]:
    return {m["uid"]: m for m in json.loads(urllib.request.urlopen(url + "/api/leaderboard", timeout=30).read())["miners"]}


def _ask(users: openai.OpenAI, index: int) -> str:
    answer = users.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": USERS[index % len(USERS)]}], max_tokens=24, temperature=0.7
    )
    return answer.headers["x-slmnet-miner-uid"]


def test_a_miner_serving_users_a_cheaper_copy_is_flagged_on_their_answers_and_leaves_the_routing(subnet):
    tmp, net, uids, gateway = subnet["tmp"], subnet["net"], subnet["uids"], subnet["gateway"]
    users = openai.OpenAI(base_url=gateway.url + "/v1", api_key=subnet["key"], max_retries=0, timeout=120)
    # Users come first: until a few of the two-faced miner's answers are sampled (it gets about a third of them).
    asked = 0
    while _board(gateway.url)[uids["two-faced"]]["sampled"] < 4 and asked < 200:
        _ask(users, asked)
        asked += 1
    assert _board(gateway.url)[uids["two-faced"]]["sampled"] >= 4, f"{asked} requests"

    state = tmp / "validator"
    args = [
        *net.flags("validator"),
        "--state-dir", str(state),
        "--reference", f"{MODEL}={subnet['engine'].url}",
        "--tokenizer", f"{MODEL}={tmp / 's0'}",
        "--organic-from", gateway.url,
        "--challenges-per-miner", "6",
        "--round-interval", "1",
        "--weights-interval", "1",
        "--max-rounds", "2",
    ]  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "neurons.cli", "validator", *args], capture_output=True, text=True, timeout=900, env=engine_env(tmp))
    assert done.returncode == 0, done.stderr[-3000:]

    rounds = [json.loads(line) for line in (state / "rounds.jsonl").read_text().splitlines()]
    caught = [uids["two-faced"] in r["flagged"] or uids["two-faced"] in r["fidelity_failed"] for r in rounds]
    assert caught == [True, True]  # from the first round on: its users' answers were verified before it
    assert uids["two-faced"] in rounds[-1]["flagged"]  # the pooled evidence over users' answers flags it (held whatever it declares)
    assert not {uids[name] for name in HONEST} & {uid for r in rounds for uid in (*r["flagged"], *r["fidelity_failed"])}  # 0 honest miners flagged
    db = sqlite3.connect(state / "validator.sqlite")
    (weights,) = db.execute("SELECT weights FROM weights ORDER BY block DESC LIMIT 1").fetchone()
    paid = {int(uid): w for uid, w in json.loads(weights).items()}
    assert paid.get(uids["two-faced"], 0.0) == 0 and all(paid[uids[name]] > 0 for name in HONEST)
    judged = db.execute("SELECT hotkey, COUNT(*), SUM(passed) FROM organic GROUP BY hotkey").fetchall()
    assert sum(n for _, n, _ in judged) >= 4
    # Users' own prompts were replayed as challenges (36 challenges, a quarter each a replay: none at all has p = 3e-5).
    assert db.execute("SELECT COUNT(*) FROM results WHERE family = 'replay'").fetchone()[0] >= 1

    # The verdict reached the gateway: the two-faced miner gets no user from then on.
    assert _board(gateway.url)[uids["two-faced"]]["verdict"] == "flagged"
    served = {_ask(users, i) for i in range(12)}
    assert served and str(uids["two-faced"]) not in served

"""Miners that cheat users, not validators: caught on what users get (issues 24 and 25).

Real processes on a localnet: two honest `slmnet miner`s on the tiny engine, and a third in
front of ``tests.harness.adversary --mode two-faced``, which has read our challenge generator:
whatever looks like a challenge it streams from the declared model, and every other prompt
— users' — from a copy with 1e-2 weight noise (a cheaper model, which the validator's suite
catches on every answer it sees). The gateway samples users' answers and lets its users'
prompts be replayed. It runs under a hotkey of its own and announces itself on chain; the
validator, given its hotkey and no URL (--trust-gateway), finds it there, reads it over signed HTTP (no shared disk),
pools the users' answers with its challenges' evidence, and hands its verdicts back. A fourth miner is an answer
cacher (``--mode cache``): a conversation it has answered before gets the stored answer at
once, whatever the seed — the speed a cache would buy, on users who ask the same thing. A
fifth answers every challenge and refuses every user with a 429 (``--mode refuse-users``):
the gateway reports what each miner did for its users, and the validator pays a miner at
most the share of users it served. A sixth is dark (``tests.harness.dark``): a real miner on the
honest engine behind a front at the address it announces, which fails every health check the
gateway sends and forwards the validator's signed challenges: it is never routed a user, and
the gateway's count of the checks it failed pays it nothing. Last, the flagged two-faced miner
re-declares (bf16, a new capacity): still flagged.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request

import openai
import pytest

import chain
from models.tiny import build_tiny
from tests.harness.adversary import looks_like_challenge
from tests.harness.localnet import make_localnet
from tests.harness.processes import DarkFront, create_key, engine_env, start_adversary, start_gateway, start_miners
from validator.challenges import generate

pytestmark = pytest.mark.slow
MODEL = "slmnet/tiny-qwen2-s0"
HONEST = ("honest1", "honest2")
CHEATS = ("two-faced", "cache")  # flagged on users' answers
REFUSER = "refuse-users"
DARK = "dark"
# What users ask here: nothing the generator's vocabulary or phrasings would give away.
USERS = ("Name a colour.", "Suggest a name for a cat.", "Give me a fun fact about bees.", "Say hello in Spanish.", "Recommend a board game.", "Tell me a joke.")


def test_the_adversary_tells_our_generated_challenges_from_these_users():
    generated = [{"messages": c.body["messages"]} for c in generate(11, 400)]
    assert all(looks_like_challenge(body) for body in generated)  # it sees through every generated challenge
    assert not any(looks_like_challenge({"messages": [{"role": "user", "content": text}]}) for text in USERS)


@pytest.fixture(scope="module")
def subnet(tmp_path_factory, tiny_engine, noisy_engine):
    tmp = tmp_path_factory.mktemp("two-faced")
    build_tiny(tmp / "s0", seed=0)
    servers = []
    net = make_localnet(tmp)
    wallets, uids = net.register((*HONEST, *CHEATS, REFUSER, DARK, "validator", "gateway"))
    net.stake(wallets["validator"], 2000)
    net.stake(wallets["gateway"], 1000)  # a validator permit: miners answer it, and validators that trust it read what it announces
    try:
        servers.append(proxy := start_adversary(tiny_engine.url, None, tmp, cheap=noisy_engine.url))  # the mode named by each miner's URL
        proxy.wait_healthy(timeout=60)
        upstream = {**{name: tiny_engine.url for name in (*HONEST, DARK)}, **{mode: f"{proxy.url}/{mode}" for mode in (*CHEATS, REFUSER)}}
        servers.append(front := DarkFront(tmp))
        miners = start_miners(net, upstream, tmp / "s0", tmp, servers, capacity=4, fronts={DARK: front})
        db = tmp / "gateway.sqlite"
        key = create_key(db, "users")
        # The gateway is its own hotkey, announced on chain (--external-ip): the validator is given its hotkey, not its URL
        # (--trust-gateway), and finds it there; the gateway takes the validator's verdicts (--validator-hotkey). Half the requests routed uniformly: the cacher, instant on its hits, would otherwise draw nearly all users (268 of
        # 300 in one run) and leave the others too few to sample.
        servers.append(
            gateway := start_gateway(
                net,
                "gateway",
                db,
                f"{MODEL}={tmp / 's0'}",
                tmp,
                "--verify-share",
                "0.25",
                "--replay-prompts",
                "--explore",
                "0.5",
                "--external-ip",
                "127.0.0.1",
                "--validator-hotkey",
                wallets["validator"].hotkey.ss58_address,
            )
        )
        hotkeys = {name: wallet.hotkey.ss58_address for name, wallet in wallets.items()}
        yield {
            "tmp": tmp, "net": net, "uids": uids, "hotkeys": hotkeys, "gateway": gateway, "key": key, "engine": tiny_engine,
            "miners": miners, "upstream": upstream, "servers": servers,
        }  # fmt: skip
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


def test_miners_serving_users_a_cheaper_copy_or_a_cached_answer_are_flagged_on_their_answers_and_leave_the_routing(subnet, figure):
    tmp, net, uids, gateway = subnet["tmp"], subnet["net"], subnet["uids"], subnet["gateway"]
    users = openai.OpenAI(base_url=gateway.url + "/v1", api_key=subnet["key"], max_retries=0, timeout=120)
    # Users come first: until a few of the two-faced miner's answers are sampled, and the cacher has answered
    # every one of the six questions at least once more than once (12 answers; each gets about a quarter).
    asked, enough = 0, {"two-faced": 4, "cache": 12}
    while any(_board(gateway.url)[uids[name]]["sampled"] < n for name, n in enough.items()) and asked < 300:
        _ask(users, asked)
        asked += 1
    assert all(_board(gateway.url)[uids[name]]["sampled"] >= n for name, n in enough.items()), f"{asked} requests"

    state = tmp / "validator"
    validator = [
        *net.flags("validator"),
        "--state-dir", str(state),
        "--reference", f"{MODEL}={subnet['engine'].url}",
        "--tokenizer", f"{MODEL}={tmp / 's0'}",
        "--challenges-per-miner", "6",
        "--probe-concurrency", "3",  # the first round probes capacity: still 6 challenges, 3 at once
        "--round-interval", "1",
        "--trust-gateway", subnet["hotkeys"]["gateway"],
        "--weights-interval", "1",
    ]  # fmt: skip
    args = [*validator, "--max-rounds", "2"]
    # Users keep coming while the validator runs: every round sees what each miner did for them.
    stop = threading.Event()

    def keep_asking() -> None:
        for index in range(10_000):
            if stop.wait(0.5):
                return
            try:
                _ask(users, index)
            except openai.APIError:  # a user turned away (every miner busy) is the gateway's answer, not this test's failure
                pass

    traffic = threading.Thread(target=keep_asking, daemon=True)
    traffic.start()
    try:
        done = subprocess.run([sys.executable, "-m", "neurons.cli", "validator", *args], capture_output=True, text=True, timeout=900, env=engine_env(tmp))
    finally:
        stop.set()
        traffic.join(timeout=150)
    assert done.returncode == 0, done.stderr[-3000:]

    rounds = [json.loads(line) for line in (state / "rounds.jsonl").read_text().splitlines()]
    caught = [uids["two-faced"] in r["flagged"] or uids["two-faced"] in r["fidelity_failed"] for r in rounds]
    assert caught == [True, True]  # from the first round on: its users' answers were verified before it
    assert {uids[name] for name in CHEATS} <= set(rounds[-1]["flagged"])  # the pooled evidence over users' answers flags both (held whatever they declare)
    assert not {uids[name] for name in HONEST} & {uid for r in rounds for uid in (*r["flagged"], *r["fidelity_failed"])}  # 0 honest miners flagged
    db = sqlite3.connect(state / "validator.sqlite")
    (weights,) = db.execute("SELECT weights FROM weights ORDER BY block DESC LIMIT 1").fetchone()
    paid = {int(uid): w for uid, w in json.loads(weights).items()}
    assert all(paid.get(uids[name], 0.0) == 0 for name in CHEATS) and all(paid[uids[name]] > 0 for name in HONEST)
    # The refuser answered every challenge and no user: paid at most what it served (nothing), and never flagged (it is no forger).
    service = [r["service"].get(str(uids[REFUSER])) for r in rounds]
    # Every round: none served, refusals (a round no user was sent to it keeps the last round's refusals).
    assert all(counts and counts["served"] == 0 and counts["refused"] > 0 for counts in service), service
    assert paid.get(uids[REFUSER], 0.0) <= 0.5 * min(paid[uids[name]] for name in HONEST)
    assert uids[REFUSER] not in {uid for r in rounds for uid in r["flagged"]}
    figure(
        "refuse-users: service per round; weight vs lowest honest",
        f"{service}; {paid.get(uids[REFUSER], 0.0):.3f} vs {min(paid[uids[n]] for n in HONEST):.3f}",
    )
    # The dark miner answered every challenge (through its front) and no user reached it: every health check failed, nothing paid.
    dark = [r["service"].get(str(uids[DARK])) for r in rounds]
    assert all(counts and counts["served"] == 0 and counts["checked"] == counts["unreachable"] > 0 for counts in dark), dark
    assert db.execute("SELECT COUNT(*) FROM results WHERE uid = ? AND outcome = 'ok'", (uids[DARK],)).fetchone()[0] >= 6  # validators reach it
    assert paid.get(uids[DARK], 0.0) == 0.0 and uids[DARK] not in {uid for r in rounds for uid in r["flagged"]}
    figure("dark: service per round; weight vs lowest honest", f"{dark}; {paid.get(uids[DARK], 0.0):.3f} vs {min(paid[uids[n]] for n in HONEST):.3f}")
    judged = db.execute("SELECT hotkey, COUNT(*), SUM(passed) FROM organic GROUP BY hotkey").fetchall()
    assert sum(n for _, n, _ in judged) >= 4
    evidence = {hotkey: (answers, flagged) for hotkey, answers, flagged in db.execute("SELECT hotkey, answers, flagged_round FROM evidence")}
    users_judged = {hotkey: (n, n - passed) for hotkey, n, passed in judged}
    for name in (*CHEATS, *HONEST):
        hotkey = subnet["hotkeys"][name]
        figure(
            f"{name}: users' answers verified (failed), evidence answers, flagged in round",
            f"{users_judged.get(hotkey)}, {evidence[hotkey][0]}, {evidence[hotkey][1]}",
        )
    # Users' own prompts were replayed as challenges (36 challenges, a quarter each a replay: none at all has p = 3e-5).
    assert db.execute("SELECT COUNT(*) FROM results WHERE family = 'replay'").fetchone()[0] >= 1

    # The verdicts reached the gateway: neither cheat gets a user from then on.
    assert all(_board(gateway.url)[uids[name]]["verdict"] == "flagged" for name in CHEATS)
    served = {_ask(users, i) for i in range(12)}
    assert served and not {str(uids[name]) for name in CHEATS} & served

    # A re-declarer: the flagged miner comes back declaring bf16 (a looser tolerance) and another
    # capacity. Its evidence is per (hotkey, model) and its flag holds whatever it declares.
    subnet["miners"]["two-faced"].stop()
    start_miners(net, {"two-faced": subnet["upstream"]["two-faced"]}, tmp / "s0", tmp, subnet["servers"], capacity=6, dtypes={"two-faced": "bfloat16"})

    async def declared() -> tuple[str, int]:
        async with chain.connect(net.network) as c:
            neuron = next(n for n in (await c.metagraph(1)).neurons if n.uid == uids["two-faced"])
            return neuron.model.dtype, neuron.model.capacity

    deadline = time.monotonic() + 60
    while asyncio.run(declared()) != ("bfloat16", 6) and time.monotonic() < deadline:
        time.sleep(1)
    assert asyncio.run(declared()) == ("bfloat16", 6)
    done = subprocess.run(
        [sys.executable, "-m", "neurons.cli", "validator", *validator, "--max-rounds", "3"], capture_output=True, text=True, timeout=900, env=engine_env(tmp)
    )
    assert done.returncode == 0, done.stderr[-3000:]
    last = json.loads((state / "rounds.jsonl").read_text().splitlines()[-1])
    assert last["round"] == 2 and last["targets"][str(uids["two-faced"])][2] == "bfloat16"  # the new declaration was queried…
    assert uids["two-faced"] in last["flagged"] and last["scores"].get(str(uids["two-faced"]), 0.0) == 0.0  # …and is still flagged, unpaid

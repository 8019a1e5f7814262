"""`slmnet validator` on a localnet against two honest miners and nine adversarial ones.

Every miner is a real `slmnet miner` process declaring the tiny seed-0 model. The
cheats: one attached to an engine with other weights (seed 1), one to an engine with
perturbed seed-0 weights, and seven attached to a tampering proxy in front of the honest
engine (``tests.harness.adversary``): invented logprobs, cut answers, buffered bursts,
over-reported usage, lagging (3 s to the first token, then 40 ms a token), flaky, and a steerer (greedy answers to sampled challenges).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time

import aiohttp
import pytest

import chain
from models import subnet as model_list
from models.tiny import build_tiny
from models.tokenizer import ModelTokenizer
from tests.harness.localnet import FAST, make_localnet
from tests.harness.processes import engine_env, start_adversary, start_miners, start_vllm, warm_engine
from validator.records import RoundInputs, Target
from validator.rounds import run_round
from validator.verify import ReferenceEngine

pytestmark = pytest.mark.slow
MODEL = "slmnet/tiny-qwen2-s0"
HONEST = ("honest1", "honest2")
FIDELITY_CHEATS = ("other-model", "perturbed", "invent-logprobs", "cut", "over-report", "steer")
BUFFERING = ("burst",)  # not a fidelity failure: a round score of 0, every round
UNDERPERFORMERS = ("lagging", "flaky")
PROXIED = ("invent-logprobs", "cut", "burst", "over-report", "lagging", "flaky", "steer")


def test_the_repo_model_list_matches_the_tiny_model_we_build(tmp_path):
    supported = model_list.load().get(MODEL)
    assert supported.weights_sha256 == build_tiny(tmp_path / "s0", seed=0)


@pytest.fixture(scope="module")
def subnet(tmp_path_factory, tiny_engine, noisy_engine):
    tmp = tmp_path_factory.mktemp("subnet")
    build_tiny(tmp / "s0", seed=0)
    build_tiny(tmp / "s1", seed=1)
    engines = {"other-model": start_vllm(tmp / "s1", MODEL, tmp)}
    net = make_localnet(tmp)
    names = [*HONEST, *FIDELITY_CHEATS, *BUFFERING, *UNDERPERFORMERS, "validator"]
    wallets, uids = net.register(names)
    net.stake(wallets["validator"], 2000)
    servers = list(engines.values())
    try:
        for engine in engines.values():
            engine.wait_healthy()
            warm_engine(engine.url, MODEL)
        engines["honest"], engines["perturbed"] = tiny_engine, noisy_engine
        upstream = {name: engines["honest"].url for name in HONEST}
        upstream.update({name: engines[name].url for name in ("other-model", "perturbed")})
        servers.append(proxy := start_adversary(engines["honest"].url, None, tmp))  # one process, the mode named by each miner's engine URL
        proxy.wait_healthy(timeout=60)
        upstream.update({mode: f"{proxy.url}/{mode}" for mode in PROXIED})
        miners = start_miners(net, upstream, tmp / "s0", tmp, servers, capacity=4)
        yield {"tmp": tmp, "net": net, "wallets": wallets, "uids": uids, "engines": engines, "miners": miners}
    finally:
        for server in reversed(servers):
            server.stop()


def test_validator_pays_honest_miners_zeroes_every_cheat_and_ranks_slow_and_flaky_below(subnet):
    tmp, net, uids, wallets = subnet["tmp"], subnet["net"], subnet["uids"], subnet["wallets"]
    state = tmp / "validator"
    args = [
        *net.flags("validator"),
        "--state-dir",
        str(state),
        "--reference",
        f"{MODEL}={subnet['engines']['honest'].url}",
        "--tokenizer",
        f"{MODEL}={tmp / 's0'}",
        "--challenges-per-miner",
        "8",
        "--probe-concurrency",  # the first round probes capacity: 8 challenges, 4 at once, as the later ones
        "4",
        "--round-interval",
        "1",
        "--weights-interval",
        "1",
        "--max-rounds",
        "3",
    ]
    done = subprocess.run([sys.executable, "-m", "neurons.cli", "validator", *args], capture_output=True, text=True, timeout=900, env=engine_env(tmp))
    assert done.returncode == 0, done.stderr[-3000:]

    rounds = [json.loads(line) for line in (state / "rounds.jsonl").read_text().splitlines()]
    assert len(rounds) == 3 and all(r["miners"] == 11 for r in rounds)
    # Caught: an answer no honest sampler makes (fidelity_failed), or pooled evidence (flagged).
    ever_failed = {uid for r in rounds for uid in (*r["fidelity_failed"], *r["flagged"])}
    assert ever_failed == {uids[name] for name in FIDELITY_CHEATS}  # every cheat caught, nobody else flagged
    # Only a little off (its logprobs; the steerer's greedy answers to sampled challenges): the pooled evidence decides.
    assert {uid for r in rounds for uid in r["flagged"]} >= {uids["invent-logprobs"], uids["steer"]}
    # The buffering miner, judged over its long answers across rounds: caught once it has 6 of them (24 challenges in all), nobody else ever.
    assert {uid for r in rounds for uid in r["buffered"]} == {uids["burst"]}
    assert uids["burst"] in rounds[-1]["buffered"]
    for name in ("other-model", "perturbed", "invent-logprobs", "over-report"):  # these cheat on every answer: caught in every round
        assert all(uids[name] in r["fidelity_failed"] or uids[name] in r["flagged"] for r in rounds), name

    db = sqlite3.connect(state / "validator.sqlite")
    verified = dict(db.execute("SELECT hotkey, SUM(passed) = COUNT(*) FROM results WHERE outcome = 'ok' AND passed IS NOT NULL GROUP BY hotkey").fetchall())
    assert all(verified[wallets[name].hotkey.ss58_address] for name in (*HONEST, "lagging"))
    (weights_json,) = db.execute("SELECT weights FROM weights ORDER BY block DESC LIMIT 1").fetchone()
    weights = {int(uid): w for uid, w in json.loads(weights_json).items()}
    assert not {uids[name] for name in (*FIDELITY_CHEATS, *BUFFERING)} & {uid for uid, w in weights.items() if w > 0}
    lowest_honest = min(weights[uids[name]] for name in HONEST)
    assert all(weights.get(uids[name], 0.0) < lowest_honest for name in UNDERPERFORMERS), weights

    # The chain agrees once an epoch has run: the honest miners out-earn every adversary.
    async def block() -> int:
        async with chain.connect(net.network) as c:
            return await c.block()

    async def incentive() -> dict[int, float]:
        async with chain.connect(net.network) as c:
            return {n.uid: n.incentive for n in (await c.metagraph(1)).neurons}

    # Wait for an epoch after the last weights were set (an earlier one may have used an earlier round's weights).
    (last_weights_block,) = db.execute("SELECT MAX(block) FROM weights").fetchone()
    deadline = time.monotonic() + 30
    while asyncio.run(block()) <= last_weights_block + FAST["tempo"] + 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    paid = asyncio.run(incentive())
    assert min(paid[uids[name]] for name in HONEST) > max(paid[uids[name]] for name in (*FIDELITY_CHEATS, *BUFFERING, *UNDERPERFORMERS))
    assert all(paid[uids[name]] == 0 for name in (*FIDELITY_CHEATS, *BUFFERING))

    # Anyone holding the state can recheck a round: the replay recomputes the challenges from the
    # seed, verifies every recorded answer again and scores the round with the same code.
    replay = [sys.executable, "-m", "neurons.cli", "validator", "replay", *args, "--round", "2"]
    done = subprocess.run(replay, capture_output=True, text=True, timeout=600, env=engine_env(tmp))
    assert done.returncode == 0 and "reproduced" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    # A record that was tampered with is caught, and the replay says where.
    summary = json.loads(db.execute("SELECT summary FROM rounds WHERE round = 2").fetchone()[0])
    summary["scores"][str(uids["lagging"])] = 0.9
    db.execute("UPDATE rounds SET summary = ? WHERE round = 2", (json.dumps(summary),))
    db.commit()
    done = subprocess.run(replay, capture_output=True, text=True, timeout=600, env=engine_env(tmp))
    assert done.returncode == 1 and f"uid {uids['lagging']} score: recorded 0.9" in done.stdout, done.stdout[-3000:]


@pytest.mark.parametrize("answers", [100, pytest.param(1000, marks=[pytest.mark.soak, pytest.mark.timeout(1800)])])
def test_no_honest_answer_is_flagged_across_many_verifications(subnet, answers):
    """Rounds of 50 challenges to each honest miner, through the validator's own round code: 100
    answers in ``make test`` (every check below holds on each one), 1000 in ``make soak`` (the
    repetition is the soak's: ``make test`` ran 200 until it had to fit 25 minutes)."""
    wallets, uids, miners = subnet["wallets"], subnet["uids"], subnet["miners"]
    targets = [Target(uids[name], wallets[name].hotkey.ss58_address, miners[name].url, MODEL, 4) for name in HONEST]
    ends = model_list.load().get(MODEL).end_token_ids
    vocabulary = ModelTokenizer(subnet["tmp"] / "s0")

    async def rounds() -> tuple[list, set]:
        results, flagged, pooled = [], set(), {}
        async with aiohttp.ClientSession() as session:
            references = {MODEL: ReferenceEngine(session, subnet["engines"]["honest"].url, MODEL, vocabulary, ends)}
            for seed in range(answers // (50 * len(targets))):
                inputs = RoundInputs(seed=1000 + seed, round_index=seed, evidence=pooled)
                report = await run_round(session, wallets["validator"].hotkey, inputs, targets, references, challenges_per_miner=50)
                results += report.results
                pooled = report.evidence
                flagged |= report.fidelity_failed | report.buffered | report.flagged
        return results, flagged

    results, flagged = asyncio.run(rounds())
    judged = [r.streamed for r in results if r.streamed is not None]
    print(f"honest answers judged for buffering: {len(judged)}, sent as one burst: {judged.count(False)}")  # the calibration figure (docs/calibration.md)
    assert len(results) == answers
    assert not flagged  # no round zeroed an honest miner
    problems = [(r.uid, r.family, r.outcome.kind, r.reasons, r.detail) for r in results if r.outcome.kind != "ok" or not r.outcome.fidelity_passed]
    assert not problems, problems[:5]
    # The miners sample through the verifiable sampler: every sampled choice the validator could
    # judge is the Gumbel-max winner of its own reference (the same fp32 engine: no drift at all).
    stats = [r.stats for r in results if r.stats is not None]
    assert sum(s.tokens for s in stats) > 5 * answers and sum(s.mismatches for s in stats) == 0

"""`slmnet validator` on a localnet: two honest miners and one that serves other weights under the declared name."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time

import pytest

import chain
from miner.models.tiny import build_tiny
from tests.harness.localnet import make_localnet
from tests.harness.processes import engine_env, free_port, start_miner, start_vllm
from validator import models as model_list

pytestmark = pytest.mark.slow
MODEL = "slmnet/tiny-qwen2-s0"


def test_the_repo_model_list_matches_the_tiny_model_we_build(tmp_path):
    supported = model_list.load().get(MODEL)
    assert supported.weights_sha256 == build_tiny(tmp_path / "s0", seed=0)


def test_validator_pays_honest_miners_and_zeroes_the_one_serving_other_weights(tmp_path):
    build_tiny(tmp_path / "s0", seed=0)
    build_tiny(tmp_path / "s1", seed=1)
    honest_engine = start_vllm(tmp_path / "s0", MODEL, tmp_path)
    cheat_engine = start_vllm(tmp_path / "s1", MODEL, tmp_path)  # other weights, answering to the declared name
    net = make_localnet(tmp_path)
    names = ["honest1", "honest2", "cheat", "validator"]
    wallets = {name: net.wallet(name) for name in names}

    async def register() -> dict[str, int]:
        async with chain.connect(net.network) as c:
            for wallet in wallets.values():
                (await c.register(wallet, 1)).raise_for_failure()
            return {name: await c.uid_of(1, w.hotkey.ss58_address) for name, w in wallets.items()}

    uids = asyncio.run(register())
    net.stake(wallets["validator"], 2000)
    miners = []
    try:
        honest_engine.wait_healthy()
        cheat_engine.wait_healthy()
        for name, engine in (("honest1", honest_engine), ("honest2", honest_engine), ("cheat", cheat_engine)):
            args = ["--network", net.network, "--netuid", "1", "--wallet-path", str(net.wallets_dir), "--wallet-name", name,
                    "--model", str(tmp_path / "s0"), "--engine-url", engine.url, "--capacity", "4", "--metagraph-interval", "1"]
            miners.append(start_miner(args, free_port(), tmp_path))
        for miner in miners:
            miner.wait_healthy(timeout=120)

        args = ["--network", net.network, "--netuid", "1", "--wallet-path", str(net.wallets_dir), "--wallet-name", "validator",
                "--state-dir", str(tmp_path / "validator"), "--reference", f"{MODEL}={honest_engine.url}", "--challenges-per-miner", "6",
                "--round-interval", "1", "--weights-interval", "1", "--max-rounds", "3"]
        done = subprocess.run([sys.executable, "-m", "neurons.cli", "validator", *args], capture_output=True, text=True, timeout=600, env=engine_env(tmp_path))
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        for server in [*miners, honest_engine, cheat_engine]:
            server.stop()

    rounds = [json.loads(line) for line in (tmp_path / "validator" / "rounds.jsonl").read_text().splitlines()]
    assert len(rounds) == 3 and all(r["miners"] == 3 for r in rounds)
    assert all(uids["cheat"] in r["fidelity_failed"] for r in rounds)
    assert not any(uids["honest1"] in r["fidelity_failed"] or uids["honest2"] in r["fidelity_failed"] for r in rounds)
    db = sqlite3.connect(tmp_path / "validator" / "validator.sqlite")
    verified = db.execute("SELECT hotkey, SUM(passed), COUNT(*) FROM results WHERE outcome = 'ok' GROUP BY hotkey").fetchall()
    by_hotkey = {hotkey: (passed, count) for hotkey, passed, count in verified}
    for name in ("honest1", "honest2"):
        passed, count = by_hotkey[wallets[name].hotkey.ss58_address]
        assert passed == count == 18  # every honest answer verified and passed
    assert by_hotkey[wallets["cheat"].hotkey.ss58_address][0] < 18
    (weights_json,) = db.execute("SELECT weights FROM weights ORDER BY block DESC LIMIT 1").fetchone()
    weights = {int(uid): w for uid, w in json.loads(weights_json).items()}
    assert set(weights) == {uids["honest1"], uids["honest2"]}

    # The chain agrees once an epoch has run: incentive to the honest miners, none to the cheat.
    async def incentive() -> dict[int, float]:
        async with chain.connect(net.network) as c:
            return {n.uid: n.incentive for n in (await c.metagraph(1)).neurons}

    deadline = time.monotonic() + 30
    while (paid := asyncio.run(incentive()))[uids["honest1"]] == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert paid[uids["honest1"]] > 0 and paid[uids["honest2"]] > 0 and paid[uids["cheat"]] == 0

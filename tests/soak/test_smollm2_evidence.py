"""A validator on the localnet with real SmolLM2-135M miners: two honest (fp32, bf16), two quantized (int8, int4).

Each miner is a real `slmnet miner` attached to its own vLLM engine; the quantized ones
declare bf16, the most lenient dtype the model list pays for. The validator runs three
rounds of six challenges, its reference the fp32 engine the honest fp32 miner also
attaches to. Both honest miners must be paid and both quantized ones weighted 0.

In ``make soak`` (about 15 minutes here: four SmolLM2 engines on two cores), not ``make test``.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest

from models.prepare import PREPARED, prepare
from tests.harness.adversary import perturbed_copy
from tests.harness.localnet import make_localnet
from tests.harness.processes import engine_env, start_miners, start_vllm

pytestmark = [pytest.mark.slow, pytest.mark.soak, pytest.mark.timeout(3600)]
MODEL = PREPARED["smollm2-135m"].model_id
MINERS = {"fp32": ("float32", None), "bf16": ("bfloat16", None), "int8": ("bfloat16", "int8"), "int4": ("bfloat16", "int4")}


def test_honest_fp32_and_bf16_miners_are_paid_and_int8_and_int4_get_weight_zero(tmp_path):
    folder, _ = prepare("smollm2-135m", tmp_path / "cache")
    engines = {}
    servers = []
    try:
        for name, (_dtype, rounding) in MINERS.items():  # one at a time: four engines compiling at once starve two cores
            weights = perturbed_copy(folder, tmp_path / name, rounding) if rounding else folder
            engines[name] = start_vllm(weights, MODEL, tmp_path, max_model_len=2048, dtype="bfloat16" if name == "bf16" else "float32")
            servers.append(engines[name])
            engines[name].wait_healthy(timeout=900)
        net = make_localnet(tmp_path)
        wallets, uids = net.register([*MINERS, "validator"])
        net.stake(wallets["validator"], 2000)
        upstream = {name: engines[name].url for name in MINERS}
        start_miners(net, upstream, folder, tmp_path, servers, capacity=8, dtypes={name: dtype for name, (dtype, _) in MINERS.items()})
        state = tmp_path / "validator"
        args = [*net.flags("validator"), "--state-dir", str(state), "--reference", f"{MODEL}={engines['fp32'].url}", "--tokenizer", f"{MODEL}={folder}"]
        args += ["--challenges-per-miner", "6", "--probe-concurrency", "3", "--round-interval", "1", "--weights-interval", "1", "--max-rounds", "3"]
        done = subprocess.run([sys.executable, "-m", "neurons.cli", "validator", *args], capture_output=True, text=True, timeout=2400, env=engine_env(tmp_path))
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        for server in reversed(servers):
            server.stop()

    rounds = [json.loads(line) for line in (state / "rounds.jsonl").read_text().splitlines()]
    db = sqlite3.connect(state / "validator.sqlite")
    evidence = {
        hotkey: row for hotkey, *row in db.execute("SELECT hotkey, cusum, answers, tokens, mismatches, reported, exceedances, flagged_round FROM evidence")
    }
    for name in MINERS:
        print(name, "evidence (cusum, answers, tokens, mismatches, reported, exceedances, flagged round):", evidence[wallets[name].hotkey.ss58_address])
    (weights_json,) = db.execute("SELECT weights FROM weights ORDER BY block DESC LIMIT 1").fetchone()
    weights = {int(uid): w for uid, w in json.loads(weights_json).items()}
    print("weights", {name: weights.get(uids[name], 0.0) for name in MINERS}, "flagged per round", [r["flagged"] for r in rounds])
    assert weights.get(uids["fp32"], 0) > 0 and weights.get(uids["bf16"], 0) > 0
    assert weights.get(uids["int8"], 0) == 0 and weights.get(uids["int4"], 0) == 0
    assert not {uids["fp32"], uids["bf16"]} & {uid for r in rounds for uid in (*r["flagged"], *r["fidelity_failed"])}
    # No pay on credit: at no round does int8 (declaring bf16) stand above an honest miner, flagged or not yet.
    for r in rounds:
        effective = {int(uid): value for uid, value in r["effective"].items()}
        assert effective.get(uids["int8"], 0.0) <= min(effective.get(uids[name], 0.0) for name in ("fp32", "bf16")), (r["round"], effective)

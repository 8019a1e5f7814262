"""`slmnet up --smoke`: the whole subnet on this machine, end to end, with a real model.

Localnet, two miners serving SmolLM2-135M-Instruct, one serving the tiny model (``--models
smollm2,tiny``: Gemma's miner and reference engine, the demo's default, would double the
run on two cores; ``tests/integration/test_gemma.py`` serves Gemma end to end), a validator
with its reference engines and a gateway, each a separate process; it passes when the
gateway answers a question, the chain's incentive then ranks both SmolLM2 miners above
the tiny one, every "auto" flavour answers with a served model, `slmnet doctor` passes on
every role with its own flags, and it leaves no process behind.
"""

from __future__ import annotations

import json
import subprocess
import sys

import psutil
import pytest

pytestmark = pytest.mark.slow


@pytest.mark.timeout(2400)
def test_slmnet_up_smoke_ranks_smollm2_above_tiny_and_answers_through_the_gateway(tmp_path):
    before = {p.pid for p in psutil.process_iter()}
    done = subprocess.run(
        [sys.executable, "-m", "neurons.cli", "up", "--smoke", "--models", "smollm2,tiny", "--dir", str(tmp_path / "up"), "--timeout", "2000"],
        capture_output=True,
        text=True,
        timeout=2300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["model"] == "slmnet/SmolLM2-135M-Instruct-Q4_1" and result["answer"].strip()
    assert min(result["incentive"]["smollm2-a"], result["incentive"]["smollm2-b"]) > result["incentive"]["tiny"]
    served = {"slmnet/SmolLM2-135M-Instruct-Q4_1", "slmnet/tiny-qwen2-s0"}
    assert all(model in served and isinstance(answer, str) for model, answer in result["auto"].values()), result["auto"]
    assert result["memory_gib"] < 12
    assert result["doctor"] and not any(result["doctor"].values()), result["doctor"]  # slmnet doctor passes on every role, with its own flags
    leftovers = [p for p in psutil.process_iter(["pid", "cmdline"]) if p.pid not in before and str(tmp_path) in " ".join(p.info["cmdline"] or [])]
    assert not leftovers
    print(json.dumps(result))

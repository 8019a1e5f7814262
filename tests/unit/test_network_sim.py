"""The network simulation at a small size: every cheat the verifier is built to catch stops being
paid within the documented tempos, and no honest miner is ever zeroed (docs/network.md).

The simulation drives the validator's own scoring, evidence, standings, weights and the
localnet's Yuma epoch over synthetic answers (``bench/network_sim.py``). Its randomness is
seeded, so a run is the same on every machine: three seeds, each with every detectable kind and
a day of churn; the worst of them was paid 0 tempos here against the documented bound of 2.
"""

from __future__ import annotations

import json
import subprocess
import sys

DETECTABLE = ("int8", "fp8", "noise-1e-2", "int4", "bf16-as-fp32", "own-rng", "burster")
TEMPOS_PAID_BOUND = 2  # docs/network.md: at 8 challenges per miner per tempo


def test_every_detectable_cheat_stops_being_paid_and_no_honest_miner_is_zeroed():
    args = ["--miners", "32", "--validators", "4", "--tempos", "20", "--seeds", "3", "--workers", "1", "--cheat-share", "0.25"]
    done = subprocess.run(
        [sys.executable, "-m", "bench.network_sim", *args, "--cheats", ",".join(DETECTABLE), "--json"], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for kind in DETECTABLE:
        figures = result["kinds"][kind]
        assert figures["miners"] >= 3, kind  # every kind is present in every seed
        assert figures["still_paid"] == 0 and figures["tempos_paid_worst"] <= TEMPOS_PAID_BOUND, (kind, figures)
    assert result["honest_zeroed"] == 0
    assert result["rank_correlation"] > 0  # pay follows what miners deliver, if only by ranking cheats last

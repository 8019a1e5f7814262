"""60 s at 500 requests a second through the real gateway, whole and streamed, with a stand-in miner.

``bench/gateway_overhead.py`` runs the gateway, a stand-in miner that answers at once (so
only the gateway is loaded) and an open-loop load generator, each its own process on this
machine's cores; every request goes through key lookup, limits, validation, token
counting, routing, a btauth signature, relaying and the SQLite ledger.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.soak
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(1200)
def test_500_requests_a_second_for_60_s_through_the_gateway_get_no_error(figure):
    command = [sys.executable, "-m", "bench.gateway_overhead", "--rates", "500", "--seconds", "60", "--max-rate-steps", "500", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1100, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for tag in ("whole_500rps", "stream_500rps"):
        figure(
            f"gateway at 500 rps for 60 s ({tag.split('_')[0]})",
            f"{result[f'gateway_ok_{tag}']} ok, {result[f'gateway_errors_{tag}']} errors; "
            f"p50 {result[f'gateway_p50_ms_{tag}']:.1f} ms, p99 {result[f'gateway_p99_ms_{tag}']:.1f} ms (added p50 {result[f'added_p50_ms_{tag}']:.1f} ms)",
        )
    for tag in ("whole_500rps", "stream_500rps"):
        assert result[f"gateway_errors_{tag}"] == 0 and result[f"gateway_ok_{tag}"] == 30_000, result

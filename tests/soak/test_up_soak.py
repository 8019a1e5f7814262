"""`slmnet up` for 30 minutes under steady user traffic: memory and file descriptors stay flat.

The whole local subnet (localnet, SmolLM2 and tiny engines, three miners, the validator
and its reference engines, the gateway) runs as `make demo` runs it. A user asks the
gateway a short question every 2 s; every minute each process of the tree is sampled for
its resident memory and open file descriptors. After a warm-up of 5 minutes, growth per
hour is the least-squares slope of each process's samples. ``SLMNET_SOAK_MINUTES`` changes
the length (30 by default).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.soak
MINUTES = float(os.environ.get("SLMNET_SOAK_MINUTES", "30"))
WARM_UP_MIN = 5.0
KV_CACHE_BYTES = 256 * 2**20  # neurons.local_subnet.ENGINE_ARGS
ARTIFACTS = Path(__file__).resolve().parents[1] / ".artifacts"


def _label(process: psutil.Process) -> str:
    """A stable name for a process of the tree: its role and wallet, or its engine's model."""
    cmd = process.cmdline()
    flag = lambda name: cmd[cmd.index(name) + 1] if name in cmd and cmd.index(name) + 1 < len(cmd) else ""  # noqa: E731
    if "neurons.cli" in cmd:
        role = cmd[cmd.index("neurons.cli") + 1]
        return f"{role} {flag('--wallet-name')}".strip()
    if flag("--served-model-name"):
        return f"engine {flag('--served-model-name')} :{flag('--port')}"
    return f"{os.path.basename(cmd[0]) if cmd else '?'} {process.pid}"


def _slope_per_hour(samples: list[tuple[float, float]]) -> float:
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_v = sum(v for _, v in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    return sum((t - mean_t) * (v - mean_v) for t, v in samples) / var * 3600 if var else 0.0


@pytest.mark.timeout(int(MINUTES * 60) + 3000)
def test_slmnet_up_under_steady_traffic_keeps_memory_and_descriptors_flat(tmp_path, figure):
    root, port = tmp_path / "up", 8765
    log = (tmp_path / "up.log").open("w")
    up = subprocess.Popen([sys.executable, "-m", "neurons.cli", "up", "--dir", str(root), "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    statuses: list[int] = []
    stop = threading.Event()
    try:
        deadline = time.monotonic() + 2400
        while "every process is ready" not in (tmp_path / "up.log").read_text():
            assert up.poll() is None and time.monotonic() < deadline, (tmp_path / "up.log").read_text()[-3000:]
            time.sleep(5)
        done = subprocess.run(
            [sys.executable, "-m", "neurons.cli", "keys", "create", "soak", "--db", str(root / "gateway.sqlite"), "--json"], capture_output=True, text=True
        )
        key = json.loads(done.stdout)["key"]

        def traffic() -> None:
            body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 16}).encode()
            while not stop.is_set():
                request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body, headers={"Authorization": f"Bearer {key}"})
                try:
                    with urllib.request.urlopen(request, timeout=120) as response:
                        statuses.append(response.status)
                except urllib.error.HTTPError as exc:
                    statuses.append(exc.code)
                except OSError:
                    statuses.append(0)
                stop.wait(2.0)

        user = threading.Thread(target=traffic, daemon=True)
        user.start()
        samples: dict[str, list[tuple[float, int, int]]] = {}
        began = time.monotonic()
        while time.monotonic() - began < MINUTES * 60:
            now = time.monotonic() - began
            for process in [psutil.Process(up.pid), *psutil.Process(up.pid).children(recursive=True)]:
                try:
                    with process.oneshot():
                        samples.setdefault(_label(process), []).append((now, process.memory_info().rss, process.num_fds()))
                except psutil.NoSuchProcess:
                    continue
            assert up.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
            time.sleep(60)
        stop.set()
        user.join(timeout=150)
    finally:
        stop.set()
        up.send_signal(signal.SIGINT)
        up.wait(timeout=300)
    answered = statuses.count(200)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "up-soak.json").write_text(json.dumps(samples))  # every sample, for a closer look at a growth
    figure(f"slmnet up, {MINUTES:g} min, a question every 2 s", f"{answered}/{len(statuses)} answered")
    growing = []
    for name, rows in sorted(samples.items()):
        steady = [(t, rss, fds) for t, rss, fds in rows if t >= WARM_UP_MIN * 60]
        if len(steady) < 3:
            continue
        rss_mb = [(t, rss / 2**20) for t, rss, _ in steady]
        rss_growth = _slope_per_hour(rss_mb)
        fds_growth = _slope_per_hour([(t, fds) for t, _, fds in steady])
        mean_mb = sum(v for _, v in rss_mb) / len(rss_mb)
        figure(
            f"{name}: RSS, fds",
            f"{steady[0][1] / 2**20:.0f} → {steady[-1][1] / 2**20:.0f} MB ({rss_growth:+.1f} MB/h), {steady[0][2]} → {steady[-1][2]} fds ({fds_growth:+.1f}/h)",
        )
        # Flat: under 30 descriptors and 20% of its memory an hour. An engine's worker first touches its
        # KV cache (256 MiB each in `slmnet up`) as traffic fills new blocks: growth up to that is bounded.
        touched_kv = name.startswith("VLLM::Worker") and (steady[-1][1] - steady[0][1]) <= KV_CACHE_BYTES * 1.1
        if fds_growth >= 30 or (rss_growth / mean_mb >= 0.2 and not touched_kv):
            growing.append((name, round(rss_growth, 1), round(fds_growth, 1)))
    assert answered >= 0.99 * len(statuses) and statuses
    assert not growing, growing

"""Real servers for tests: the vLLM engine and the `slmnet miner` command, each its own process."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

from engine import Child, EngineSpec
from neurons.common import http_status
from shell.net import free_port

STARTUP_TIMEOUT = 400.0  # vLLM on 2 CPU cores: ~40 s eager, ~75 s compiling with empty caches

# Test engines run eager, as `slmnet up`'s do: torch.compile costs ~40 s of both cores a start
# (76 s to healthy, 36 s eager, here), decodes the tiny model no faster (256 tokens: 1.0-1.5 s
# either way), and nothing of ours depends on it. Miners and validators in production compile.
EAGER = ("--enforce-eager",)
# One cache for whatever the engines still compile (the sampler's kernels). Torch's caches lock their files.
ENGINE_CACHE = Path(tempfile.gettempdir()) / "slmnet-test-engine-cache"


def engine_env(tmp: Path) -> dict[str, str]:
    """The environment the CPU engine needs here: offline, a small KV cache, a shared compile cache."""
    return dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        VLLM_CPU_KVCACHE_SPACE="1",
        TMPDIR=str(tmp),
        VLLM_CACHE_ROOT=str(ENGINE_CACHE / "vllm"),
        TORCHINDUCTOR_CACHE_DIR=str(ENGINE_CACHE / "inductor"),
    )


def health_json(url: str) -> dict:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())


class Server:
    """A child process (``engine.Child``) with a log file; ``wait_healthy`` polls ``url/health`` for a 200."""

    def __init__(self, cmd: list[str], url: str, log_path: Path, env: Optional[dict[str, str]] = None):
        self.url = url
        self.log_path = log_path
        self.child = Child(cmd, log_path, env)
        self.process = self.child.process

    def log_tail(self, chars: int = 4000) -> str:
        return self.child.log_tail(chars)

    def wait_healthy(self, timeout: float = STARTUP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while http_status(self.url + "/health") != 200:
            if self.child.returncode is not None:
                raise RuntimeError(f"{self.process.args[:4]} exited with {self.child.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"not healthy after {timeout:g} s:\n{self.log_tail()}")
            time.sleep(1)

    def stop(self, grace: float = 60.0) -> int:
        """SIGTERM, then SIGKILL to the whole process group; returns the exit code."""
        return self.child.stop(grace)


def warm_engine(url: str, served_name: str, streams: int = 32) -> None:
    """Send a fresh engine ``streams`` seeded requests with logprobs at once, as a validator's first capacity
    probe does: its first such batch takes seconds to a first token (measured: 4-6 s on the tiny model, every
    miner in front of it), which would stand in the first round's figures for what its miners deliver."""
    body = {"model": served_name, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8, "seed": 1, "logprobs": True, "top_logprobs": 5}
    request = urllib.request.Request(url + "/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
    with ThreadPoolExecutor(streams) as pool:
        list(pool.map(lambda _: urllib.request.urlopen(request, timeout=120).read(), range(streams)))


def start_vllm(model: Path, served_name: str, tmp: Path, max_model_len: int = 1024, dtype: str = "float32") -> Server:
    spec = EngineSpec(model=str(model), served_name=served_name, port=free_port(), dtype=dtype, max_model_len=max_model_len, extra_args=EAGER)
    return Server(spec.command(), spec.url, tmp / f"vllm-{spec.port}.log", env=spec.environment(engine_env(tmp)))


def start_miner(args: list[str], port: int, tmp: Path, env: Optional[dict[str, str]] = None) -> Server:
    """`slmnet miner` with ``args`` (network, wallet, model, engine flags) on ``port``."""
    cmd = [sys.executable, "-m", "neurons.cli", "miner", "--host", "127.0.0.1", "--port", str(port), *args]
    return Server(cmd, f"http://127.0.0.1:{port}", tmp / f"miner-{port}.log", env=env)


def start_adversary(upstream: str, mode: Optional[str], tmp: Path, cheap: Optional[str] = None) -> Server:
    """A tampering engine (``tests.harness.adversary``) in front of ``upstream``: ``mode`` for every
    path, or (None) the mode each path names (``URL/MODE``); ``cheap``: the engine a two-faced miner serves users from."""
    port = free_port()
    cmd = [sys.executable, "-m", "tests.harness.adversary", "--upstream", upstream, "--port", str(port), *(["--mode", mode] if mode else [])]
    cmd += ["--cheap", cheap] if cheap else []
    return Server(cmd, f"http://127.0.0.1:{port}", tmp / f"adversary-{mode or 'any'}-{port}.log")


def start_miners(
    net,
    upstream: dict[str, str],
    model: Path,
    tmp: Path,
    servers: list[Server],
    capacity: int | dict[str, int] = 8,
    dtypes: Optional[dict[str, str]] = None,
    fronts: Optional[dict[str, DarkFront]] = None,
) -> dict[str, Server]:
    """A real `slmnet miner` per wallet name of ``net``, attached to the engine at ``upstream[name]``
    and declaring the model in ``model`` (in ``dtypes[name]``, float32 by default) and ``capacity``
    (or ``capacity[name]``); each is added to ``servers`` (for the caller's cleanup) as it starts,
    and all are healthy on return. ``fronts``: a front (``DarkFront``) the miner of that name
    announces on chain instead of its own port."""
    miners = {}
    for name, url in upstream.items():
        declared = capacity[name] if isinstance(capacity, dict) else capacity
        args = [*net.flags(name), "--model", str(model), "--engine-url", url, "--capacity", str(declared), "--metagraph-interval", "1"]
        args += ["--dtype", (dtypes or {}).get(name, "float32")]
        front = (fronts or {}).get(name)
        if front is not None:
            args += ["--external-port", str(front.port)]
        port = front.upstream_port if front is not None else free_port()
        servers.append(miners.setdefault(name, start_miner(args, port, tmp)))
    for miner in miners.values():
        miner.wait_healthy(timeout=180)
    return miners


class DarkFront(Server):
    """``tests.harness.dark`` on a free port, in front of the miner that will listen on ``upstream_port``."""

    def __init__(self, tmp: Path):
        self.port, self.upstream_port = free_port(), free_port()
        cmd = [sys.executable, "-m", "tests.harness.dark", "--upstream", f"http://127.0.0.1:{self.upstream_port}", "--port", str(self.port)]
        super().__init__(cmd, f"http://127.0.0.1:{self.port}", tmp / f"dark-{self.port}.log")


def start_machines(upstream: str, tmp: Path, rate: float, streams: int) -> Server:
    """Machines of known capacity (``tests.harness.machines``) in front of the real engine at ``upstream``, healthy."""
    port = free_port()
    cmd = [sys.executable, "-m", "tests.harness.machines", "--upstream", upstream, "--port", str(port), "--rate", str(rate), "--streams", str(streams)]
    machines = Server(cmd, f"http://127.0.0.1:{port}", tmp / f"machines-{port}.log")
    machines.wait_healthy(timeout=60)
    return machines


def create_key(db: Path, name: str, *flags: str) -> str:
    """A new API key from `slmnet keys create` (the key itself, shown once)."""
    done = subprocess.run(
        [sys.executable, "-m", "neurons.cli", "keys", "create", name, "--db", str(db), "--json", *flags], capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise RuntimeError(f"keys create failed: {done.stderr}")
    return json.loads(done.stdout)["key"]


def start_gateway(net, wallet: str, db: Path, tokenizer: str, tmp: Path, *flags: str) -> Server:
    """`slmnet gateway` on a free port with ``wallet``'s hotkey, the ledger in ``db``, healthy."""
    port = free_port()
    args = ["gateway", *net.flags(wallet), "--port", str(port), "--db", str(db), "--tokenizer", tokenizer, "--sync-interval", "1", *flags]
    gateway = Server([sys.executable, "-m", "neurons.cli", *args], f"http://127.0.0.1:{port}", tmp / "gateway.log", env=engine_env(tmp))
    try:
        gateway.wait_healthy(timeout=120)
    except BaseException:
        gateway.stop()
        raise
    return gateway


class RedisServer:
    """A real ``redis-server`` (Debian's package, which the Makefile installs) on a free loopback
    port, no persistence; ``stop`` and ``start`` again on the same port, for outage tests."""

    def __init__(self, tmp: Path):
        self.port = free_port()
        self.tmp = tmp
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.child: Optional[Child] = None
        self.start()

    def start(self) -> None:
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.tmp)]
        self.child = Child(cmd, self.tmp / f"redis-{self.port}.log", None)
        deadline = time.monotonic() + 20
        while not self.ping():
            if self.child.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start:\n{self.child.log_tail()}")
            time.sleep(0.1)

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop(5)
            self.child = None


def ledger_rows(db: Path, request_ids: list[str], columns: str = "status", timeout: float = 5.0) -> list[tuple]:
    """The gateway's ledger rows of ``request_ids`` (in that order) once none is 'open' any more, or as they
    are at ``timeout``: the gateway writes its ledger off the event loop, milliseconds behind its answers."""
    deadline = time.monotonic() + timeout
    while True:
        with sqlite3.connect(db) as conn:
            rows = [conn.execute(f"SELECT {columns}, status FROM usage WHERE request_id = ?", (rid,)).fetchone() for rid in request_ids]
        if all(row is not None and row[-1] != "open" for row in rows) or time.monotonic() > deadline:
            return [row[:-1] if row else None for row in rows]
        time.sleep(0.05)

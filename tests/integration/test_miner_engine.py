"""A miner that supervises its own vLLM engine: the engine dies mid-stream, the miner answers 503, then recovers."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import aiohttp
import psutil
import pytest

import chain
from engine.vllm import ENGINE_ENV_DEFAULTS
from models.tiny import build_tiny
from signed.client import MinerClient
from tests.harness.localnet import make_localnet
from tests.harness.processes import EAGER, STARTUP_TIMEOUT, engine_env, free_port, health_json, start_miner
from tests.harness.sse import read_sse

pytestmark = pytest.mark.slow
MODEL = "slmnet/tiny-qwen2-s1"


def _engine_pid(miner_pid: int) -> int:
    (engine,) = [p for p in psutil.Process(miner_pid).children() if "vllm.entrypoints" in " ".join(p.cmdline())]
    return engine.pid


async def test_engine_killed_mid_stream_gives_503_then_the_miner_recovers(tmp_path):
    build_tiny(tmp_path / "tiny", seed=1)
    net = make_localnet(tmp_path)
    miner, validator = net.wallet("miner"), net.wallet("validator")
    async with chain.connect(net.network) as c:
        for wallet in (miner, validator):
            (await c.register(wallet, net.netuid)).raise_for_failure()
    net.stake(validator, 2000)
    args = ["--network", net.network, "--netuid", "1", "--wallet-path", str(net.wallets_dir), "--wallet-name", "miner", "--model", str(tmp_path / "tiny")]
    args += ["--dtype", "float32", "--max-model-len", "1024", "--engine-log", str(tmp_path / "engine.log"), *(f"--engine-arg={a}" for a in EAGER)]
    process = start_miner(args, free_port(), tmp_path, env=engine_env(tmp_path))
    try:
        # The miner is up at once and says the engine is starting.
        deadline = time.monotonic() + 60
        while (health := _health(process.url)) is None and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        assert health == {"status": 503, "engine": "starting"}
        process.wait_healthy()
        first_engine = _engine_pid(process.process.pid)
        # The engine runs with oneDNN's primitive cache off, its worker unbound and in the engine core's
        # process (which inherits them; vLLM's retitled processes hide their environment): bound, honest
        # answers came out whole in phases; cached, a worker grew by gigabytes an hour; in a third
        # process, each start imported vLLM once more (engine/vllm.py, bench/engine_memory.py).
        environ = psutil.Process(first_engine).environ()
        assert {name: environ.get(name) for name in ENGINE_ENV_DEFAULTS} == {
            "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "0",
            "VLLM_CPU_OMP_THREADS_BIND": "nobind",
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        }

        async with aiohttp.ClientSession() as session:
            c = MinerClient(session, process.url, validator.hotkey, miner.hotkey.ss58_address)
            body = {"model": MODEL, "messages": [{"role": "user", "content": "Count to ten."}], "max_tokens": 800, "ignore_eos": True, "stream": True}
            async with c.post("/v1/chat/completions", body) as response:
                assert response.status == 200
                await response.content.readline()
                os.killpg(first_engine, signal.SIGKILL)
                events, done, _ = await read_sse(response)
            assert not done and events[-1]["error"]["code"] == "engine_unavailable"

            async with c.post("/v1/chat/completions", {**body, "stream": False, "max_tokens": 4}) as response:
                assert response.status == 503 and response.headers["Retry-After"]
                assert (await response.json())["error"]["code"] == "engine_unavailable"
            assert _health(process.url)["status"] == 503

            process.wait_healthy(timeout=STARTUP_TIMEOUT)
            async with c.post("/v1/chat/completions", {**body, "stream": False, "max_tokens": 4}) as response:
                assert response.status == 200
                assert (await response.json())["usage"]["completion_tokens"] == 4
        assert health_json(process.url)["engine_restarts"] == 1
        second_engine = _engine_pid(process.process.pid)
        assert second_engine != first_engine
    finally:
        code = process.stop()
    assert code == 0, process.log_tail()
    # Stopping the miner stops its engine: nothing is left behind.
    assert not psutil.pid_exists(second_engine) or psutil.Process(second_engine).status() == psutil.STATUS_ZOMBIE


def _health(url: str) -> dict | None:
    try:
        body = health_json(url)
    except OSError:
        return None
    return {"status": 200 if body["status"] == "ok" else 503, "engine": body["engine"]}

"""What the benchmarks share: ports, starting and stopping servers, reading a chat stream."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Mapping

import aiohttp

from engine import EngineSpec
from models.manifest import ModelManifest
from models.tiny import build_tiny
from protocol.streams import sse_events
from shell.net import free_port


def model_or_tiny(model: str | None, tmp: Path) -> tuple[Path, ModelManifest]:
    """``--model`` (a folder with slmnet.json), or the tiny model built into ``tmp``."""
    folder = Path(model) if model else tmp / "tiny"
    if not model:
        build_tiny(folder, seed=0)
    manifest = ModelManifest.read(folder)
    if manifest is None:
        raise SystemExit(f"{folder} has no slmnet.json: build it with `slmnet models`")
    return folder, manifest


def wait_healthy(url: str, process: subprocess.Popen, timeout: float = 600, path: str = "/health") -> None:
    """Returns once ``url + path`` answers 200; SystemExit if ``process`` exits or ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + path, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{url} did not become healthy (exit {process.poll()})")
        time.sleep(1)


def start_peer(name: str, cmd: list[str], port: int, log: Path, timeout: float, path: str, env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """A peer gateway the bench compares with, its output in ``log``, once ``path`` answers 200
    (SystemExit naming the log when it does not)."""
    proxy = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proxy, timeout=timeout, path=path)
    except SystemExit as exc:
        proxy.kill()
        raise SystemExit(f"{name} did not start: see {log}") from exc
    return proxy


def stop(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL to the process group after a minute."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def start_engine(
    model: Path, served_name: str, tmp: Path, dtype: str = "float32", max_model_len: int = 1024, kv_gib: int = 1, env: Mapping[str, str] = {}
) -> tuple[subprocess.Popen, str]:
    """The real vLLM CPU engine on a free loopback port, healthy; its log in ``tmp``; ``env`` over
    the environment slmnet gives every engine."""
    spec = EngineSpec(model=str(model), served_name=served_name, port=free_port(), dtype=dtype, max_model_len=max_model_len, env=tuple(env.items()))
    base = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE=str(kv_gib), TMPDIR=str(tmp))
    with open(tmp / f"engine-{spec.port}.log", "w") as log:
        process = subprocess.Popen(spec.command(), env=spec.environment(base), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_healthy(spec.url, process)
    return process, spec.url


async def stream_chat(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSON events of a streamed chat completion, without ``[DONE]``."""
    async with session.post(url + "/v1/chat/completions", json=body) as response:
        return [event async for event in sse_events(response)]

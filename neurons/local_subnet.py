"""The processes of ``slmnet up`` and what it knows of them: the localnet it creates, the
models it prepares, each process's command line, readiness, memory, the chain's verdict.

Everything runs as separate processes on loopback, each in its own process group with
its log under ``DIR/logs``: one vLLM engine for SmolLM2-135M-Instruct shared by two
miners (two engines would not fit beside the validator's references), then, as
``--models`` says, one miner serving Gemma 3 270M (a second model family) and one serving
the tiny random model, each with its own engine, a validator that starts a reference
engine per model, and a gateway with the validator's hotkey, which routes "auto" between
the models.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sqlite3
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from engine import Child, EngineSpec, stop_all
from neurons.common import CliError, http_status
from shell.net import free_port

NETUID = 1
SMOLLM2 = "slmnet/SmolLM2-135M-Instruct-Q4_1"
GEMMA = "slmnet/gemma-3-270m-Q4_K_M"
TINY = "slmnet/tiny-qwen2-s0"
MARKER = ".slmnet-up"  # a folder holding this was made by `slmnet up`: safe to reset
QUESTION = "What is the capital of France?"
LINEUPS = ("smollm2", "gemma", "tiny")  # what --models names; SmolLM2 always (the first answers come from it)
MINERS = {"smollm2": ("smollm2-a", "smollm2-b"), "gemma": ("gemma",), "tiny": ("tiny",)}
SLMNET = [sys.executable, "-m", "neurons.cli"]
# No torch.compile: four engines compiling a 30-layer model at once took over 10 minutes on
# 2 cores (measured); eager engines are healthy in about a minute and decode fast enough.
# KV cache per engine: 256 MiB holds ~5600 SmolLM2 tokens (46 KB each in fp32), enough for
# the demo's concurrency; the 1 GiB minimum of VLLM_CPU_KVCACHE_SPACE put four engines over 12 GiB.
# At most 16 sequences at once (miners take 2 streams each, the capacity probe 4): the sampler's
# buffers are sized by it, 262k floats a sequence for Gemma's vocabulary (vLLM's default 256: 268 MB).
ENGINE_ARGS = ("--enforce-eager", f"--kv-cache-memory-bytes={256 * 2**20}", "--max-num-seqs=16")


@dataclass
class Proc:
    name: str
    cmd: list[str]
    health: Optional[str] = None  # URL whose 200 means ready
    env: Optional[dict[str, str]] = None  # the subnet's when None
    ready_check: Optional[Callable[[], Optional[str]]] = None  # returns a note once ready, None before
    child: Optional[Child] = None
    log: Optional[Path] = None
    state: str = "starting"
    note: str = ""
    started: float = field(default_factory=time.monotonic)

    @property
    def running(self) -> Child:
        """Its process (RuntimeError before ``Subnet.start`` started it)."""
        if self.child is None:
            raise RuntimeError(f"{self.name} was never started")
        return self.child


class Subnet:
    def __init__(self, root: Path, port: int, lineup: tuple[str, ...] = ("smollm2", "gemma")):
        self.root = root
        self.port = port
        self.lineup = lineup
        self.procs: list[Proc] = []
        self.env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        self.env.pop("VLLM_CPU_KVCACHE_SPACE", None)  # it would override --kv-cache-memory-bytes
        self.uids: dict[str, int] = {}
        self.began = time.monotonic()

    @property
    def network(self) -> str:
        return f"localnet:{self.root / 'chain'}"

    def chain_flags(self, wallet: str) -> list[str]:
        return ["--network", self.network, "--netuid", str(NETUID), "--wallet-path", str(self.root / "wallets"), "--wallet-name", wallet]

    def reset(self) -> None:
        if self.root.exists():
            if not (self.root / MARKER).exists() and any(self.root.iterdir()):
                raise CliError(f"{self.root} exists and was not made by `slmnet up`; pick another --dir")
            for child in ("chain", "wallets", "validator", "logs", "gateway.sqlite", "gateway.sqlite-wal", "gateway.sqlite-shm"):
                path = self.root / child
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        (self.root / "logs").mkdir(parents=True)
        (self.root / MARKER).write_text("made by slmnet up\n")
        # TMPDIR stays the system's: vLLM puts its zmq IPC sockets there, and a path under a
        # deep --dir passed the 107-character limit of a Unix socket path (engine start failed).

    def setup_chain(self) -> None:
        import bittensor as bt

        import chain
        from chain.localnet import admin

        admin.init(self.root / "chain", netuid=NETUID, tempo=10, block_time=0.2)
        wallets = {}
        for name in (*(miner for model in self.lineup for miner in MINERS[model]), "validator"):
            wallets[name] = bt.wallets.create(name, "default", path=str(self.root / "wallets"), use_password=False, on_mnemonic=lambda *_: None)
            admin.fund(self.root / "chain", wallets[name].coldkeypub.ss58_address, 1000)

        async def register() -> None:
            async with chain.connect(self.network) as c:
                for name, wallet in wallets.items():
                    (await c.register(wallet, NETUID)).raise_for_failure()
                    self.uids[name] = await c.uid_of(NETUID, wallet.hotkey.ss58_address)

        asyncio.run(register())
        self.publish_models()
        # Miners answer callers with a validator permit or 1000 TAO staked (their default --min-stake).
        admin.fund(self.root / "chain", wallets["validator"].coldkeypub.ss58_address, 2000)
        admin.stake(self.root / "chain", wallets["validator"].coldkeypub.ss58_address, wallets["validator"].hotkey.ss58_address, 2000)

    def publish_models(self) -> None:
        """The subnet owner registers its hotkey (subtensor does so when it creates a subnet)
        and publishes the localnet model list's hash, which the validator and gateway check."""
        import bittensor as bt

        import chain
        from chain.localnet import admin
        from models import subnet

        owner = bt.Wallet(admin.OWNER_WALLET, "default", path=str(self.root / "chain" / "wallets"))
        admin.fund(self.root / "chain", owner.coldkeypub.ss58_address, 10)

        async def publish() -> None:
            async with chain.connect(self.network) as c:
                (await c.register(owner, NETUID)).raise_for_failure()
                (await c.commit(owner, NETUID, subnet.load(subnet.for_network(self.network)).commitment)).raise_for_failure()

        asyncio.run(publish())

    def doctor(self) -> dict[str, list[str]]:
        """``slmnet doctor`` on every miner, the validator and the gateway, with their own flags:
        the failed checks by process (empty lists when all pass)."""
        from neurons.doctor import diagnose

        failed = {}
        for proc in self.procs:
            role = proc.cmd[len(SLMNET)]
            if role in ("miner", "validator", "gateway"):
                failed[proc.name] = [c.line() for c in diagnose(role, proc.cmd[len(SLMNET) + 1 :]) if not c.ok]
        return failed

    def models(self) -> dict[str, Path]:
        """The lineup's model folders (prepared or built the first time)."""
        from models.prepare import default_cache_dir
        from neurons.common import model_folder

        sources = {"smollm2": "prepared:smollm2-135m", "gemma": "prepared:gemma3-270m", "tiny": "tiny:0"}
        return {model: Path(model_folder(sources[model], default_cache_dir())) for model in self.lineup}

    def start(self, proc: Proc) -> None:
        proc.log = self.root / "logs" / f"{proc.name}.log"
        proc.child = Child(proc.cmd, proc.log, proc.env or self.env)
        proc.started = proc.child.started
        self.procs.append(proc)

    def serving(self, smollm2: Path) -> None:
        """What answers users: SmolLM2's engine, the two miners sharing it, the gateway.
        Started first and alone, so the first answer does not wait for four engines
        compiling side by side on two cores."""
        engine = EngineSpec(model=str(smollm2), served_name=SMOLLM2, port=free_port(), dtype="float32", max_model_len=4096, extra_args=ENGINE_ARGS)
        self.start(Proc("engine-smollm2", engine.command(), health=engine.url + "/health", env=engine.environment(self.env)))
        for name in ("smollm2-a", "smollm2-b"):
            self.miner(name, "--model", str(smollm2), "--engine-url", engine.url)
        gateway = ["--port", str(self.port), "--db", str(self.root / "gateway.sqlite"), "--sync-interval", "3", "--replay-prompts"]
        self.start(Proc("gateway", [*SLMNET, "gateway", *self.chain_flags("validator"), *gateway], health=f"http://127.0.0.1:{self.port}/health"))

    def judging(self, folders: dict[str, Path]) -> None:
        """Gemma's and the tiny model's miners, as the lineup has them (each its own engine), and the
        validator with a reference engine per model, started once the serving processes are ready."""
        engine_flags = [f"--engine-arg={arg}" for arg in ENGINE_ARGS]
        for model in ("gemma", "tiny"):
            if model in self.lineup:
                self.miner(model, "--model", str(folders[model]), "--dtype", "float32", "--max-model-len", "2048", *engine_flags)
        ids = {"smollm2": SMOLLM2, "gemma": GEMMA, "tiny": TINY}
        references = [flag for model in self.lineup for flag in ("--serve-reference", ids[model])]
        loop = ["--challenges-per-miner", "4", "--round-interval", "5", "--weights-interval", "1"]
        validator = ["--state-dir", str(self.root / "validator"), *references, "--dtype", "float32", *engine_flags, *loop]
        organic = ["--organic-from", f"http://127.0.0.1:{self.port}"]  # signed HTTP, as across machines (the gateway shares this hotkey)
        self.start(Proc("validator", [*SLMNET, "validator", *self.chain_flags("validator"), *validator, *organic], ready_check=self._validator_progress))

    def miner(self, name: str, *flags: str) -> None:
        port = free_port()
        # 2 streams each: what SmolLM2's shared CPU engine serves two miners at a usable speed; the validator's
        # capacity probe sends each twice its capacity (4 streams on the engine at 4 at most: ~6 tokens/s each here).
        command = [*SLMNET, "miner", *self.chain_flags(name), *flags, "--port", str(port), "--capacity", "2"]
        self.start(Proc(f"miner-{name}", command, health=f"http://127.0.0.1:{port}/health"))

    def _validator_progress(self) -> Optional[str]:
        db = self.root / "validator" / "validator.sqlite"
        if not db.exists():
            return None
        try:
            with contextlib.closing(sqlite3.connect(db, timeout=1)) as conn:  # sqlite3's own `with` commits, never closes
                rounds = conn.execute("SELECT COUNT(*) FROM rounds").fetchone()[0]
                weights = conn.execute("SELECT COUNT(*) FROM weights").fetchone()[0]
        except sqlite3.Error:
            return None
        return f"{rounds} rounds, weights set {weights}×" if rounds else None

    def poll(self) -> None:
        for proc in self.procs:
            code = proc.running.returncode
            if code is not None:
                proc.state, proc.note = "exited", f"exit {code}: see {proc.log}"
                continue
            if proc.health is not None:
                status = http_status(proc.health, timeout=1.0)
                proc.state = "ready" if status == 200 else "starting"
                proc.note = "" if status == 200 else f"{time.monotonic() - proc.started:.0f} s"
            elif proc.ready_check is not None:
                note = proc.ready_check()
                proc.state, proc.note = ("ready", note) if note else ("starting", f"{time.monotonic() - proc.started:.0f} s")

    def failed(self) -> Optional[Proc]:
        return next((p for p in self.procs if p.state == "exited"), None)

    def table(self):
        from rich.table import Table

        table = Table(title=f"slmnet up — {self.root}  ({self.elapsed():.0f} s)")
        for column in ("process", "pid", "state", "detail"):
            table.add_column(column)
        colors = {"ready": "green", "starting": "yellow", "exited": "red"}
        for p in self.procs:
            table.add_row(p.name, str(p.child.pid), f"[{colors[p.state]}]{p.state}[/]", p.note)
        return table

    def incentives(self) -> dict[str, float]:
        import chain

        async def read() -> dict[str, float]:
            async with chain.connect(self.network) as c:
                graph = await c.metagraph(NETUID)
                return {name: graph.uid(uid).incentive for name, uid in self.uids.items()}

        return asyncio.run(read())

    def memory_gib(self) -> float:
        """Proportional set size of every process we started and their children: shared pages
        (torch's libraries, mapped by a dozen processes) counted once, as the machine pays them."""
        import psutil

        total = 0
        for p in self.procs:
            try:
                parent = psutil.Process(p.running.pid)
                total += sum(proc.memory_full_info().pss for proc in [parent, *parent.children(recursive=True)])
            except psutil.NoSuchProcess:
                pass
        return total / 2**30

    def stop(self) -> list[int]:
        """SIGTERM to every process group, SIGKILL after 60 s; then every descendant still shutting
        down (vLLM's engine core and workers outlive their API server by seconds) gets 15 s, and
        SIGKILL after. Returns the pids still alive after all that."""
        import psutil

        family = []
        for p in self.procs:
            try:
                family += [psutil.Process(p.running.pid), *psutil.Process(p.running.pid).children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        stop_all([p.child for p in self.procs if p.child is not None], grace=60)
        _, alive = psutil.wait_procs(family, timeout=15)
        for straggler in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                straggler.kill()
        _, alive = psutil.wait_procs(alive, timeout=5)
        return [p.pid for p in alive if _running(p)]

    def elapsed(self) -> float:
        return time.monotonic() - self.began

    def ask(self, key: str, model: str = SMOLLM2, patience: float = 120.0) -> tuple[str, str]:
        """One question to ``model`` through the gateway: (the model that answered, the answer); its
        503s (miners not yet seen on chain, with a Retry-After) are waited out for ``patience`` seconds."""
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 48, "temperature": 0}).encode()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/v1/chat/completions", data=body, method="POST", headers=headers)
        give_up = time.monotonic() + patience
        while True:
            try:
                with urllib.request.urlopen(request, timeout=300) as response:
                    answer = json.loads(response.read())
                return answer["model"], answer["choices"][0]["message"]["content"]
            except urllib.error.HTTPError as exc:
                if exc.code != 503 or time.monotonic() > give_up:
                    raise CliError(f"the gateway answered {exc.code}: {exc.read()[:500].decode(errors='replace')}") from exc
                time.sleep(min(2.0, float(exc.headers.get("Retry-After") or 1)))


def _running(process) -> bool:
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False

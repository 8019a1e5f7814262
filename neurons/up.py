"""``slmnet up``: the whole subnet on one machine — localnet, miners, validator, gateway.

Everything runs as separate processes on loopback, each in its own process group with
its log under ``--dir/logs``: one vLLM engine for SmolLM2-135M-Instruct shared by two
miners (two engines would not fit the 12 GiB budget beside the validator's references),
one miner serving the tiny random model with its own engine, a validator that starts a
reference engine per model, and a gateway with the validator's hotkey. A live table shows
each process's state while engines start; then the gateway URL, a fresh API key and a
``curl`` line are printed. Ctrl-C (or SIGTERM) stops every process and checks none is
left. ``--smoke`` waits instead until the validator has set weights and the chain ranks
both SmolLM2 miners above the tiny one, asks the gateway one question, prints the answer
and stops (exit 0; 1 with the reason on any failure).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sqlite3
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from engine import Child, EngineSpec, stop_all
from neurons.common import CliError, free_port, http_status

NETUID = 1
SMOLLM2 = "slmnet/SmolLM2-135M-Instruct-Q4_1"
TINY = "slmnet/tiny-qwen2-s0"
MARKER = ".slmnet-up"  # a folder holding this was made by `slmnet up`: safe to reset
QUESTION = "What is the capital of France?"
# No torch.compile: four engines compiling a 30-layer model at once took over 10 minutes on
# 2 cores (measured); eager engines are healthy in about a minute and decode fast enough.
EAGER = "--enforce-eager"
# KV cache per engine: 256 MiB holds ~5600 SmolLM2 tokens (46 KB each in fp32), enough for
# the demo's concurrency; the 1 GiB minimum of VLLM_CPU_KVCACHE_SPACE put four engines over 12 GiB.
KV_BYTES = str(256 * 2**20)


def add_parser(groups: argparse._SubParsersAction) -> None:
    p = groups.add_parser(
        "up", help="run the whole subnet on this machine: localnet, 3 miners, validator, gateway", formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--dir", default="./slmnet-up", help="all state and logs (reset at each start)")
    p.add_argument("--port", type=int, default=8000, help="the gateway's port")
    p.add_argument("--smoke", action="store_true", help="wait for weights and one answer through the gateway, then stop (exit 0 on success)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds --smoke waits in all")
    p.set_defaults(func=cmd_up)


@dataclass
class Proc:
    name: str
    cmd: list[str]
    health: Optional[str] = None  # URL whose 200 means ready
    ready_check: Optional[Callable[[], Optional[str]]] = None  # returns a note once ready, None before
    child: Optional[Child] = None
    log: Optional[Path] = None
    state: str = "starting"
    note: str = ""
    started: float = field(default_factory=time.monotonic)


class Subnet:
    def __init__(self, root: Path, port: int):
        self.root = root
        self.port = port
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
        for name in ("smollm2-a", "smollm2-b", "tiny", "validator"):
            wallets[name] = bt.wallets.create(name, "default", path=str(self.root / "wallets"), use_password=False, on_mnemonic=lambda *_: None)
            admin.fund(self.root / "chain", wallets[name].coldkeypub.ss58_address, 1000)

        async def register() -> None:
            async with chain.connect(self.network) as c:
                for name, wallet in wallets.items():
                    (await c.register(wallet, NETUID)).raise_for_failure()
                    self.uids[name] = await c.uid_of(NETUID, wallet.hotkey.ss58_address)

        asyncio.run(register())
        # Miners answer callers with a validator permit or 1000 TAO staked (their default --min-stake).
        admin.fund(self.root / "chain", wallets["validator"].coldkeypub.ss58_address, 2000)
        admin.stake(self.root / "chain", wallets["validator"].coldkeypub.ss58_address, wallets["validator"].hotkey.ss58_address, 2000)

    def models(self) -> tuple[Path, Path]:
        from models.prepare import default_cache_dir, prepare
        from neurons.common import model_folder

        smollm2, _ = prepare("smollm2-135m", default_cache_dir())
        tiny = Path(model_folder("tiny:0", default_cache_dir()))
        return smollm2, tiny

    def start(self, proc: Proc) -> None:
        proc.log = self.root / "logs" / f"{proc.name}.log"
        proc.child = Child(proc.cmd, proc.log, self.env)
        proc.started = proc.child.started
        self.procs.append(proc)

    def launch(self, smollm2: Path, tiny: Path) -> None:
        slmnet = [sys.executable, "-m", "neurons.cli"]
        engine = EngineSpec(
            model=str(smollm2),
            served_name=SMOLLM2,
            port=free_port(),
            dtype="float32",
            max_model_len=4096,
            extra_args=(EAGER, "--kv-cache-memory-bytes", KV_BYTES),
        )
        engine_url = engine.url
        self.start(Proc("engine-smollm2", engine.command(), health=engine_url + "/health"))
        for name in ("smollm2-a", "smollm2-b"):
            port = free_port()
            self.start(
                Proc(
                    f"miner-{name}",
                    [*slmnet, "miner", *self.chain_flags(name), "--model", str(smollm2), "--engine-url", engine_url, "--port", str(port), "--capacity", "4"],
                    health=f"http://127.0.0.1:{port}/health",
                )
            )
        port = free_port()
        self.start(
            Proc(
                "miner-tiny",
                [
                    *slmnet,
                    "miner",
                    *self.chain_flags("tiny"),
                    "--model",
                    str(tiny),
                    "--dtype",
                    "float32",
                    "--port",
                    str(port),
                    "--capacity",
                    "4",
                    "--max-model-len",
                    "2048",
                    f"--engine-arg={EAGER}",
                    f"--engine-arg=--kv-cache-memory-bytes={KV_BYTES}",
                ],
                health=f"http://127.0.0.1:{port}/health",
            )
        )
        self.start(
            Proc(
                "validator",
                [
                    *slmnet,
                    "validator",
                    *self.chain_flags("validator"),
                    "--state-dir",
                    str(self.root / "validator"),
                    "--serve-reference",
                    SMOLLM2,
                    "--serve-reference",
                    TINY,
                    "--dtype",
                    "float32",
                    f"--engine-arg={EAGER}",
                    f"--engine-arg=--kv-cache-memory-bytes={KV_BYTES}",
                    "--challenges-per-miner",
                    "6",
                    "--round-interval",
                    "5",
                    "--weights-interval",
                    "1",
                    "--organic-from",
                    str(self.root / "gateway.sqlite"),
                ],
                ready_check=self._validator_progress,
            )
        )
        self.start(
            Proc(
                "gateway",
                [
                    *slmnet,
                    "gateway",
                    *self.chain_flags("validator"),
                    "--port",
                    str(self.port),
                    "--db",
                    str(self.root / "gateway.sqlite"),
                    "--sync-interval",
                    "3",
                ],
                health=f"http://127.0.0.1:{self.port}/health",
            )
        )

    def _validator_progress(self) -> Optional[str]:
        db = self.root / "validator" / "validator.sqlite"
        if not db.exists():
            return None
        try:
            with sqlite3.connect(db, timeout=1) as conn:
                rounds = conn.execute("SELECT COUNT(*) FROM rounds").fetchone()[0]
                weights = conn.execute("SELECT COUNT(*) FROM weights").fetchone()[0]
        except sqlite3.Error:
            return None
        return f"{rounds} rounds, weights set {weights}×" if rounds else None

    def poll(self) -> None:
        for proc in self.procs:
            code = proc.child.returncode
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

        table = Table(title=f"slmnet up — {self.root}  ({time.monotonic() - self.began:.0f} s)")
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
                parent = psutil.Process(p.child.pid)
                total += sum(proc.memory_full_info().pss for proc in [parent, *parent.children(recursive=True)])
            except psutil.NoSuchProcess:
                pass
        return total / 2**30

    def stop(self) -> list[int]:
        """SIGTERM to every process group, SIGKILL after 60 s; returns pids still alive after."""
        import psutil

        family = []
        for p in self.procs:
            try:
                family += [p.child.pid, *(c.pid for c in psutil.Process(p.child.pid).children(recursive=True))]
            except psutil.NoSuchProcess:
                pass
        stop_all([p.child for p in self.procs], grace=60)
        time.sleep(0.5)
        return [pid for pid in family if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]

    def ask(self, key: str) -> tuple[str, str]:
        body = json.dumps({"model": SMOLLM2, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 48, "temperature": 0}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/v1/chat/completions",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise CliError(f"the gateway answered {exc.code}: {exc.read()[:500].decode(errors='replace')}") from exc
        return answer["model"], answer["choices"][0]["message"]["content"]


def _log_tail(path: Path, chars: int = 2500) -> str:
    return path.read_text(errors="replace")[-chars:] if path and path.exists() else ""


def cmd_up(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.live import Live

    from gateway.store import Store

    console = Console(stderr=True)
    root = Path(args.dir).expanduser().resolve()
    port = free_port() if args.smoke else args.port
    if http_status(f"http://127.0.0.1:{port}/health", timeout=1.0) is not None:
        raise CliError(f"port {port} is taken; pass --port")
    subnet = Subnet(root, port)
    stopping = {"signal": None}

    def on_signal(signum, frame) -> None:
        stopping["signal"] = signum

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    subnet.reset()
    with console.status("localnet: chain, wallets, registrations"):
        subnet.setup_chain()
    with console.status("models: SmolLM2-135M-Instruct (prepared once, ~40 s) and the tiny model"):
        smollm2, tiny = subnet.models()
    subnet.launch(smollm2, tiny)
    outcome, reason = 1, ""
    try:
        deadline = time.monotonic() + args.timeout
        with Live(subnet.table(), console=console, refresh_per_second=2, transient=False) as live:
            while stopping["signal"] is None:
                subnet.poll()
                live.update(subnet.table())
                if (dead := subnet.failed()) is not None:
                    raise CliError(f"{dead.name} exited:\n{_log_tail(dead.log)}")
                if all(p.state == "ready" for p in subnet.procs):
                    break
                if args.smoke and time.monotonic() > deadline:
                    raise CliError(f"not every process was ready after {args.timeout:g} s")
                time.sleep(1)
        if stopping["signal"] is not None:
            outcome, reason = 0, "stopped before everything was ready"
            return
        key, _ = Store(root / "gateway.sqlite").create_key("slmnet-up")
        url = f"http://127.0.0.1:{port}"
        if not args.smoke:
            console.print(
                f"\n[bold]slmnet is up[/] ({time.monotonic() - subnet.began:.0f} s, {subnet.memory_gib():.1f} GiB in all)\n"
                f"  gateway  {url}  (dashboard at {url}/)\n  API key  {key}\n"
                f"  try      curl {url}/v1/chat/completions -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' "
                f'-d \'{{"model": "auto", "messages": [{{"role": "user", "content": "{QUESTION}"}}]}}\'\n'
                f"  logs     {root / 'logs'}\nCtrl-C stops everything."
            )
            while stopping["signal"] is None:
                subnet.poll()
                if (dead := subnet.failed()) is not None:
                    raise CliError(f"{dead.name} exited:\n{_log_tail(dead.log)}")
                time.sleep(1)
            outcome, reason = 0, "stopped"
            return
        validator = next(p for p in subnet.procs if p.name == "validator")
        with console.status("waiting for the validator's weights to rank the SmolLM2 miners above the tiny one") as status:
            while True:
                subnet.poll()
                if (dead := subnet.failed()) is not None:
                    raise CliError(f"{dead.name} exited:\n{_log_tail(dead.log)}")
                paid = subnet.incentives()
                status.update(f"incentive: {', '.join(f'{n} {v:.3f}' for n, v in paid.items() if n != 'validator')}  (validator: {validator.note})")
                if min(paid["smollm2-a"], paid["smollm2-b"]) > paid["tiny"]:
                    break
                if time.monotonic() > deadline or stopping["signal"] is not None:
                    raise CliError(f"the chain's incentive never ranked both SmolLM2 miners above the tiny one: {paid}")
                time.sleep(2)
        model, answer = subnet.ask(key)
        elapsed = time.monotonic() - subnet.began
        print(
            json.dumps(
                {
                    "question": QUESTION,
                    "model": model,
                    "answer": answer,
                    "incentive": paid,
                    "seconds_to_answer": round(elapsed, 1),
                    "memory_gib": round(subnet.memory_gib(), 2),
                }
            )
        )
        if not answer.strip():
            raise CliError("the gateway answered with empty text")
        outcome, reason = 0, "smoke test passed"
    finally:
        console.print(f"stopping {len(subnet.procs)} processes…")
        left = subnet.stop()
        console.print(f"stopped ({reason or 'failed'}); logs in {root / 'logs'}")
        if left:  # worse than any earlier failure: say it even if it hides that one (the logs keep it)
            raise CliError(f"processes left behind after stopping: {left}")
    if outcome:
        raise CliError(reason)

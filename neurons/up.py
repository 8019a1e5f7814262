"""``slmnet up``: the whole subnet on one machine — localnet, miners, validator, gateway.

It starts in two stages so the first answer comes early: first what serves users
(SmolLM2's engine, its two miners, the gateway), alone on the cores; once those are ready
the gateway URL, a fresh API key and a ``curl`` line are printed, and the other models'
miners (``--models``: Gemma 3 270M by default, the tiny test model on request) and the
validator with its reference engines start. A live table shows each process's state.
Ctrl-C (or SIGTERM) stops every process and checks none is left. ``--smoke`` asks the
gateway one question as soon as it can answer, then waits until the validator has set
weights and the chain ranks both SmolLM2 miners above the tiny one (pays every miner,
without it), asks Gemma (when served) and each "auto" flavour, prints the times and
answers and stops (exit 0; 1 with the reason on any failure).
"""

from __future__ import annotations

import argparse
import json
import signal
import time
from pathlib import Path

from neurons.common import CliError, HelpFormatter, http_status
from neurons.local_subnet import GEMMA, LINEUPS, QUESTION, Subnet
from shell.net import free_port


def add_parser(groups: argparse._SubParsersAction) -> None:
    p = groups.add_parser("up", help="run the whole subnet on this machine: localnet, miners, validator, gateway", formatter_class=HelpFormatter)
    p.add_argument("--dir", default="./slmnet-up", help="all state and logs (reset at each start)")
    p.add_argument("--port", type=int, default=8000, help="the gateway's port")
    p.add_argument("--smoke", action="store_true", help="one answer through the gateway, then wait for weights, then stop (exit 0 on success)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds --smoke waits in all")
    p.add_argument(
        "--models",
        default="smollm2,gemma",
        help="the models served, comma-separated, of smollm2 (always: two miners), gemma (Gemma 3 270M: a second family), tiny (the random test model)",
    )
    p.set_defaults(func=cmd_up)


class Stopped(Exception):
    """SIGINT or SIGTERM arrived."""


class Run:
    """One ``slmnet up``: the subnet, the screen, the deadline and the signals."""

    def __init__(self, args: argparse.Namespace):
        from rich.console import Console

        self.console = Console(stderr=True)
        self.root = Path(args.dir).expanduser().resolve()
        self.smoke = args.smoke
        self.timeout = args.timeout
        port = free_port() if args.smoke else args.port
        if http_status(f"http://127.0.0.1:{port}/health", timeout=1.0) is not None:
            raise CliError(f"port {port} is taken; pass --port")
        lineup = tuple(m.strip() for m in args.models.split(",") if m.strip())
        if "smollm2" not in lineup or not set(lineup) <= set(LINEUPS):
            raise CliError(f"--models {args.models}: smollm2 and any of {', '.join(LINEUPS[1:])}")
        self.subnet = Subnet(self.root, port, tuple(m for m in LINEUPS if m in lineup))
        self.url = f"http://127.0.0.1:{port}"
        self.deadline = time.monotonic() + args.timeout
        self.signal = None
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.signal = signum

    def check(self) -> None:
        """Raise when a process died, a signal came or --smoke's time ran out."""
        self.subnet.poll()
        if (dead := self.subnet.failed()) is not None:
            raise CliError(f"{dead.name} exited:\n{_log_tail(dead.log) if dead.log else '(no log)'}")
        if self.signal is not None:
            raise Stopped
        if self.smoke and time.monotonic() > self.deadline:
            raise CliError(f"--timeout: {self.timeout:g} s passed")

    def until_ready(self) -> None:
        from rich.live import Live

        with Live(self.subnet.table(), console=self.console, refresh_per_second=2, transient=False) as live:
            while not all(p.state == "ready" for p in self.subnet.procs):
                time.sleep(1)
                self.check()
                live.update(self.subnet.table())

    def until_ranked(self) -> dict[str, float]:
        """The chain's incentive once the validator's weights rank both SmolLM2 miners above the tiny
        one (in a lineup with it), else once they pay every miner."""
        validator = next(p for p in self.subnet.procs if p.name == "validator")
        tiny = "tiny" in self.subnet.lineup
        goal = "rank the SmolLM2 miners above the tiny one" if tiny else "pay every miner"
        with self.console.status(f"waiting for the validator's weights to {goal}") as status:
            while True:
                self.check()
                paid = self.subnet.incentives()
                status.update(f"incentive: {', '.join(f'{n} {v:.3f}' for n, v in paid.items() if n != 'validator')}  (validator: {validator.note})")
                miners = [v for n, v in paid.items() if n != "validator"]
                if (min(paid["smollm2-a"], paid["smollm2-b"]) > paid["tiny"]) if tiny else min(miners) > 0:
                    return paid
                time.sleep(2)

    def banner(self, key: str) -> None:
        self.console.print(
            f"\n[bold]slmnet is answering[/] ({self.subnet.elapsed():.0f} s); the validator starts now\n"
            f"  gateway  {self.url}  (dashboard at {self.url}/)\n  API key  {key}\n"
            f"  try      curl {self.url}/v1/chat/completions -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' "
            f'-d \'{{"model": "auto", "messages": [{{"role": "user", "content": "{QUESTION}"}}]}}\'\n'
            f"  logs     {self.root / 'logs'}\nCtrl-C stops everything."
        )


def cmd_up(args: argparse.Namespace) -> None:
    from gateway.store import Store

    run = Run(args)
    subnet, console = run.subnet, run.console
    subnet.reset()
    with console.status("localnet: chain, wallets, registrations"):
        subnet.setup_chain()
    with console.status(f"models: {', '.join(subnet.lineup)} (SmolLM2 and Gemma are prepared once, ~40 s and ~95 s)"):
        folders = subnet.models()
    outcome = "failed"
    try:
        subnet.serving(folders["smollm2"])
        run.until_ready()
        key, _ = Store(run.root / "gateway.sqlite").create_key("slmnet-up")
        first = subnet.ask(key) if run.smoke else None
        first_at = subnet.elapsed()
        if not run.smoke:
            run.banner(key)
        subnet.judging(folders)
        run.until_ready()
        if not run.smoke:
            console.print(f"[bold]every process is ready[/] ({subnet.elapsed():.0f} s, {subnet.memory_gib():.1f} GiB in all)")
            while True:
                time.sleep(1)
                run.check()
        paid = run.until_ranked()
        assert first is not None  # asked in a smoke run, before the ranking
        model, answer = first
        result = {"question": QUESTION, "model": model, "answer": answer, "incentive": paid, "seconds_to_first_answer": round(first_at, 1)}
        if "gemma" in subnet.lineup:
            result["gemma"] = subnet.ask(key, GEMMA)  # the second family, pinned
        result["auto"] = {flavour: subnet.ask(key, flavour) for flavour in ("auto", "auto:fast", "auto:best")}
        result |= {"seconds_to_weights": round(subnet.elapsed(), 1), "memory_gib": round(subnet.memory_gib(), 2), "doctor": subnet.doctor()}
        print(json.dumps(result))
        if not answer.strip():
            raise CliError("the gateway answered with empty text")
        outcome = "smoke test passed"
    except Stopped:
        outcome = "stopped"
    finally:
        console.print(f"stopping {len(subnet.procs)} processes…")
        left = subnet.stop()
        console.print(f"stopped ({outcome}); logs in {run.root / 'logs'}")
        if left:  # worse than any earlier failure: say it even if it hides that one (the logs keep it)
            raise CliError(f"processes left behind after stopping: {left}")


def _log_tail(path: Path, chars: int = 2500) -> str:
    return path.read_text(errors="replace")[-chars:] if path and path.exists() else ""

"""Where a stored round is told: the JSONL journal, wandb, Prometheus metrics and the log.

The round itself is in the validator's SQLite (``validator.store``) before anything here runs;
the journal (``rounds.jsonl``) is a copy that catches up with the store after a kill or a full
disk, so it holds each stored round once, in order.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from protocol.records import RoundSummary
from shell.role import serve
from validator.config import ValidatorConfig
from validator.records import RoundReport
from validator.store import Store

log = logging.getLogger(__name__)


class ValidatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.rounds = Counter("slmnet_validator_rounds", "Rounds completed", registry=self.registry)
        self.responses = Counter("slmnet_validator_responses", "Challenge outcomes", ["outcome"], registry=self.registry)
        self.fidelity_failures = Counter("slmnet_validator_fidelity_failures", "Answers that failed verification", registry=self.registry)
        self.weights_set = Counter("slmnet_validator_weights_set", "Weight vectors accepted by the chain", registry=self.registry)
        self.score = Gauge("slmnet_validator_effective_score", "Effective standing per miner", ["uid"], registry=self.registry)


class RoundLog:
    """The journal, wandb and the metrics of one validator."""

    def __init__(self, config: ValidatorConfig, store: Store):
        self.config = config
        self.store = store
        self.metrics = ValidatorMetrics()
        self.journal: Path = config.state_dir / "rounds.jsonl"
        self._journaled: Optional[int] = None  # the last round in the journal, once read (catch_up)
        self._wandb: Any = None

    def catch_up(self) -> list[int]:
        """Make rounds.jsonl hold each stored round once, in order: drop a line torn by a kill, and
        append the rounds stored after its last line (this round, and any a kill or a full disk
        kept out before). The file is read only at start and after a failed write; otherwise the
        last round written is known. Returns the rounds appended."""
        last = self._journaled if self._journaled is not None else -1
        if self._journaled is None and self.journal.exists():
            with self.journal.open("rb+") as f:
                size = f.seek(0, 2)
                f.seek(max(0, size - (1 << 20)))
                tail = f.read()
                end = tail.rfind(b"\n") + 1
                if end < len(tail):
                    f.truncate(size - (len(tail) - end))
                lines = tail[:end].splitlines()
                last = RoundSummary.model_validate_json(lines[-1]).round if lines else -1
        missing = self.store.summaries_after(last)
        self._journaled = None  # unknown until the append below succeeds
        if missing:
            with self.journal.open("a") as f:
                f.writelines(summary.model_dump_json() + "\n" for summary in missing)
        self._journaled = missing[-1].round if missing else last
        return [s.round for s in missing]

    def round(self, summary: RoundSummary, report: RoundReport) -> None:
        """Tell a stored round everywhere it is told."""
        try:
            appended = self.catch_up()
        except OSError as exc:  # the round is stored: the journal catches up on the next round that can write
            log.error("round %s stored, but %s cannot be written (%s)", summary.round, self.journal, exc)
        else:
            if appended[:-1]:
                log.warning("rounds %s were stored but missing from %s (a kill or a full disk): appended", appended[:-1], self.journal.name)
        self.metrics.rounds.inc()
        for r in report.results:
            self.metrics.responses.labels(r.outcome.kind).inc()
            if r.outcome.fidelity_passed is False:
                self.metrics.fidelity_failures.inc()
        for uid, value in summary.effective.items():
            self.metrics.score.labels(str(uid)).set(value)
        if self._wandb is not None:
            self._wandb.log(
                {
                    "round": summary.round,
                    "miners": summary.miners,
                    "fidelity_failed": len(summary.fidelity_failed),
                    **{f"effective/{uid}": v for uid, v in summary.effective.items()},
                }
            )
        log.info(
            "round %s: %s miners, scores %s, fidelity failures %s",
            summary.round,
            summary.miners,
            {u: round(s, 3) for u, s in summary.scores.items()},
            summary.fidelity_failed,
        )

    def start_wandb(self, hotkey: str) -> None:
        """wandb online when the config names a project, offline under the state folder otherwise."""
        import wandb

        self._wandb = wandb.init(
            project=self.config.wandb_project or "slmnet-validator",
            mode="online" if self.config.wandb_project else "offline",
            dir=str(self.config.state_dir),
            config={"netuid": self.config.chain.netuid, "hotkey": hotkey, "models": self.config.models.version},
            settings=wandb.Settings(silent=True),
        )

    def finish(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()

    async def serve_metrics(self) -> Optional[web.AppRunner]:
        """Prometheus /metrics on loopback at the configured port (None: not asked for)."""
        if self.config.metrics_port is None:
            return None

        async def metrics(request: web.Request) -> web.Response:
            return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        return await serve(app, "127.0.0.1", self.config.metrics_port)

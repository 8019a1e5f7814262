"""The validator's configuration: one frozen object, built and validated in ``neurons/`` (its flags take their defaults from it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from chain import ChainConfig
from engine import EngineSpec
from models.subnet import ModelList
from scoring.aggregate import AggregationParams
from validator.query import Timeouts
from validator.rounds import PROBE_CONCURRENCY


@dataclass(frozen=True)
class ValidatorConfig:
    chain: ChainConfig  # network, netuid, wallet
    state_dir: Path
    models: ModelList
    tokenizers: tuple[tuple[str, str], ...] = ()  # (model id, folder with its tokenizer): ids and text are bound with it
    references: tuple[tuple[str, str], ...] = ()  # (model id, URL of a running reference engine)
    engines: tuple[EngineSpec, ...] = ()  # reference engines to start and supervise
    # 16 rounds a 72-minute tempo of 4 challenges each: every cheat the verifier catches is paid
    # 0 tempos and an honest newcomer reaches half pay in 1.5, at ~1 challenge/s on a miner from 64
    # validators (docs/network.md; 8 every 30 s was 17 a second on each miner, its whole capacity).
    challenges_per_miner: int = 4
    # The capacity probe (validator.rounds): each model's miners once every `probe_every` rounds, each
    # sent as many challenges at once as it declares (at most `probe_concurrency`), all at one moment.
    probe_every: int = 4
    probe_concurrency: int = PROBE_CONCURRENCY
    round_interval: float = 270.0  # seconds between round starts
    weights_interval_blocks: Optional[int] = None  # default: the subnet's tempo
    timeouts: Timeouts = field(default_factory=Timeouts)
    aggregation: AggregationParams = field(default_factory=AggregationParams)
    metrics_port: Optional[int] = None  # Prometheus on loopback
    wandb_project: Optional[str] = None  # online wandb; offline runs are written under state_dir
    max_rounds: Optional[int] = None  # stop after this many rounds (tests, smoke runs)
    trust_gateways: tuple[str, ...] = ()  # hotkeys whose gateways announced on chain it reads (its own always)
    organic_from: tuple[str, ...] = ()  # the gateways it reads (URLs): users' answers to verify, service counts; verdicts go back

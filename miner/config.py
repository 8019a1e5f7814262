"""The miner's configuration: one frozen object, built and validated in ``neurons/``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from chain import ChainConfig
from engine import EngineSpec
from protocol.commitment import Dtype
from signed import CALLER_MIN_STAKE_TAO


@dataclass(frozen=True)
class MinerConfig:
    chain: ChainConfig  # network, netuid, wallet
    port: int
    host: str = "0.0.0.0"
    external_ip: str = "127.0.0.1"  # the address announced on chain
    external_port: Optional[int] = None  # the port announced on chain (default: port); for hosts behind a port mapping
    engine: Optional[EngineSpec] = None  # start and supervise this engine ...
    engine_url: Optional[str] = None  # ... or attach to a running one
    model_id: str = ""  # the declared model; the engine serves it under this name
    revision: Optional[str] = None
    weights_sha256: Optional[str] = None
    dtype: Dtype = "float32"  # declared: what the engine computes in
    max_context: int = 2048
    capacity: int = 16  # declared; also the global in-flight limit
    max_in_flight_per_caller: Optional[int] = None  # None: capacity
    min_stake: float = CALLER_MIN_STAKE_TAO  # TAO a sender without a validator permit must hold
    max_body_bytes: int = 1 << 20
    metagraph_interval: float = 12.0  # seconds between metagraph refreshes
    engine_timeout: float = 300.0  # seconds without a byte from the engine before giving up
    engine_wait: float = 600.0  # seconds to wait for an attached engine at start
    metrics_token: Optional[str] = None  # who may scrape /metrics unsigned: this bearer token; None: loopback only

    @property
    def announced_port(self) -> int:
        return self.external_port or self.port

    def __post_init__(self) -> None:
        if self.max_in_flight_per_caller is None:
            object.__setattr__(self, "max_in_flight_per_caller", self.capacity)
        if (self.engine is None) == (self.engine_url is None):
            raise ValueError("give either engine flags (--engine-model ...) or --engine-url, not both and not neither")
        if not self.model_id:
            raise ValueError("the declared model id is empty")
        for name in ("capacity", "max_in_flight_per_caller", "max_body_bytes", "max_context"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        self.chain.check_announced(self.external_ip)
        if self.external_port is not None and not 0 < self.external_port < 65536:
            raise ValueError(f"external port {self.external_port} is not a TCP port")
        if self.min_stake < 0 or self.metagraph_interval <= 0:
            raise ValueError("min_stake must be >= 0 and metagraph_interval > 0")

    @property
    def upstream(self) -> str:
        if self.engine is not None:
            return self.engine.url
        assert self.engine_url is not None  # __post_init__: one or the other
        return self.engine_url.rstrip("/")

    @property
    def caller_limit(self) -> int:
        """Requests one caller may have in flight at once."""
        return self.max_in_flight_per_caller or self.capacity

"""The gateway's settings: one frozen dataclass, built once by ``slmnet gateway`` (whose flags take their defaults from it).

Light on purpose (no aiohttp, no tokenizer): the command line imports it to build its help.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class GatewaySettings:
    max_body_bytes: int = 1 << 20
    max_attempts: int = 3
    connect_timeout: float = 2.0
    first_token_timeout: float = 15.0
    stall_timeout: float = 10.0
    default_max_tokens: int = 512  # a request's budget when it names none (--default-max-tokens); at most what the context leaves
    busy_wait: float = 5.0  # seconds to wait for a slot when every miner answers 429
    verify_share: float = 0.05  # share of chat answers put in the organic outbox for a validator to verify
    validator_hotkeys: tuple[str, ...] = ()  # who may read the outbox and post verdicts over HTTP; () = its own hotkey and every permitted validator
    replay_prompts: bool = False  # whether a validator may replay the sampled users' prompts to miners as challenges
    redis_url: Optional[str] = None  # per-key windows and quotas shared by every worker and host; None: in this process
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API ("*": any)
    keepalive_s: float = 10.0  # an SSE comment this often while a stream waits for its first token (0: none)
    metrics_token: Optional[str] = None  # who may scrape /metrics: this bearer token; None: loopback only
    explore: float = 0.05  # share of requests routed uniformly, so new miners earn a record
    metagraph_interval: float = 12.0  # seconds between metagraph reads
    ledger_days: float = 90.0  # finished requests are kept this long in the ledger (never less than a quota period in force; totals are kept for good)
    samples_days: float = 7.0  # organic samples a validator has not read by then are dropped
    verdict_ttl_s: float = 3600.0  # a validator's verdict on a miner counts this long after it was posted (validators post every round)
    worker: str = ""  # this process's name among --workers (sent as x-slmnet-worker), "" when it is the only one

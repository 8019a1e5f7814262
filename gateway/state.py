"""The gateway's per-process state: settings, metrics, stores, router, and the ids every response carries."""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass, field
from typing import Any, Optional

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram

from gateway.ledger import Ledger
from gateway.limits import KeyLimits
from gateway.router import Router
from gateway.settings import GatewaySettings
from gateway.store import Store
from models.tokenizer import ModelTokenizer
from signed.server import SignatureCheck

OVERHEAD_HEADER = "x-slmnet-overhead-ms"
LEDGER_ID_HEADER = "x-slmnet-request-id"  # the gateway's own id for the request (the ledger's key)
MINER_HEADER = "x-slmnet-miner-uid"
WORKER_HEADER = "x-slmnet-worker"
MODEL_HEADER = "x-slmnet-model"  # the model that answered (for "auto": the one it chose)
ROUTE_HEADER = "x-slmnet-route"  # for "auto": the flavour, the request's kind, the chosen model's expected accuracy and latency
CLIENT_ID = re.compile(r"[\x21-\x7e]{1,128}")  # a client's X-Request-Id we echo: printable, no spaces, bounded


class Entropy:
    """Unpredictable bytes for request ids and sampling seeds, read from the OS 4 KiB at a time: a
    ``getrandom`` call cost ~50 µs here and a request needs two. (Not ``random.Random``: its output
    can be predicted from what came before, and miners see every seed: they could tell users' requests
    from validators'.)"""

    def __init__(self, size: int = 4096):
        self.size = size
        self.pool, self.at = b"", 0

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.pool):
            self.pool, self.at = os.urandom(self.size), 0
        self.at += n
        return self.pool[self.at - n : self.at]

    def request_id(self) -> str:
        return self.take(16).hex()

    def seed(self) -> int:
        """31 bits, like a challenge's."""
        return int.from_bytes(self.take(4), "big") >> 1


ENTROPY = Entropy()


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("slmnet_gateway_requests", "Requests by endpoint and status", ["endpoint", "status"], registry=self.registry)
        self.ttft = Histogram(
            "slmnet_gateway_miner_ttft_seconds",
            "Time to first token per miner",
            ["uid"],
            registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
        )
        self.miner_errors = Counter("slmnet_gateway_miner_errors", "Miner failures by kind", ["uid", "kind"], registry=self.registry)
        self.failovers = Counter("slmnet_gateway_failovers", "Requests moved to another miner", ["phase"], registry=self.registry)
        self.overhead = Histogram(
            "slmnet_gateway_overhead_seconds",
            "Time the gateway itself added",
            registry=self.registry,
            buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05),
        )
        self.tokens = Counter("slmnet_gateway_tokens", "Tokens counted with the model's tokenizer", ["kind"], registry=self.registry)


@dataclass(frozen=True)
class Clients:
    """What a running gateway talks through: made when its app starts (inside the event loop), closed when it stops."""

    session: aiohttp.ClientSession  # the one client session to miners
    limits: KeyLimits  # per-key windows and quotas (in memory, or Redis)
    ledger: Ledger  # the store's writes, off the event loop


@dataclass
class GatewayState:
    store: Store
    router: Router
    tokenizers: dict[str, ModelTokenizer]  # model id → its tokenizer
    keypair: Any
    settings: GatewaySettings = field(default_factory=GatewaySettings)
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    # The one part made later: what must live in the running event loop (a client session), made when the app starts
    # (``gateway.server``) and closed when it stops; the properties below raise outside that time.
    clients: Optional[Clients] = None
    contexts: dict[str, int] = field(default_factory=dict)  # model id → context length, from the model list
    rng: random.Random = field(default_factory=random.Random)
    signatures: SignatureCheck = field(init=False)  # btauth/1 checks of the validators' hand-over calls, to this gateway's hotkey
    pages: dict[str, tuple[float, bytes]] = field(default_factory=dict)  # a public page's path → (when it was built, its body)
    permitted: frozenset[str] = frozenset()  # hotkeys with a validator permit on the last metagraph read: trusted by default

    def __post_init__(self) -> None:
        self.signatures = SignatureCheck(self.keypair.ss58_address)

    def _running(self) -> Clients:
        if self.clients is None:
            raise RuntimeError("the gateway's clients are made when its app starts")
        return self.clients

    @property
    def session(self) -> aiohttp.ClientSession:
        return self._running().session

    @property
    def limits(self) -> KeyLimits:
        return self._running().limits

    @property
    def ledger(self) -> Ledger:
        return self._running().ledger


STATE = web.AppKey("state", GatewayState)


def request_headers(request: web.Request) -> dict[str, str]:
    """What every response carries: the request ids, and the key's x-ratelimit-* once admitted."""
    headers = {
        "X-Request-Id": request["echo_id"],
        LEDGER_ID_HEADER: request["request_id"],
        **request.get("ratelimit", {}),
        **request.get("cors", {}),
        **request.get("route", {}),
    }
    if worker := request.app[STATE].settings.worker:
        headers[WORKER_HEADER] = worker
    return headers

"""What the miner's handlers and background loops share: one ``MinerState`` per app."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import aiohttp
from aiohttp import web

from engine import Engine
from miner.admission import Admission
from miner.auth import Gatekeeper
from miner.config import MinerConfig
from miner.metrics import MinerMetrics
from protocol.commitment import ModelDeclaration


@dataclass
class MinerState:
    """Everything the handlers share; one per app."""

    config: MinerConfig
    hotkey: str
    declaration: ModelDeclaration
    gate: Gatekeeper
    admission: Admission
    engine: Engine
    metrics: MinerMetrics
    session: Optional[aiohttp.ClientSession] = None  # the engine's client, made with the app (``http``)
    uid: Optional[int] = None

    @property
    def http(self) -> aiohttp.ClientSession:
        """The client session to the engine; RuntimeError before the app has started."""
        if self.session is None:
            raise RuntimeError("the miner's client session is made when its app starts")
        return self.session


STATE = web.AppKey("state", MinerState)

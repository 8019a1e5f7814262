"""What the miner's handlers and background loops share: one ``MinerState`` per app."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import aiohttp
from aiohttp import web

from miner.admission import Admission
from miner.auth import Gatekeeper
from miner.config import MinerConfig
from engine import Engine
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
    session: Optional[aiohttp.ClientSession] = None
    uid: Optional[int] = None


STATE = web.AppKey("state", MinerState)

"""The only code that talks to a chain: connect, read the metagraph, write through the SDK."""

from .client import Chain, connect, parse_network
from .config import ChainConfig
from .errors import ChainLayerError, InvalidWeights, NetworkError, NotRegistered, RateLimited, WriteFailed
from .presence import announce
from .views import MetagraphView, NeuronView
from .writes import WriteResult

__all__ = [
    "Chain",
    "ChainConfig",
    "ChainLayerError",
    "InvalidWeights",
    "MetagraphView",
    "NetworkError",
    "NeuronView",
    "NotRegistered",
    "RateLimited",
    "WriteFailed",
    "WriteResult",
    "announce",
    "connect",
    "parse_network",
]

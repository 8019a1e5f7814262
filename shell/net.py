"""Loopback networking every process needs: a free port for a server it is about to start."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A free TCP port on loopback (for an engine behind a miner or validator, a test's or a bench's server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

"""Loopback networking every process needs: a free port for a server it is about to start."""

from __future__ import annotations

import socket
import threading

_given: set[int] = set()
_lock = threading.Lock()


def free_port() -> int:
    """A free TCP port on loopback (for an engine behind a miner or validator, a test's or a bench's server),
    never one this process handed out before: the kernel may give a port it just freed to the next caller,
    and two servers started from one process then race for it (seen: two test miners on one port, the second
    answering the first one's callers with "signed for a different receiving hotkey")."""
    with _lock:
        while True:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in _given:
                _given.add(port)
                return port

"""What every long-running role (miner, validator, gateway) does the same way, once: the start-up error, the
registration check at start, stopping on signals, supervised background tasks, chain calls
retried while the chain is unreachable, the aiohttp app pattern, and who may scrape metrics.

A role that cannot start raises ``StartupError`` with what to do; ``neurons.common.run_service``
prints it and exits 2.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import signal
from typing import Awaitable, Callable, TypeVar

from aiohttp import web
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

import chain

log = logging.getLogger(__name__)

CHAIN_ATTEMPTS = 5
T = TypeVar("T")


class StartupError(Exception):
    """A role cannot start; the message says what to do."""


def may_scrape(request: web.Request, token: str | None) -> bool:
    """Whether ``request`` may read the role's Prometheus ``/metrics``: with a token set (``--metrics-token``),
    whoever sends ``Authorization: Bearer TOKEN``; without one, a scraper on this host (loopback) only. A
    role's figures (its miners, its users' traffic) are not the world's to read; a request a proxy on this host
    forwards is not this host's."""
    if token:
        sent = request.headers.get("Authorization", "").removeprefix("Bearer ")
        return hmac.compare_digest(sent.encode(), token.encode())
    if "X-Forwarded-For" in request.headers or "Forwarded" in request.headers:  # a proxy on this host, for someone elsewhere
        return False
    try:
        return ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:  # a unix socket, or no peer address: not a remote scraper
        return request.remote is None


async def require_registered(net: chain.Chain, netuid: int, hotkey: str, fix: str) -> int:
    """The hotkey's uid on the subnet; StartupError (with ``fix``, what the operator must do) when it is not registered."""
    try:
        return await net.uid_of(netuid, hotkey)
    except chain.NotRegistered as exc:
        raise StartupError(f"{exc}; {fix}") from exc


def stop_on_signals(stop: asyncio.Event | None = None) -> asyncio.Event:
    """``stop`` (a new event when None), set by SIGINT or SIGTERM."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def on_chain(what: str, call: Callable[[], Awaitable[T]], attempts: int = CHAIN_ATTEMPTS) -> T:
    """``call()``, retried with exponential backoff (0.5 s doubling, 15 s at most) while the chain
    is unreachable; the last NetworkError is raised when every attempt failed."""
    retrying = AsyncRetrying(
        retry=retry_if_exception_type(chain.NetworkError),
        wait=wait_exponential(multiplier=0.5, max=15),
        stop=stop_after_attempt(attempts),
        reraise=True,
        before_sleep=lambda state: log.warning(
            "%s failed (%s), attempt %s of %s; retrying", what, state.outcome.exception() if state.outcome else None, state.attempt_number, attempts
        ),
    )
    async for attempt in retrying:
        with attempt:
            return await call()
    raise AssertionError("unreachable: tenacity reraises")


async def supervise(name: str, run: Callable[[], Awaitable[None]], restart_after: float = 1.0) -> None:
    """Run a background task for good: when it dies (or returns), log it and start it again."""
    while True:
        try:
            await run()
            log.error("%s stopped; restarting it", name)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s died; restarting it", name)
        await asyncio.sleep(restart_after)


async def serve(app: web.Application, host: str, port: int, reuse_port: bool = False, cancel_on_hang_up: bool = False) -> web.AppRunner:
    """Start ``app`` on ``host:port`` (no access log: each role logs its own requests); clean up the returned runner to stop it.
    ``cancel_on_hang_up``: a handler whose caller closed the connection is cancelled at once (aiohttp's
    ``handler_cancellation``), not when it next writes."""
    runner = web.AppRunner(app, access_log=None, handler_cancellation=cancel_on_hang_up)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_port=reuse_port).start()
    return runner

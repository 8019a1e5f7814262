"""The validator's loop survives: chain calls retried with backoff, background tasks restarted."""

from __future__ import annotations

import asyncio

import pytest

import chain
from shell.role import on_chain, supervise


async def test_a_chain_call_is_retried_while_the_chain_is_unreachable_and_then_succeeds():
    calls = []

    async def flaky_read() -> int:
        calls.append(asyncio.get_running_loop().time())
        if len(calls) < 3:
            raise chain.NetworkError("connection refused")
        return 42

    assert await on_chain("reading the block", flaky_read) == 42
    assert len(calls) == 3 and calls[2] - calls[1] > calls[1] - calls[0] > 0.4  # backoff: 0.5 s, then 1 s


async def test_a_chain_that_stays_down_raises_after_the_last_attempt_and_other_errors_are_not_retried():
    attempts = 0

    async def down() -> None:
        nonlocal attempts
        attempts += 1
        raise chain.NetworkError("still down")

    with pytest.raises(chain.NetworkError):
        await on_chain("setting weights", down, attempts=2)
    assert attempts == 2

    async def refused() -> None:
        raise chain.WriteFailed("SettingWeightsTooFast")

    with pytest.raises(chain.WriteFailed):
        await on_chain("setting weights", refused)


async def test_a_background_task_that_dies_is_started_again_at_once():
    runs = 0
    restarted = asyncio.Event()

    async def dies_twice() -> None:
        nonlocal runs
        runs += 1
        if runs <= 2:
            raise RuntimeError("engine supervisor bug")
        restarted.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(supervise("engine", dies_twice, restart_after=0.01))
    await asyncio.wait_for(restarted.wait(), 5)
    assert runs == 3 and not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

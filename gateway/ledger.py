"""The gateway's ledger writes, off the event loop: one writer thread, one transaction per batch.

A request's rows (opened at admission, its tokens while it streams, closed at its end), the
miners' refusals, failures and health checks, and the organic samples are handed to a queue in constant
time; one thread with its own SQLite connection writes whatever is waiting in one
transaction, then the next batch. A slow disk, a full one or another worker's write holds
that thread, never a stream. A clean stop (SIGTERM, Ctrl-C) commits everything queued
before the process ends; a crash (SIGKILL) loses what was queued and not yet committed:
a batch is written 5 ms after its first write arrives (``LINGER_S``), so that is what arrived
in the last 5 ms and one commit (about a millisecond here); the request rows a killed
gateway left open are marked ``interrupted`` at the next start, as before.

A reader that must see its own process's writes (``/v1/key``, the validator's hand-over
calls) awaits ``synced()`` first: everything queued before it is committed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any

from gateway.store import Store
from protocol.records import AnswerRecord

log = logging.getLogger(__name__)

MAX_BATCH = 512  # writes a transaction at most: a commit stays short under any backlog
# How long the writer waits after a write arrives for more to join its transaction. A commit is ~40
# system calls here (WAL pages, locks) and the writer's turns at the GIL cost the event loop a futex
# each: a request's open and close, and its neighbours', in one commit (measured: docs/gateway.md).
LINGER_S = 0.005
STOP = object()


class Ledger:
    """``Store``'s writes, queued from the event loop and written by one thread (see the module)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.written = 0  # writes committed
        self.lost = 0  # writes the database refused (logged one by one)
        self.thread = threading.Thread(target=self._run, name="slmnet-ledger", daemon=True)
        self.thread.start()

    # what the handlers call: each returns at once

    def open_request(self, request_id: str, key_id: int, model: str, prompt_tokens: int) -> None:
        self.queue.put(("open_request", (request_id, key_id, model, prompt_tokens, time.time())))

    def progress(self, request_id: str, completion_tokens: int) -> None:
        self.queue.put(("progress", (request_id, completion_tokens)))

    def close_request(self, request_id: str, status: str, completion_tokens: int, failovers: int, parts: list[tuple[int, str, int]]) -> None:
        self.queue.put(("close_request", (request_id, status, completion_tokens, failovers, parts)))

    def count_service(self, hotkey: str, kind: str) -> None:
        self.queue.put(("count_service", (hotkey, kind)))

    def count_health(self, checks: dict[str, bool]) -> None:
        self.queue.put(("count_health", (checks,)))

    def record_sample(self, uid: int, hotkey: str, model: str, request: dict[str, Any], answer: AnswerRecord, replayable: bool = False) -> None:
        self.queue.put(("record_sample", (uid, hotkey, model, request, answer, replayable)))

    def prune(self, keep_s: float, samples_keep_s: float) -> None:
        """The retention rule (``Store.prune``), applied in the writer's turn like any write."""
        self.queue.put(("prune", (time.time(), keep_s, samples_keep_s)))

    async def synced(self) -> None:
        """Returns once every write queued before the call is committed (or refused)."""
        marker: concurrent.futures.Future = concurrent.futures.Future()
        self.queue.put(marker)
        await asyncio.wrap_future(marker)

    def close(self) -> None:
        """Commit everything queued, then stop the thread (a clean stop loses nothing)."""
        self.queue.put(STOP)
        self.thread.join()

    # the writer thread

    def _run(self) -> None:
        store = Store(self.path)
        try:
            while True:
                batch = [self.queue.get()]
                time.sleep(LINGER_S)  # what arrives meanwhile shares the transaction
                while len(batch) < MAX_BATCH:
                    try:
                        batch.append(self.queue.get_nowait())
                    except queue.Empty:
                        break
                writes = [item for item in batch if isinstance(item, tuple)]
                if writes:
                    self._write(store, writes)
                for item in batch:
                    if isinstance(item, concurrent.futures.Future):
                        item.set_result(None)
                if STOP in batch:
                    return
        finally:
            store.close()

    def _write(self, store: Store, writes: list[tuple[str, tuple]]) -> None:
        try:
            with store.transaction():
                for name, args in coalesced(writes):
                    getattr(store, name)(*args)
            self.written += len(writes)
            return
        except Exception as exc:  # the thread must outlive any write: every later one, and synced(), depend on it
            log.warning("ledger batch of %s writes refused (%s); writing them one by one", len(writes), exc)
        for name, args in writes:  # one bad write (or a full disk for a moment) must not take the others with it
            try:
                with store.transaction():
                    getattr(store, name)(*args)
                self.written += 1
            except Exception as exc:
                self.lost += 1
                log.error("ledger write %s%s lost: %s", name, args[:2], exc)


def coalesced(writes: list[tuple[str, tuple]]) -> list[tuple[str, tuple]]:
    """``writes`` with each request opened and closed in the same batch written as one row, whole, where it
    closed (its progress dropped): one statement instead of three, in the transaction that held all of them.
    A request still open at the batch's end keeps its open row: a crash then leaves what it must charge."""
    opens = {args[0]: args for name, args in writes if name == "open_request"}
    whole = {args[0] for name, args in writes if name == "close_request" and args[0] in opens}
    if not whole:
        return writes
    out = []
    for name, args in writes:
        if name in ("open_request", "progress") and args[0] in whole:
            continue
        if name == "close_request" and args[0] in whole:
            out.append(("record_request", (*opens[args[0]], *args[1:])))
        else:
            out.append((name, args))
    return out

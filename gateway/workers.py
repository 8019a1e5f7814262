"""``slmnet gateway --workers N``: N gateway processes on one port (SO_REUSEPORT: the kernel
spreads connections), their per-key windows and quotas in Redis, supervised here.

The parent recovers the ledger once, starts the workers, restarts one that dies (after a
second), and stops them all on SIGINT/SIGTERM. A worker that cannot start (wrong model
list, unregistered hotkey, the port taken) exits with STARTUP_FAILED: the parent then
stops every worker and reports it, instead of restarting into the same failure.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing
import signal
import sys
import time

from gateway.service import GatewayConfig, recover_ledger, run_gateway
from gateway.store import Store
from shell.role import StartupError

log = logging.getLogger(__name__)
STARTUP_FAILED = 3
RESTART_AFTER_S = 1.0


class WorkersFailed(Exception):
    """A worker could not start; its reason is in the log above."""


def _worker(config: GatewayConfig, level: int, index: int) -> None:
    logging.basicConfig(level=level, format=f"%(asctime)s %(levelname)s %(name)s[w{index}]: %(message)s")
    import uvloop

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(run_gateway(config))
    except (StartupError, OSError) as exc:
        log.error("worker %s cannot start: %s", index, exc)
        sys.exit(STARTUP_FAILED)


def run_workers(config: GatewayConfig) -> None:
    store = Store(config.db)
    recover_ledger(store)
    store.close()
    spawn = multiprocessing.get_context("spawn")
    level = logging.getLogger().getEffectiveLevel()
    stopping = {"signal": None}

    def on_signal(signum, frame) -> None:
        stopping["signal"] = signum

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    def start(index: int):
        named = dataclasses.replace(config, settings=dataclasses.replace(config.settings, worker=f"w{index}"))
        worker = spawn.Process(target=_worker, args=(named, level, index), name=f"slmnet-gateway-w{index}")
        worker.start()
        return worker

    workers = [start(i) for i in range(config.workers)]
    log.info("gateway: %s workers on %s:%s (pids %s)", config.workers, config.host, config.port, [w.pid for w in workers])
    try:
        while stopping["signal"] is None:
            time.sleep(0.5)
            for i, worker in enumerate(workers):
                if worker.exitcode is None:
                    continue
                if worker.exitcode == STARTUP_FAILED:
                    raise WorkersFailed(f"gateway worker {i} could not start (see its error above)")
                log.error("gateway worker %s (pid %s) exited with %s; restarting it", i, worker.pid, worker.exitcode)
                time.sleep(RESTART_AFTER_S)
                workers[i] = start(i)
    finally:
        for worker in workers:
            if worker.exitcode is None:
                worker.terminate()  # SIGTERM: each worker stops its server and closes its store
        for worker in workers:
            worker.join(timeout=30)
            if worker.exitcode is None:
                worker.kill()
                worker.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)

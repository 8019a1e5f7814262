"""What the SDK and the localnet node add on top of the chain's state transition.

Measures, in one run on one fresh localnet: a chain write (serve_axon) through the full
SDK path (intent → plan → sign → node checks → dispatch) against the bare dispatch of
the same call in a transaction (the reference); and a metagraph read through the SDK
against the bare runtime-API read. Prints a table; ``--json`` ends with one JSON object.

    python -m bench.localnet_ops [--neurons 64] [--ops 200] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import bittensor as bt

import chain
from chain.localnet import admin, reads, registry, runtime, store


def _ms(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1e3, ordered[int(0.99 * (len(ordered) - 1))] * 1e3


async def run(neurons: int, ops: int, workdir: Path) -> dict:
    admin.init(workdir / "chain", tempo=1_000_000, block_time=0.25)
    directory = workdir / "chain"
    wallets = []
    async with chain.connect(f"localnet:{directory}") as c:
        for i in range(neurons):
            w = bt.wallets.create(f"n{i}", "default", path=str(workdir / "w"), use_password=False, on_mnemonic=lambda *_: None)
            admin.fund(directory, w.coldkeypub.ss58_address, 10)
            (await c.register(w, 1)).raise_for_failure()
            wallets.append(w)

        sdk_write = []
        for i in range(ops):
            t = time.perf_counter()
            (await c.serve(wallets[i % neurons], 1, "127.0.0.1", 10_000 + i)).raise_for_failure()
            sdk_write.append(time.perf_counter() - t)

        sdk_read = []
        for _ in range(ops):
            t = time.perf_counter()
            await c.metagraph(1)
            sdk_read.append(time.perf_counter() - t)

    conn = store.connect(directory)
    hotkey = wallets[0].hotkey.ss58_address
    bare_write, bare_read = [], []
    for i in range(ops):
        params = {"netuid": 1, "version": 1, "ip": 0x7F000001, "port": 20_000 + i, "ip_type": 4, "protocol": 4}
        t = time.perf_counter()
        with store.write(conn):
            registry.serve_axon(runtime.Context(conn, 1, []), hotkey, params)
        bare_write.append(time.perf_counter() - t)
    for _ in range(ops):
        t = time.perf_counter()
        with store.snapshot(conn):
            reads.runtime_call(conn, 1, "SubnetInfoRuntimeApi", "get_metagraph", [1])
        bare_read.append(time.perf_counter() - t)
    conn.close()

    figures = {"neurons": neurons, "ops": ops}
    for name, sdk, bare in (("write", sdk_write, bare_write), ("metagraph", sdk_read, bare_read)):
        (sdk_p50, sdk_p99), (bare_p50, bare_p99) = _ms(sdk), _ms(bare)
        figures.update(
            {
                f"{name}_sdk_p50_ms": sdk_p50,
                f"{name}_sdk_p99_ms": sdk_p99,
                f"{name}_bare_p50_ms": bare_p50,
                f"{name}_bare_p99_ms": bare_p99,
                f"{name}_sdk_over_bare_ratio": sdk_p50 / bare_p50,
            }
        )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neurons", type=int, default=64)
    parser.add_argument("--ops", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        figures = asyncio.run(run(args.neurons, args.ops, Path(tmp)))
    print(f"localnet, {figures['neurons']} neurons, {figures['ops']} operations each")
    print(f"{'operation':<12}{'SDK p50 ms':>12}{'SDK p99 ms':>12}{'bare p50 ms':>13}{'bare p99 ms':>13}{'ratio':>8}")
    for name in ("write", "metagraph"):
        f = {k.removeprefix(name + "_"): v for k, v in figures.items() if k.startswith(name + "_")}
        print(f"{name:<12}{f['sdk_p50_ms']:>12.2f}{f['sdk_p99_ms']:>12.2f}{f['bare_p50_ms']:>13.2f}{f['bare_p99_ms']:>13.2f}{f['sdk_over_bare_ratio']:>8.1f}")
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()

"""What the gateway tells users of its own cost is true, and a clean stop keeps every ledger row.

The bench's processes (``bench.gateway_overhead``): its stand-in miner, which stamps when each
request arrives, and the real gateway app in front of it. Every process here reads one
monotonic clock, so the time from a user sending a request to the miner receiving it is
measured outside the gateway; ``x-slmnet-overhead-ms`` (the gateway's own time before it asks
a miner) can never exceed it if it is true. No speed is asserted: that is the bench's.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import sqlite3
import time
import urllib.request

from bench.gateway_overhead import MODEL, serve_gateway, serve_upstream, wait_ready
from gateway.store import Store
from models.tiny import build_tiny
from shell.net import free_port

REQUESTS = 40


def test_the_overhead_header_never_exceeds_the_time_from_the_user_to_the_miner_and_a_clean_stop_keeps_every_row(tmp_path):
    build_tiny(tmp_path / "tiny", seed=0)
    db = tmp_path / "gateway.sqlite"
    key, _ = Store(db).create_key("overhead", rpm=10**6, tpm=10**9, quota_tokens=10**9)
    upstream_port, gateway_port = free_port(), free_port()
    spawn = multiprocessing.get_context("spawn")
    upstream = spawn.Process(target=serve_upstream, args=(upstream_port, str(tmp_path / "tiny")), daemon=True)
    gateway = spawn.Process(target=serve_gateway, args=(gateway_port, f"http://127.0.0.1:{upstream_port}", str(db), str(tmp_path / "tiny")), daemon=True)
    for process in (upstream, gateway):
        process.start()
    try:
        wait_ready(f"http://127.0.0.1:{upstream_port}/health", upstream)
        wait_ready(f"http://127.0.0.1:{gateway_port}/health", gateway)
        connection = http.client.HTTPConnection("127.0.0.1", gateway_port, timeout=30)
        sent, told = [], []
        for i in range(REQUESTS):
            body = {"model": MODEL, "messages": [{"role": "user", "content": f"Question {i}?"}], "max_tokens": 16, "stream": i % 2 == 1}
            sent.append(time.monotonic())
            connection.request("POST", "/v1/chat/completions", json.dumps(body), {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            assert response.status == 200
            told.append(float(response.headers["x-slmnet-overhead-ms"]) / 1000)
        with urllib.request.urlopen(f"http://127.0.0.1:{upstream_port}/arrivals", timeout=10) as answer:
            arrived = json.loads(answer.read())
    finally:
        gateway.terminate()  # SIGTERM: the app stops cleanly, its ledger writer commits what it holds
        gateway.join(timeout=60)
        upstream.terminate()
        upstream.join(timeout=60)
    assert gateway.exitcode == 0
    assert len(arrived) == REQUESTS
    for overhead, start, arrival in zip(told, sent, arrived):
        assert 0 < overhead <= arrival - start, (overhead, arrival - start)
    rows = sqlite3.connect(db).execute("SELECT status, COUNT(*) FROM usage GROUP BY status").fetchall()
    assert rows == [("ok", REQUESTS)]

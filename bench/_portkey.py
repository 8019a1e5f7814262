"""Portkey's open-source gateway, for `bench/gateway_overhead.py --vs portkey`: installed only when
asked, from npm into its own folder, and started in front of the same stand-in upstream as an
OpenAI-compatible provider at a custom host (its headless mode: no console UI, no logs store)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench._common import start_peer

VERSION = "1.15.2"


def ensure_installed() -> Path:
    """The gateway's start script, in ~/.cache/slmnet/bench/portkey-VERSION (made once, ~30 s)."""
    if shutil.which("node") is None:
        raise SystemExit("--vs portkey needs Node.js (apt-get install nodejs npm)")
    folder = Path(os.environ.get("SLMNET_CACHE", Path.home() / ".cache" / "slmnet")) / "bench" / f"portkey-{VERSION}"
    script = folder / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
    if not script.exists():
        print(f"installing @portkey-ai/gateway@{VERSION} into {folder} (once)", file=sys.stderr)
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(folder), f"@portkey-ai/gateway@{VERSION}"], check=True)
    return script


def headers(upstream_url: str) -> dict[str, str]:
    """What routes a request through Portkey to the upstream, as its docs say for a self-hosted OpenAI-compatible model."""
    return {"x-portkey-provider": "openai", "x-portkey-custom-host": f"{upstream_url}/v1", "Authorization": "Bearer none"}


def start(port: int, tmp: Path) -> subprocess.Popen:
    return start_peer("Portkey's gateway", ["node", str(ensure_installed()), f"--port={port}", "--headless"], port, tmp / "portkey.log", 60, "/")

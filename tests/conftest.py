import os
from dataclasses import dataclass
from typing import Iterator

import pytest
from hypothesis import settings

from tests.harness.localnet import Localnet, make_localnet

# No per-example deadline: on a 2-core machine with engines running beside the tests, an example
# took 274 ms once against the default 200 ms. What these tests check is behaviour; speed is bench/'s.
settings.register_profile("slmnet", deadline=None)
settings.load_profile("slmnet")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """The SDK writes caches under ~/.bittensor; keep every test's HOME private."""
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))


@pytest.fixture(scope="session", autouse=True)
def _shared_model_cache(tmp_path_factory):
    """One model cache a session (``$SLMNET_CACHE``, which child processes inherit): the one `make test`
    prepared the real models in before the tests (``make models``), else a fresh one where each is
    prepared once (SmolLM2 ~40 s, Gemma ~95 s), whether `slmnet up` or the prepare test needs it first."""
    with pytest.MonkeyPatch.context() as patch:
        if not os.environ.get("SLMNET_CACHE"):
            patch.setenv("SLMNET_CACHE", str(tmp_path_factory.mktemp("slmnet-cache")))
        yield


@pytest.fixture
def localnet(tmp_path) -> Localnet:
    return make_localnet(tmp_path)


@dataclass(frozen=True)
class TinyEngine:
    url: str  # a vLLM engine serving as slmnet/tiny-qwen2-s0


@pytest.fixture(scope="session")
def _engines(tmp_path_factory) -> Iterator[dict[str, TinyEngine]]:
    """The session's two shared engines, started side by side (an engine's start is mostly three
    single-threaded imports of vLLM: two start on 2 cores in little more than one's time):

    - ``honest``: the tiny seed-0 model as slmnet/tiny-qwen2-s0, for every module that only asks it questions;
    - ``noisy``: a cheaper copy of it (weights + 1e-2 × std noise) under its name: what a cheating miner runs.

    Modules that kill or change an engine start their own."""
    from models.tiny import build_tiny
    from tests.harness.adversary import perturbed_copy
    from tests.harness.processes import start_vllm, warm_engine

    tmp = tmp_path_factory.mktemp("engines")
    build_tiny(tmp / "s0", seed=0)
    perturbed_copy(tmp / "s0", tmp / "s0-noise", "noise", 1e-2)
    folders = {"honest": tmp / "s0", "noisy": tmp / "s0-noise"}
    servers = {}
    try:
        for name, folder in folders.items():
            servers[name] = start_vllm(folder, "slmnet/tiny-qwen2-s0", tmp)
        for server in servers.values():
            server.wait_healthy()
            warm_engine(server.url, "slmnet/tiny-qwen2-s0")
        yield {name: TinyEngine(server.url) for name, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture(scope="session")
def tiny_engine(_engines) -> TinyEngine:
    return _engines["honest"]


@pytest.fixture(scope="session")
def noisy_engine(_engines) -> TinyEngine:
    return _engines["noisy"]


# What the reliability tests measured (``figure`` fixture), printed as one table at the end of
# the run: `make soak` and `make test` both end with it; docs/reliability.md collects them.
FIGURES: list[tuple[str, str, str]] = []


@pytest.fixture
def figure(request):
    """``figure(what, value)``: one row of the run's reliability table, under this test's name."""

    def record(what: str, value: str) -> None:
        FIGURES.append((request.node.name, what, value))

    return record


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("reliability figures")
        terminalreporter.write_line("| test | what | figure |")
        terminalreporter.write_line("|---|---|---|")
        for test, what, value in FIGURES:
            terminalreporter.write_line(f"| {test} | {what} | {value} |")

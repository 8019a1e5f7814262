import pytest

from tests.harness.localnet import Localnet, make_localnet


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """The SDK writes caches under ~/.bittensor; keep every test's HOME private."""
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))


@pytest.fixture
def localnet(tmp_path) -> Localnet:
    return make_localnet(tmp_path)

"""Which networks `connect` accepts, and how an unusable one fails."""

from pathlib import Path

import pytest

import chain


@pytest.mark.parametrize("network", ["finney", "test", "local", "ws://10.0.0.1:9944", "wss://example.invalid:443"])
def test_sdk_networks_are_accepted(network):
    label, folder = chain.parse_network(network)
    assert label == network and folder is None


def test_localnet_takes_a_folder():
    assert chain.parse_network("localnet:/srv/chain") == ("local", Path("/srv/chain"))


@pytest.mark.parametrize("network", ["mainnet", "localnet:", "http://127.0.0.1:9944", ""])
def test_unknown_networks_are_refused_with_the_accepted_forms(network):
    with pytest.raises(chain.NetworkError, match="finney, test, local|needs a folder"):
        chain.parse_network(network)


async def test_unreachable_endpoint_is_a_network_error():
    with pytest.raises(chain.NetworkError, match="cannot connect"):
        async with chain.connect("ws://127.0.0.1:1"):
            pass


async def test_missing_localnet_is_a_network_error(tmp_path):
    with pytest.raises(chain.NetworkError, match="slmnet localnet init"):
        async with chain.connect(f"localnet:{tmp_path / 'none'}"):
            pass

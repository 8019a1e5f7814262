"""schemathesis against the real `slmnet miner` and `slmnet gateway`, from the documents they serve.

Each server publishes ``GET /openapi.json`` (``protocol.openapi``, built from the wire
models); schemathesis generates from that document valid and invalid requests for
every operation: bodies, path parameters, headers. The miner's are btauth/1-signed by a
staked hotkey (after serialization, so the signature covers the bytes sent), the gateway's
carry an API key. Every answer must be a 2xx, or a 4xx whose body is the OpenAI error
object; never a 5xx, and never slower than the timeout. The miner sits in front of the
shared tiny engine and the gateway in front of that miner, so valid requests are really
served. The short runs are derandomized (the same cases every run); ``make soak`` runs
the long random ones.
"""

from __future__ import annotations

from collections import Counter

import bittensor as bt
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from pydantic import ValidationError
from schemathesis.config import SchemathesisConfig

from gateway.views import openapi_spec as gateway_spec
from miner.server import openapi_spec as miner_spec
from models.tiny import build_tiny
from protocol.errors import ErrorBody
from tests.harness.localnet import make_localnet
from tests.harness.processes import create_key, start_gateway, start_miners

pytestmark = pytest.mark.slow
MODEL = "slmnet/tiny-qwen2-s0"
TIMEOUT_S = 60  # a hang is a failure: the longest valid request here takes a few seconds
# 20 derandomized cases an operation in `make test` (the same ones every run; 30 took 100 s of its 25 minutes), 400 random ones in `make soak`.
SHORT = settings(max_examples=20, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
LONG = settings(max_examples=400, deadline=None, database=None, suppress_health_check=list(HealthCheck))


class BtAuth(requests.auth.AuthBase):
    """btauth/1 headers for the request exactly as it is about to be sent."""

    def __init__(self, keypair, receiver: str):
        self.keypair, self.receiver = keypair, receiver

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        body = request.body or b""
        body = body.encode() if isinstance(body, str) else body
        request.headers.update(bt.http_auth.sign(self.keypair, method=request.method, path=request.path_url, body=body, receiver_ss58=self.receiver))
        return request


@schemathesis.check
def openai_error_body(ctx, response, case) -> None:
    """Every refusal is the OpenAI error object, whatever the request was."""
    if response.status_code >= 400:
        try:
            ErrorBody.model_validate_json(response.content)
        except ValidationError as exc:
            raise AssertionError(f"{response.status_code} without an OpenAI error body: {response.content[:200]!r}") from exc


CHECKS = [schemathesis.checks.not_a_server_error, openai_error_body]


@pytest.fixture(scope="module")
def subnet(tmp_path_factory, tiny_engine):
    tmp = tmp_path_factory.mktemp("fuzz")
    build_tiny(tmp / "tiny", seed=0)
    net = make_localnet(tmp)
    wallets, _ = net.register(("miner", "gateway"))
    net.stake(wallets["gateway"], 2000)
    servers = []
    try:
        miner = start_miners(net, {"miner": tiny_engine.url}, tmp / "tiny", tmp, servers)["miner"]
        db = tmp / "gateway.sqlite"
        key = create_key(db, "fuzz")
        servers.append(gateway := start_gateway(net, "gateway", db, f"{MODEL}={tmp / 'tiny'}", tmp))
        yield {"miner": miner, "gateway": gateway, "key": key, "auth": BtAuth(wallets["gateway"].hotkey, wallets["miner"].hotkey.ss58_address)}
    finally:
        for server in reversed(servers):
            server.stop()
    for server in servers:  # a crash the answers did not show (a worker that died) shows in the log
        assert "Traceback" not in server.log_tail(200_000), server.log_tail()


# The documents the servers below serve (the first test checks they do). Built here, not read
# from the servers, because schemathesis' lazy fixture loader does not run under pytest 9.
# The short runs leave out schemathesis' coverage phase (every boundary case the schema
# defines: some 2000 requests a server, minutes here); the long runs have every phase.
SHORT_PHASES = SchemathesisConfig.from_dict({"phases": {"coverage": {"enabled": False}}})
miner_api = schemathesis.openapi.from_dict(miner_spec(MODEL), config=SHORT_PHASES)
gateway_api = schemathesis.openapi.from_dict(gateway_spec([MODEL]), config=SHORT_PHASES)
miner_api_long = schemathesis.openapi.from_dict(miner_spec(MODEL))
gateway_api_long = schemathesis.openapi.from_dict(gateway_spec([MODEL]))


def test_each_server_documents_its_routes_and_the_model_it_serves(subnet):
    miner = requests.get(subnet["miner"].url + "/openapi.json", timeout=10).json()
    gateway = requests.get(subnet["gateway"].url + "/openapi.json", timeout=10).json()
    assert miner == miner_spec(MODEL) and gateway == gateway_spec([MODEL])
    assert set(miner["paths"]) == {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health"}
    assert set(gateway["paths"]) == {"/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/models/{model}", "/v1/key", "/api/quality", "/health"}
    chat = miner["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert chat["model"]["enum"] == [MODEL] and chat["temperature"]["anyOf"][0] == {"maximum": 2, "minimum": 0, "type": "number"}
    assert gateway["components"]["schemas"]["CompletionRequest"]["properties"]["model"]["enum"] == [MODEL, "auto", "auto:fast", "auto:best"]
    assert set(miner["components"]["securitySchemes"]) == {"version", "hotkey", "nonce", "signature", "receiver"}
    # aiohttp's own refusals are OpenAI errors too
    for url in (subnet["miner"].url, subnet["gateway"].url):
        missing, wrong = requests.get(url + "/v2/nothing", timeout=10), requests.delete(url + "/v1/completions", timeout=10)
        assert (missing.status_code, missing.json()["error"]["code"]) == (404, "unknown_path")
        assert (wrong.status_code, wrong.json()["error"]["code"]) == (405, "method_not_allowed") and "POST" in wrong.headers["Allow"]


STATUSES: dict[str, Counter] = {"miner": Counter(), "gateway": Counter()}  # what the generated requests got, for the figures


def _fuzz_miner(case, subnet) -> None:
    response = case.call(base_url=subnet["miner"].url, auth=subnet["auth"], timeout=TIMEOUT_S)
    STATUSES["miner"][response.status_code] += 1
    case.validate_response(response, checks=CHECKS)


def _fuzz_gateway(case, subnet) -> None:
    response = case.call(base_url=subnet["gateway"].url, headers={"Authorization": f"Bearer {subnet['key']}"}, timeout=TIMEOUT_S)
    STATUSES["gateway"][response.status_code] += 1
    case.validate_response(response, checks=CHECKS)


@miner_api.parametrize()
@SHORT
def test_the_miner_answers_every_generated_request_with_a_2xx_or_an_openai_4xx(case, subnet):
    _fuzz_miner(case, subnet)


@gateway_api.parametrize()
@SHORT
def test_the_gateway_answers_every_generated_request_with_a_2xx_or_an_openai_4xx(case, subnet):
    _fuzz_gateway(case, subnet)


@pytest.mark.soak
@miner_api_long.parametrize()
@LONG
def test_the_miner_under_a_long_random_fuzz(case, subnet):
    _fuzz_miner(case, subnet)


@pytest.mark.soak
@gateway_api_long.parametrize()
@LONG
def test_the_gateway_under_a_long_random_fuzz(case, subnet):
    _fuzz_gateway(case, subnet)


def test_the_fuzzed_requests_reached_every_kind_of_answer(figure):
    """Runs after the fuzz tests above: they sent requests that were served and ones that were refused."""
    for server, statuses in STATUSES.items():
        if statuses:
            figure(f"schemathesis on the {server}", f"{sum(statuses.values())} requests: " + ", ".join(f"{n}× {s}" for s, n in sorted(statuses.items())))
    for server, statuses in STATUSES.items():  # every server was fuzzed: this test runs after the fuzz tests, in the same session
        assert statuses, f"no fuzzed request reached the {server}: run this test with the fuzz tests above"
        assert any(200 <= s < 300 for s in statuses) and any(400 <= s < 500 for s in statuses), (server, statuses)

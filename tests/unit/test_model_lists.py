"""The subnet's model lists, the hash the owner publishes, and slmnet's version key."""

from __future__ import annotations

import json

import pytest

from models import subnet
from protocol.version import VERSION_KEY, __version__, version_key


def test_the_public_lists_pay_only_real_hub_models_and_the_localnet_keeps_the_test_models():
    for network in ("finney", "test"):
        models = subnet.load(subnet.for_network(network))
        assert models.models and all(m.from_hub and "/" in m.id and not m.id.startswith("slmnet/") for m in models.models)
        assert all(m.end_token_ids and m.max_context >= 2048 for m in models.models)
    local = subnet.load(subnet.for_network("localnet:/somewhere"))
    assert {m.id for m in local.models} == {"slmnet/SmolLM2-135M-Instruct-Q4_1", "slmnet/gemma-3-270m-Q4_K_M", "slmnet/tiny-qwen2-s0"} and not local.unpinned()
    assert subnet.for_network("ws://127.0.0.1:9944") == subnet.for_network("local") == subnet.DEFAULT_LIST


def test_a_hub_model_without_revision_or_weights_hash_is_unpinned():
    finney = subnet.load(subnet.for_network("finney"))
    assert finney.unpinned() == [m.id for m in finney.models]  # nothing on this machine can reach the hub to pin them


def test_the_published_hash_changes_with_any_meaningful_edit_and_not_with_layout(tmp_path):
    raw = json.loads(subnet.DEFAULT_LIST.read_text())
    same = tmp_path / "same.json"
    same.write_text(json.dumps(raw, indent=4))  # other whitespace, same content
    assert subnet.load(same).digest == subnet.load(subnet.DEFAULT_LIST).digest
    raw["models"][1]["reward"] = 1.0
    edited = tmp_path / "edited.json"
    edited.write_text(subnet.dump(raw))
    assert subnet.load(edited).digest != subnet.load(subnet.DEFAULT_LIST).digest
    assert json.loads(subnet.dump(raw)) == raw  # the repo's layout is the same JSON


def test_a_list_checks_against_the_owners_commitment():
    models = subnet.load(subnet.DEFAULT_LIST)
    assert subnet.parse_published(models.commitment) == subnet.Published(models.version, models.digest)
    assert subnet.check_published(models, subnet.parse_published(models.commitment), "localnet:x") is None
    assert "published no model list" in subnet.check_published(models, None, "localnet:x")
    for junk in (None, "", '{"model": "x"}', "slmnet-models:3:abc", "slmnet-models:v3:" + "0" * 64):
        assert subnet.parse_published(junk) is None
    other = subnet.Published(models.version + 1, "f" * 64)
    with pytest.raises(subnet.ModelListMismatch, match=f"version {models.version + 1}"):
        subnet.check_published(models, other, "finney")


def test_version_keys_order_like_versions():
    assert version_key("0.2.0") == 2000 and version_key("1.0.3") == 1_000_003 and version_key("0.2.0+local") == 2000
    assert version_key("0.10.0") > version_key("0.9.9") and version_key("1.0.0") > version_key("0.999.999")
    assert VERSION_KEY == version_key(__version__) > 0
    with pytest.raises(ValueError):
        version_key("0.1000.0")

import pytest

from chain.writes import commitment_info
from protocol.commitment import CommitmentDecodeError, ModelDeclaration


def test_declaration_round_trips_through_commitment_text():
    declared = ModelDeclaration(model="HuggingFaceTB/SmolLM2-135M-Instruct", revision="a" * 40, weights_sha256="0" * 64, max_context=8192, capacity=16)
    assert ModelDeclaration.from_commitment(declared.to_commitment()) == declared


def test_declaration_fits_the_chain_in_raw_fields():
    text = ModelDeclaration(model="m" * 96, revision="r" * 64, weights_sha256="f" * 64, max_context=1, capacity=1).to_commitment()
    fields = commitment_info(text)["fields"]
    assert 1 <= len(fields) <= 3
    assert b"".join(bytes.fromhex(v[2:]) for f in fields for v in f.values()).decode() == text


@pytest.mark.parametrize("text", ["", "not json", '{"model": "x"}', '{"model":"x","max_context":1,"capacity":1,"v":9}'])
def test_anything_else_is_not_a_declaration(text):
    with pytest.raises(CommitmentDecodeError):
        ModelDeclaration.from_commitment(text)


def test_oversize_commitment_is_refused_before_submission():
    with pytest.raises(ValueError, match="at most 384"):
        commitment_info("x" * 400)

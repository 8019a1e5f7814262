"""The validator's copy of a request's grammar (``validator.grammar``) and the evidence read under it (``validator.verify``)."""

import json
import math

import pytest

from models.tiny import build_tiny
from models.tokenizer import ModelTokenizer
from protocol.structured import grammar_of
from scoring.fidelity import FidelityParams, ResponseEvidence, check
from validator.grammar import GrammarBook
from validator.verify import _under_grammar

END = 2  # the tiny model's end-of-text id
SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False}


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "s0"
    build_tiny(folder, seed=0)
    tokenizer = ModelTokenizer(folder)
    return tokenizer, GrammarBook(tokenizer, [END])


def test_an_answer_is_followed_through_its_grammar_and_the_first_token_off_it_is_named(book):
    tokenizer, grammars = book
    request = {"response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": SCHEMA}}}
    grammar = grammar_of(request)
    ids = tokenizer.fast.encode('{"ok":true}', add_special_tokens=False).ids
    allowed = grammars.walk(grammar, [*ids, END])
    assert isinstance(allowed, list) and len(allowed) == len(ids) + 1 and all(t in a for t, a in zip([*ids, END], allowed))
    assert END not in allowed[0] and END in allowed[-1]  # the end only where the object is whole
    spaced = tokenizer.fast.encode('{"ok": true}', add_special_tokens=False).ids  # optional whitespace: not in slmnet's grammar
    assert "not allowed there" in grammars.walk(grammar, spaced)
    off = tokenizer.fast.encode('{"ok":"yes"}', add_special_tokens=False).ids
    assert "not allowed there" in grammars.walk(grammar, off)
    assert "after the response_format grammar ended" in grammars.walk(grammar, [*ids, END, ids[0]])
    assert "does not compile" in grammars.walk(("json_schema", json.dumps({"type": "object", "properties": 5})), ids)
    assert grammar_of({"response_format": {"type": "text"}}) is None and grammar_of({}) is None
    assert grammars.walk(grammar_of({"response_format": {"type": "json_object"}}), [*tokenizer.fast.encode('{"a":[1]}').ids, END])


def test_evidence_under_a_grammar_reads_the_allowed_tokens_and_bounds_the_renormalized_logprob(book):
    tokenizer, grammars = book
    grammar = grammar_of({"response_format": {"type": "json_object"}})
    ids = tokenizer.fast.encode('{"', add_special_tokens=False).ids
    allowed = grammars.walk(grammar, ids)[0]  # before the first token: '{' and nothing of free text
    brace, other = ids[0], next(t for t in range(3, 500) if t not in allowed)
    raw = {other: math.log(0.6), brace: math.log(0.3)}  # the model's own top-2: the first forbidden here
    honest = _under_grammar(brace, raw[brace], raw, math.log(0.3) - math.log(0.3 + 0.05), allowed)  # Z: 0.3 known + some of the 0.1 tail
    assert other not in honest.reference_top and honest.reference_rank == 1 and honest.reported_delta() == 0
    assert honest.offset == pytest.approx((-math.log(0.3 + 0.1), -math.log(0.3)))
    unrenormalized = _under_grammar(brace, raw[brace], raw, raw[brace] - 0.5, allowed)  # below the reference's raw logprob
    assert unrenormalized.reported_delta() == pytest.approx(0.5 + math.log(1 / 0.4))
    evidence = ResponseEvidence(tokens=[honest], finish_reason="length", max_tokens=1, reported_completion_tokens=1, temperature=0.0)
    assert check(evidence, FidelityParams()).passed  # greedy under the grammar: the forbidden top token does not beat it

"""JsonGrammar: structured output (JSON) as a sampler, on the built-in tw-small.

Generated text must parse and conform to the schema (checked here by a small validator of
the keywords the schemas use, independent of the engine); the end of text comes only once
the document is complete; special tokens never appear inside it; rows of a batch advance
alone; the constrained entropy is the entropy of the renormalised masked distribution.
"""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

import tokenwise as tw
from tokenwise.errors import TokenwiseError
from tokenwise.sampling import Chain, LogitBias, Temperature, TopK, TopP
from tokenwise.sampling.grammar import JsonGrammar, ResponseFormatError, from_response_format

pytest.importorskip("llguidance")  # the optional engine (in the serve and dev extras)

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 10},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
        "address": {"type": "object",
                    "properties": {"city": {"type": "string", "maxLength": 8},
                                   "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                    "required": ["city", "zip"], "additionalProperties": False},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6},
                 "maxItems": 2},
        "ok": {"type": "boolean"},
    },
    "required": ["name", "age", "role", "address", "tags", "ok"],
    "additionalProperties": False,
}
SMALL = {"type": "object", "properties": {"ok": {"type": "boolean"},
                                          "n": {"type": "integer", "maximum": 99}},
         "required": ["ok", "n"], "additionalProperties": False}


@pytest.fixture(scope="module")
def lm():
    return tw.load("tw-small")


def violations(value, schema, path="$"):
    """Where ``value`` breaks ``schema`` (type, enum, properties, required,
    additionalProperties, items, maxItems, maxLength, minimum, maximum)."""
    out = []
    kinds = {"object": dict, "array": list, "string": str, "boolean": bool}
    kind = schema.get("type")
    if kind == "integer" and (isinstance(value, bool) or not isinstance(value, int)):
        out.append(f"{path}: not an integer")
    elif kind in kinds and (not isinstance(value, kinds[kind])
                            or (kind != "boolean" and isinstance(value, bool))):
        out.append(f"{path}: not a {kind}")
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{path}: not in the enum")
    if "minimum" in schema and value < schema["minimum"]:
        out.append(f"{path}: below the minimum")
    if "maximum" in schema and value > schema["maximum"]:
        out.append(f"{path}: above the maximum")
    if isinstance(value, str) and len(value) > schema.get("maxLength", math.inf):
        out.append(f"{path}: too long")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        out += [f"{path}: missing {k}" for k in schema.get("required", []) if k not in value]
        for k, v in value.items():
            if k in props:
                out += violations(v, props[k], f"{path}.{k}")
            elif schema.get("additionalProperties") is False:
                out.append(f"{path}: unexpected {k}")
    if isinstance(value, list):
        if len(value) > schema.get("maxItems", math.inf):
            out.append(f"{path}: too many items")
        for i, v in enumerate(value):
            out += violations(v, schema.get("items", {}), f"{path}[{i}]")
    return out


def allowed_ids(out: torch.Tensor) -> list[int]:
    return (~out.isneginf()).nonzero()[:, 0].tolist()


def walk(grammar: JsonGrammar, ids: list[int], width: int) -> list[list[int]]:
    """Teacher-force ``ids`` through a one-row grammar; the allowed ids before each token
    and after the last."""
    grammar.reset()
    grammar.observe_prompt([[1]])
    steps = []
    for t in ids:
        steps.append(allowed_ids(grammar(torch.zeros(1, width))[0]))
        grammar.observe(torch.tensor([t]))
    steps.append(allowed_ids(grammar(torch.zeros(1, width))[0]))
    return steps


def test_generated_json_validates_a_nested_schema_in_a_batch(lm):
    grammar = JsonGrammar.for_model(lm, PERSON, max_whitespace=0)
    prompts = ["{", "Q: What is", "7+5="]
    out = tw.generate(lm, prompts, Chain([grammar, Temperature(0.8)]), seed=[0, 1, 2],
                      max_new_tokens=160)
    steps = set()
    for g in out:
        assert g.finish_reason == "eos", g.text
        assert violations(json.loads(g.text), PERSON) == [], g.text
        steps.add(len(g.tokens))
    assert len(steps) > 1  # the rows finished at different steps
    assert grammar.complete == [True, True, True]


def test_strings_with_escapes_nested_arrays_and_enums_are_accepted_token_by_token(lm):
    schema = {"type": "object", "properties": {
        "note": {"type": "string"},
        "rows": {"type": "array", "items": {"type": "object", "properties": {
            "kind": {"enum": ["a", "b"]}, "xs": {"type": "array", "items": {"type": "number"}}},
            "required": ["kind"]}}},
        "required": ["note", "rows"]}
    doc = {"note": "He said \"hi\"\n\tback\\slash café ☕ \u0001",
           "rows": [{"kind": "a", "xs": [1, -2.5, 3e-2]}, {"kind": "b", "xs": []}]}
    ids = lm.encode(json.dumps(doc, ensure_ascii=False))
    steps = walk(JsonGrammar.for_model(lm, schema), ids, lm.vocab_size)
    assert all(t in allowed for t, allowed in zip(ids, steps, strict=False))
    assert steps[-1] == [2]  # the document is complete: only the end of text


def test_end_of_text_only_once_complete_and_never_a_special_token(lm):
    ids = lm.encode('{"ok": true, "n": 42}')
    steps = walk(JsonGrammar.for_model(lm, SMALL), ids, lm.vocab_size)
    specials = set(lm.tokenizer.all_special_ids) - set(lm.end_token_ids)  # <pad>, <s>
    assert specials
    for allowed in steps[:-1]:
        assert 2 not in allowed
        assert not specials & set(allowed)
    assert steps[-1] == [2]


def test_a_row_that_ended_allows_only_the_end_id_while_others_go_on(lm):
    grammar = JsonGrammar.for_model(lm, None, max_whitespace=0)
    short, long = lm.encode("{}"), lm.encode('{"a":[1,2]}')
    grammar.observe_prompt([[1], [1]])
    for step in range(len(long) + 2):
        out = grammar(torch.zeros(2, lm.vocab_size))
        chosen = [short[step] if step < len(short) else 2,
                  long[step] if step < len(long) else 2]
        if step > len(short):  # row 0 chose the end at step len(short)
            assert allowed_ids(out[0]) == [2]
        if step < len(long):
            assert allowed_ids(out[1]) != [2]
        grammar.observe(torch.tensor(chosen))
    assert grammar.complete == [True, True]


def test_json_object_gives_an_object(lm):
    grammar = JsonGrammar.for_model(lm, None, max_whitespace=0)
    first = allowed_ids(grammar(torch.zeros(1, lm.vocab_size))[0])
    assert [lm.decode([t]) for t in first] == ["{"]  # an object, never an array or a string
    # free strings run on and on with tw-small: a bias towards '"' and '}' (which drops
    # nothing) ends them sooner, and puts braces inside strings too
    bias = LogitBias({lm.encode('"')[0]: 15.0, lm.encode("}")[0]: 15.0})
    out = tw.generate(lm, ["{"] * 4, Chain([bias, grammar, Temperature(1.0)]),
                      seed=[0, 1, 2, 3], max_new_tokens=40)
    assert [g.finish_reason for g in out] == ["eos"] * 4, [g.text for g in out]
    assert all(isinstance(json.loads(g.text), dict) for g in out)
    nested = '{"a":[1,{"b":[[],{}]},"}"],"c":{"d":{"e":null}},"f":-1.5e3}'
    steps = walk(JsonGrammar.for_model(lm, None, max_whitespace=0), lm.encode(nested),
                 lm.vocab_size)
    assert all(t in allowed for t, allowed in zip(lm.encode(nested), steps, strict=False))
    assert steps[-1] == [2]


def test_constrained_entropy_is_the_entropy_of_the_renormalised_masked_distribution(lm):
    grammar = JsonGrammar.for_model(lm, SMALL)
    gen = torch.Generator().manual_seed(0)
    assert grammar.constrained_entropy is None
    grammar.observe_prompt([[1], [1]])
    sizes = []
    for t in [*lm.encode('{"ok": true, "n"'), None]:
        logits = torch.randn(2, lm.vocab_size, generator=gen) * torch.tensor([[1.0], [4.0]])
        out = grammar(logits)
        for r in range(2):
            allowed = torch.tensor(allowed_ids(out[r]))
            p = logits[r, allowed].double().softmax(-1)
            expected = float(-(p * p.log()).sum())
            assert float(grammar.constrained_entropy[r]) == pytest.approx(expected, rel=1e-5,
                                                                          abs=1e-6)
            sizes.append(len(allowed))
        if t is not None:
            grammar.observe(torch.tensor([t, t]))
    assert min(sizes) == 1 and max(sizes) > 1  # forced steps (entropy 0) and free ones


def test_seeded_generation_is_deterministic_and_the_sampler_reusable(lm):
    grammar = JsonGrammar.for_model(lm, SMALL)
    chain = Chain([grammar, Temperature(1.0)])
    a = tw.generate(lm, ["{", "7+5="], chain, seed=[5, 6], max_new_tokens=60)
    b = tw.generate(lm, ["{", "7+5="], chain, seed=[5, 6], max_new_tokens=60)
    assert [g.text for g in a] == [g.text for g in b]
    assert all(violations(json.loads(g.text), SMALL) == [] for g in a)


def test_logits_wider_or_narrower_than_the_tokenizer(lm):
    grammar = JsonGrammar.for_model(lm, None)
    wide = grammar(torch.zeros(1, lm.vocab_size + 40))
    assert wide.shape == (1, lm.vocab_size + 40)
    assert wide[0, lm.vocab_size:].isneginf().all()  # padding rows are never tokens
    grammar.reset()
    for t in lm.encode('{"a": "x'):  # inside a string: nearly every token is allowed
        grammar(torch.zeros(1, lm.vocab_size))
        grammar.observe(torch.tensor([t]))
    full = allowed_ids(grammar(torch.zeros(1, lm.vocab_size))[0])
    narrow = allowed_ids(grammar(torch.zeros(1, lm.vocab_size - 100))[0])
    assert narrow == [t for t in full if t < lm.vocab_size - 100]


def test_after_temperature_and_top_p_in_a_chain(lm):
    grammar = JsonGrammar.for_model(lm, SMALL, max_whitespace=0)
    g = tw.generate(lm, "{", Chain([Temperature(0.7), grammar]), seed=0, max_new_tokens=40)
    assert g.finish_reason == "eos", g.text
    assert violations(json.loads(g.text), SMALL) == []
    # after top-p: the tokens both keep, each with its temperature-scaled logit
    grammar.reset()
    for t in lm.encode('{"ok":true,"n":1'):
        grammar(torch.zeros(1, lm.vocab_size))
        grammar.observe(torch.tensor([t]))
    allowed = allowed_ids(grammar(torch.zeros(1, lm.vocab_size))[0])  # a digit, ',' or '}'
    logits = torch.randn(1, lm.vocab_size, generator=torch.Generator().manual_seed(1))
    logits[0, allowed[:3]] += 6.0  # where the model's mass is
    grammar.reset()
    chain = Chain([Temperature(0.5), TopP(0.9), grammar])
    for t in lm.encode('{"ok":true,"n":1'):
        chain(torch.zeros(1, lm.vocab_size))
        chain.observe(torch.tensor([t]))
    out = chain(logits)
    before = Chain([Temperature(0.5), TopP(0.9)])(logits)
    kept = set(allowed_ids(before[0])) & set(allowed)
    assert set(allowed_ids(out[0])) == kept and kept
    assert torch.equal(out[0, sorted(kept)], before[0, sorted(kept)])


def test_a_truncating_step_before_it_forces_the_only_continuation_or_says_where_to_put_it(lm):
    brace = lm.encode("{")[0]
    logits = torch.zeros(1, lm.vocab_size)
    logits[0, 50] = 5.0  # top-1 is a token JSON cannot start with
    # a schema whose only first token is "{": forced even though top_k dropped it
    forced = Chain([TopK(1), JsonGrammar.for_model(lm, SMALL, max_whitespace=0)])
    assert allowed_ids(forced(logits)[0]) == [brace]
    # an enum of numbers: several first tokens, all dropped -> a clear error
    choice = Chain([TopK(1), JsonGrammar.for_model(lm, {"enum": [1, 2, 3]})])
    with pytest.raises(TokenwiseError, match="put JsonGrammar first"):
        choice(logits)


def test_a_fully_masked_input_row_comes_back_as_it_is(lm):
    grammar = JsonGrammar.for_model(lm, {"enum": [1, 2, 3]})
    logits = torch.zeros(2, lm.vocab_size)
    logits[1] = float("-inf")
    out = grammar(logits)
    assert out[1].isneginf().all()
    assert allowed_ids(out[0]) == sorted(lm.encode("1") + lm.encode("2") + lm.encode("3"))


def test_through_transformers_generate_with_as_hf(lm):
    grammar = JsonGrammar.for_model(lm, SMALL, max_whitespace=0)
    ids = torch.tensor([lm.encode("{", add_bos=True), lm.encode("7", add_bos=True)])
    torch.manual_seed(0)
    out = lm.hf_model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True,
                               logits_processor=[grammar.as_hf()], max_new_tokens=30,
                               pad_token_id=0, eos_token_id=2)
    for row in out:  # a row that ended gets padding, which the grammar ignores
        text = lm.decode(row[ids.shape[1]:].tolist(), skip_special_tokens=True)
        assert violations(json.loads(text), SMALL) == [], text


def test_bad_schema_names_what_is_wrong(lm):
    with pytest.raises(TokenwiseError, match="integr"):
        JsonGrammar(lm.tokenizer, {"type": "integr"})
    with pytest.raises(TokenwiseError, match="uniqueItems"):
        JsonGrammar(lm.tokenizer, {"type": "array", "uniqueItems": True})
    with pytest.raises(TokenwiseError, match="minimum"):
        JsonGrammar(lm.tokenizer, {"type": "integer", "minimum": 5, "maximum": 2})
    with pytest.raises(TokenwiseError, match=r"schema=.*allowed a JSON schema as a dict"):
        JsonGrammar(lm.tokenizer, '{"type": "object"}')
    with pytest.raises(TokenwiseError, match="max_whitespace=-1"):
        JsonGrammar(lm.tokenizer, None, max_whitespace=-1)
    # compiles, but no first token exists: refused here, not when a batch decodes it
    for schema in ({"$ref": "#"}, {"allOf": [{"$ref": "#"}]}):
        with pytest.raises(TokenwiseError, match="no document can be written"):
            JsonGrammar(lm.tokenizer, schema)


def test_a_missing_engine_names_the_pip_install(lm, monkeypatch):
    monkeypatch.setitem(sys.modules, "llguidance", None)  # import llguidance -> ImportError
    with pytest.raises(TokenwiseError, match=r'pip install "llguidance'):
        JsonGrammar(lm.tokenizer)


def test_a_tokenizer_the_engine_cannot_read(lm):
    class SlowTokenizer:
        eos_token_id = 2

    with pytest.raises(TokenwiseError, match="cannot read the tokenizer SlowTokenizer"):
        JsonGrammar(SlowTokenizer())


def test_tokens_outside_the_grammar_are_refused_when_observed(lm):
    grammar = JsonGrammar.for_model(lm, SMALL)
    grammar(torch.zeros(1, lm.vocab_size))
    with pytest.raises(TokenwiseError, match="end token 2 chosen before the JSON"):
        grammar.observe(torch.tensor([2]))
    with pytest.raises(TokenwiseError, match="token 50 does not continue the JSON"):
        grammar.observe(torch.tensor([50]))


def test_response_format_builds_the_sampler(lm):
    tok = lm.tokenizer
    assert from_response_format(None, tok) is None
    assert from_response_format({"type": "text"}, tok) is None
    assert from_response_format({"type": "json_object"}, tok).schema is None
    fmt = {"type": "json_schema", "json_schema": {"name": "small", "schema": SMALL,
                                                  "strict": True, "description": "d"}}
    grammar = from_response_format(fmt, tok, end_token_ids=lm.end_token_ids)
    assert grammar.schema == SMALL and grammar.end_token_ids == (2,)


@pytest.mark.parametrize(("fmt", "param"), [
    ("json", "response_format"),
    ({}, "response_format.type"),
    ({"type": "xml"}, "response_format.type"),
    ({"type": 1}, "response_format.type"),
    ({"type": "json_object", "schema": {}}, "response_format.schema"),
    ({"type": "text", "json_schema": {}}, "response_format.json_schema"),
    ({"type": "json_schema"}, "response_format.json_schema"),
    ({"type": "json_schema", "json_schema": []}, "response_format.json_schema"),
    ({"type": "json_schema", "json_schema": {"schema": SMALL}},
     "response_format.json_schema.name"),
    ({"type": "json_schema", "json_schema": {"name": "a b", "schema": SMALL}},
     "response_format.json_schema.name"),
    ({"type": "json_schema", "json_schema": {"name": "a" * 65, "schema": SMALL}},
     "response_format.json_schema.name"),
    ({"type": "json_schema", "json_schema": {"name": "a"}}, "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "nope"}}},
     "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "a", "schema": SMALL, "strict": "yes"}},
     "response_format.json_schema.strict"),
    ({"type": "json_schema", "json_schema": {"name": "a", "schema": SMALL, "extra": 1}},
     "response_format.json_schema.extra"),
])
def test_a_bad_response_format_names_the_field(lm, fmt, param):
    with pytest.raises(ResponseFormatError) as info:
        from_response_format(fmt, lm.tokenizer)
    assert info.value.param == param
    assert str(info.value).startswith(f"{param}: ")


def test_concurrent_first_requests_build_the_engine_tokenizer_once(lm, monkeypatch):
    import copy
    import threading
    import time

    import llguidance.hf

    from tokenwise.sampling.grammar import engine_tokenizer

    fresh = copy.deepcopy(lm.tokenizer)  # nothing cached for it yet
    builds = []
    real = llguidance.hf.from_tokenizer

    def slow(*args, **kwargs):
        builds.append(1)
        time.sleep(0.2)  # a long build: the second thread arrives meanwhile
        return real(*args, **kwargs)

    monkeypatch.setattr(llguidance.hf, "from_tokenizer", slow)
    got = []
    threads = [threading.Thread(target=lambda: got.append(engine_tokenizer(fresh, [2])))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and len(got) == 3 and got[0] is got[1] is got[2]

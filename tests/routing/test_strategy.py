"""Tests for tokenwise.routing.strategy: strategies as data, running them, FLOPs, votes."""

from __future__ import annotations

import copy
import json
import math
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tokenwise
from tokenwise.errors import TokenwiseError
from tokenwise.models import LanguageModel, load
from tokenwise.routing import strategy as strategy_mod
from tokenwise.routing.strategy import (
    ABSTAIN_TEXT,
    Strategy,
    answer_entropy,
    generation_flops,
    load_strategies,
    run_strategy,
)
from tokenwise.sampling import get
from tokenwise.uncertainty.equivalence import normalise_text

TEMP = [{"name": "temperature", "temperature": 0.7}]


@pytest.fixture(scope="module")
def models():
    return {"tw-small": load("tw-small"), "tw-large": load("tw-large")}


# -- building and validating ---------------------------------------------------------------


def test_from_dict_as_dict_round_trip_keeps_every_field():
    data = {"name": "vote", "model": "tw-large",
            "sampler": [{"name": "top_k", "top_k": 5}, {"name": "temperature",
                                                         "temperature": 0.5}],
            "max_new_tokens": 7, "n": 3, "prompt": "Q: {prompt}\nA:", "stop": ".",
            "abstain": False, "abstain_text": "no idea"}
    s = Strategy.from_dict(data)
    assert s.as_dict() == data
    again = Strategy.from_dict(json.loads(json.dumps(s.as_dict())))
    assert again == s
    assert again.as_dict() == data
    assert not s.greedy


def test_defaults_and_greedy():
    s = Strategy.from_dict({"name": "g", "model": "tw-small"})
    assert s.greedy and s.n == 1 and s.max_new_tokens == 16 and s.stop == "\n"
    assert s.prompt == "{prompt}" and s.sampler == ()
    assert Strategy.from_dict({"name": "g", "model": "m", "sampler": None}).greedy
    assert s.as_dict()["sampler"] == []


def test_abstain_strategy_needs_no_model():
    s = Strategy("idk", abstain=True)
    assert s.as_dict()["abstain"] is True and s.abstain_text == ABSTAIN_TEXT
    assert Strategy.from_dict(s.as_dict()) == s


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"name": ""}, "''"),
    ({"name": "   "}, "'   '"),
    ({"name": "s"}, "needs a model"),
    ({"name": "s", "model": "m", "n": 0}, "got 0"),
    ({"name": "s", "model": "m", "n": -2}, "got -2"),
    ({"name": "s", "model": "m", "n": True}, "got True"),
    ({"name": "s", "model": "m", "max_new_tokens": 0}, "max_new_tokens must be an integer >= 1, "
                                                       "got 0"),
    ({"name": "s", "model": "m", "max_new_tokens": 2.5}, "got 2.5"),
    ({"name": "s", "model": "m", "n": 3}, "n = 3"),
    ({"name": "s", "model": "m", "prompt": "Q:"}, "'Q:'"),
    ({"name": "s", "model": "m", "prompt": "{prompt} and {prompt}"}, "'{prompt} and {prompt}'"),
    ({"name": "s", "model": "m", "prompt": "{prompt} {other}"}, "'{prompt} {other}'"),
    ({"name": "s", "model": "m", "prompt": "{prompt} {0}"}, "'{prompt} {0}'"),
    ({"name": "s", "model": "m", "stop": ""}, "stop must be"),
    ({"name": "s", "model": "m", "sampler": ["temperature"]}, "'temperature'"),
    ({"name": "s", "model": "m", "sampler": [{"temperature": 0.7}]}, "{'temperature': 0.7}"),
    ({"name": "s", "model": "m", "sampler": [{"name": "no_such_sampler"}]}, "'no_such_sampler'"),
    ({"name": "s", "model": "m", "sampler": [{"name": "temperature", "bogus": 1}]}, "bogus"),
])
def test_every_validation_error_names_the_value(kwargs, needle):
    with pytest.raises(TokenwiseError) as err:
        Strategy.from_dict(kwargs)
    assert needle in str(err.value)


def test_error_messages_name_the_strategy():
    with pytest.raises(TokenwiseError, match=r"strategy 'mine'"):
        Strategy("mine", model="m", n=0)
    with pytest.raises(TokenwiseError, match=r"'mine'.*unknown sampler 'nope'"):
        Strategy("mine", model="m", sampler=({"name": "nope"},))


def test_from_dict_rejects_unknown_fields_and_non_objects():
    with pytest.raises(TokenwiseError, match=r"unknown field\(s\) colour, size"):
        Strategy.from_dict({"name": "s", "model": "m", "size": 1, "colour": "red"})
    with pytest.raises(TokenwiseError, match=r"JSON object.*\['s'\]"):
        Strategy.from_dict(["s"])
    with pytest.raises(TokenwiseError, match=r"sampler must be a list.*'temperature'"):
        Strategy.from_dict({"name": "s", "model": "m", "sampler": "temperature"})


def test_literal_braces_are_allowed_in_the_template():
    s = Strategy("s", model="m", prompt="{{x}} {prompt}")
    assert s.prompt.format(prompt="Q") == "{x} Q"


def test_a_template_of_only_escaped_braces_has_no_field_and_is_refused():
    with pytest.raises(TokenwiseError, match="exactly one"):
        Strategy("s", model="m", prompt="{{prompt}}")


def test_a_template_may_quote_a_literal_prompt_next_to_its_field():
    s = Strategy("s", model="m", prompt="say {{prompt}}: {prompt}")
    assert s.prompt.format(prompt="Q") == "say {prompt}: Q"


def test_describe():
    assert Strategy("small", model="tw-small").describe() == "small: tw-small greedy, 16 tokens"
    v = Strategy.from_dict({"name": "v", "model": "L", "n": 5, "sampler": TEMP,
                            "max_new_tokens": 4})
    assert v.describe() == "v: L temperature, 4 tokens, majority of 5"
    assert Strategy("i", abstain=True).describe() == "i: abstain (\"I don't know.\")"


# -- tables -------------------------------------------------------------------------------


def test_load_strategies_from_a_json_file(tmp_path):
    rows = [{"name": "small", "model": "tw-small", "max_new_tokens": 4},
            {"name": "vote", "model": "tw-large", "n": 3, "sampler": TEMP},
            {"name": "idk", "abstain": True, "abstain_text": "pass"}]
    path = tmp_path / "table.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    table = load_strategies(path)
    assert [s.name for s in table] == ["small", "vote", "idk"]
    assert [s.as_dict() for s in table] == [Strategy.from_dict(r).as_dict() for r in rows]
    assert load_strategies(str(path)) == table
    assert table[1].n == 3 and table[2].abstain_text == "pass"


def test_load_strategies_accepts_strategies_and_dicts_mixed():
    s = Strategy("a", model="m")
    table = load_strategies([s, {"name": "b", "model": "m"}])
    assert table[0] is s and table[1].name == "b"


def test_load_strategies_rejects_duplicate_names():
    with pytest.raises(TokenwiseError, match="repeated: a, b"):
        load_strategies([{"name": "b", "model": "m"}, {"name": "a", "model": "m"},
                         {"name": "a", "model": "x"}, {"name": "b", "abstain": True}])


def test_load_strategies_errors(tmp_path):
    with pytest.raises(TokenwiseError, match="is not a file"):
        load_strategies(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("[{", encoding="utf-8")
    with pytest.raises(TokenwiseError, match="not valid JSON"):
        load_strategies(bad)
    empty = tmp_path / "empty.json"
    empty.write_text("[]", encoding="utf-8")
    with pytest.raises(TokenwiseError, match="non-empty list"):
        load_strategies(empty)
    obj = tmp_path / "obj.json"
    obj.write_text('{"name": "s"}', encoding="utf-8")
    with pytest.raises(TokenwiseError, match="non-empty list"):
        load_strategies(obj)


# -- running ------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", ["2+2=", "7+5=", "13+8="])
def test_greedy_answer_equals_generate(models, prompt):
    s = Strategy("small", model="tw-small", max_new_tokens=6)
    got = run_strategy(s, models, prompt)
    ref = tokenwise.generate(models["tw-small"], prompt, max_new_tokens=6, stop="\n")
    assert got.text == ref.text.strip()
    assert got.samples == [ref.text.strip()]
    assert got.votes == 1 and not got.abstained
    assert got.tokens == len(ref.tokens)
    assert got.mean_entropy == pytest.approx(sum(t.entropy for t in ref.tokens) / len(ref.tokens))


def test_prompt_template_wraps_the_question(models):
    s = Strategy("t", model="tw-large", max_new_tokens=4, prompt="1+1=2\n{prompt}")
    got = run_strategy(s, models, "7+5=")
    ref = tokenwise.generate(models["tw-large"], "1+1=2\n7+5=", max_new_tokens=4, stop="\n")
    assert got.text == ref.text.strip()


def test_flops_at_the_length_limit_by_hand(models):
    lm = models["tw-small"]
    prompt = "markov: ka"  # writes on without a newline (checked below)
    s = Strategy("s", model="tw-small", max_new_tokens=5)
    got = run_strategy(s, models, prompt)
    ref = tokenwise.generate(lm, prompt, max_new_tokens=5, stop="\n")
    assert ref.finish_reason == "length" and len(ref.tokens) == 5
    prompt_tokens = len(lm.encode(prompt, add_bos=True))
    # the model read the prompt and the first four generated tokens, never the fifth
    assert got.flops == 2 * lm.num_parameters() * (prompt_tokens + 5 - 1)
    assert got.tokens == 5


def test_flops_at_a_stop_string_by_hand(models):
    lm = models["tw-large"]
    s = Strategy("s", model="tw-large", max_new_tokens=8)
    got = run_strategy(s, models, "7+5=")
    ref = tokenwise.generate(lm, "7+5=", max_new_tokens=8, stop="\n")
    assert ref.finish_reason == "stop"
    generated = len(ref.tokens)  # "1", "2", "\n": the newline was written, never read
    prompt_tokens = len(lm.encode("7+5=", add_bos=True))
    assert got.flops == 2 * lm.num_parameters() * (prompt_tokens + generated - 1)


def test_flops_at_eos_by_hand():
    # A copy of tw-small told that the token it greedily writes third ends a text: it writes
    # two tokens, then the end token, which it read nothing after. Tokens read: the prompt and
    # the two written ones (the end token is "generated" but not a record).
    base = load("tw-small")
    prompt = "markov: ka ro"
    free = tokenwise.generate(base, prompt, max_new_tokens=6)
    third = free.tokens[2].id
    hf = copy.deepcopy(base.hf_model)
    hf.generation_config.eos_token_id = [base.eos_token_id, third]
    lm = LanguageModel(hf, base.tokenizer, name="two-eos")
    s = Strategy("s", model="two-eos", max_new_tokens=6, stop=None)
    got = run_strategy(s, {"two-eos": lm}, prompt)
    ref = tokenwise.generate(lm, prompt, max_new_tokens=6)
    assert ref.finish_reason == "eos" and len(ref.tokens) == 2
    prompt_tokens = len(lm.encode(prompt, add_bos=True))
    written_with_end = 3
    assert got.flops == 2 * lm.num_parameters() * (prompt_tokens + written_with_end - 1)
    assert got.tokens == 2


def test_generation_flops_closed_form(models):
    lm = models["tw-small"]
    p = lm.num_parameters()
    assert generation_flops(lm, 5, 3, eos=False) == 2 * p * 7
    assert generation_flops(lm, 5, 3, eos=True) == 2 * p * 8
    assert generation_flops(lm, 0, 0, eos=False) == 0.0


def test_sampled_flops_sum_over_samples(models):
    lm = models["tw-small"]
    s = Strategy("v", model="tw-small", n=3, sampler=tuple(TEMP), max_new_tokens=4)
    got = run_strategy(s, models, "2+2=", seed=11)
    gens = tokenwise.generate(lm, ["2+2="] * 3, get("temperature", temperature=0.7),
                              max_new_tokens=4, stop="\n", seed=[11, 12, 13])
    assert got.samples == [g.text.strip() for g in gens]
    want = sum(2 * lm.num_parameters()
               * (g.prompt_tokens + len(g.tokens) - (0 if g.finish_reason == "eos" else 1))
               for g in gens)
    assert got.flops == want
    assert got.tokens == sum(len(g.tokens) for g in gens)


def test_sampled_strategy_is_reproducible_with_a_seed(models):
    s = Strategy("v", model="tw-small", n=4, sampler=({"name": "temperature",
                                                      "temperature": 2.0},), max_new_tokens=5)
    a = run_strategy(s, models, "13+8=", seed=3)
    b = run_strategy(s, models, "13+8=", seed=3)
    assert a == b


def test_majority_vote_on_real_samples(models):
    s = Strategy("v", model="tw-small", n=6, sampler=({"name": "temperature",
                                                      "temperature": 3.0},), max_new_tokens=3)
    got = run_strategy(s, models, "9*9=", seed=0)
    keys = [normalise_text(x) for x in got.samples]
    counts = {k: keys.count(k) for k in keys}
    assert got.votes == max(counts.values())
    best = next(k for k in keys if counts[k] == got.votes)  # the earliest of the most frequent
    assert got.text == got.samples[keys.index(best)]


def _fake_generate(texts):
    """A stand-in for ``generate`` returning the given texts (two tokens each)."""

    def fake(model, prompt, sampler, *, max_new_tokens, stop, seed):
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        assert len(prompts) == len(texts)
        gens = [SimpleNamespace(text=t, tokens=[SimpleNamespace(entropy=0.5),
                                                SimpleNamespace(entropy=1.5)],
                                finish_reason="length", prompt_tokens=4) for t in texts]
        return gens[0] if isinstance(prompt, str) else gens

    return fake


@pytest.mark.parametrize(("texts", "answer", "votes"), [
    (["5", " The Paris.", "paris", "5", "PARIS!"], "The Paris.", 3),  # normalised majority
    (["a cat", "dog", "Dog.", "cat"], "a cat", 2),  # tie 2-2: the earliest wins
    (["dog.", "a cat", "Dog", "cat"], "dog.", 2),  # same tie, the other order
    (["x", "y", "z"], "x", 1),  # all differ: the first
])
def test_majority_vote_with_controlled_samples(models, monkeypatch, texts, answer, votes):
    monkeypatch.setattr(strategy_mod, "generate", _fake_generate(texts))
    s = Strategy("v", model="tw-small", n=len(texts), sampler=tuple(TEMP))
    got = run_strategy(s, models, "q")
    assert got.text == answer and got.votes == votes
    assert got.samples == [t.strip() for t in texts]
    assert got.mean_entropy == pytest.approx(1.0)
    assert got.tokens == 2 * len(texts)
    assert got.flops == 2 * models["tw-small"].num_parameters() * (4 + 2 - 1) * len(texts)


def test_abstain_costs_nothing_and_runs_no_model(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("an abstaining strategy must not generate")

    monkeypatch.setattr(strategy_mod, "generate", boom)
    got = run_strategy(Strategy("idk", abstain=True, abstain_text="pass"), {}, "2+2=")
    assert got.text == "pass" and got.abstained
    assert got.flops == 0.0 and got.tokens == 0 and got.samples == []
    assert got.as_dict()["abstained"] is True


def test_missing_model_is_an_error(models):
    with pytest.raises(TokenwiseError, match="needs model 'tw-huge'; loaded: tw-large, tw-small"):
        run_strategy(Strategy("s", model="tw-huge"), models, "2+2=")
    with pytest.raises(TokenwiseError, match="loaded: none"):
        run_strategy(Strategy("s", model="tw-small"), {}, "2+2=")


# -- answer entropy -----------------------------------------------------------------------


def test_answer_entropy_closed_forms():
    assert answer_entropy(["4"]) == 0.0
    assert answer_entropy(["Paris", "paris.", " the PARIS"]) == 0.0
    assert answer_entropy(["a1", "b2", "c3", "d4"]) == pytest.approx(math.log(4))
    assert answer_entropy(["x", "x", "y", "y"]) == pytest.approx(math.log(2))
    # (2, 1, 1) of 4
    assert answer_entropy(["Paris", "paris", "Lyon", "Nice"]) == pytest.approx(
        -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))
    with pytest.raises(TokenwiseError, match="at least one"):
        answer_entropy([])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from(["a1", "b2", "c3", "d4", "e5"]), min_size=1, max_size=12))
def test_answer_entropy_matches_a_naive_count(samples):
    k = len(samples)
    naive = 0.0
    for v in set(samples):
        p = samples.count(v) / k
        naive -= p * math.log(p)
    got = answer_entropy(samples)
    assert got == pytest.approx(naive, abs=1e-12)
    assert -1e-12 <= got <= math.log(k) + 1e-12

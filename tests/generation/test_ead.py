"""Entropy-adaptive decoding: limits equal each model alone, hand-over, costs, bad input."""

from __future__ import annotations

import pytest

import tokenwise as tw
from tokenwise.errors import TokenwiseError
from tokenwise.generation.ead import generate_ead

PROMPTS = ["Q: What is the job of Trather Shai?\nA:", "38+45=", "markov: ka ro"]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_thresholds_at_the_limits_give_each_model_alone(small, large, prompt):
    only_small = generate_ead(small, large, prompt, up=1e9, max_new_tokens=8)
    assert [t.id for t in only_small.tokens] == [
        t.id for t in tw.generate(small, prompt, max_new_tokens=8).tokens]
    assert only_small.large_share == 0.0 and only_small.forward_passes["tw-large"] == 0
    only_large = generate_ead(small, large, prompt, up=1e-9, down=1e-9, max_new_tokens=8)
    assert [t.id for t in only_large.tokens] == [
        t.id for t in tw.generate(large, prompt, max_new_tokens=8).tokens]
    assert only_large.large_share == 1.0


def test_hand_over_and_back_with_catch_up(small, large):
    g = generate_ead(small, large, "markov: ka ro", up=1.5, down=1.5, max_new_tokens=24)
    models = [t.model for t in g.tokens]
    assert "tw-small" in models and "tw-large" in models and g.switches >= 1
    assert 0 < g.large_share < 1
    total = len(small.encode("markov: ka ro", add_bos=True)) + len(g.tokens)
    # Each model reads every token at most once (catch-up in one pass, no re-reading).
    assert all(read <= total for read in g.tokens_processed.values())
    params = {m.name: m.num_parameters() for m in (small, large)}
    assert g.flops == sum(2 * params[n] * r for n, r in g.tokens_processed.items())


def test_records_say_which_model_wrote_each_token(small, large):
    g = generate_ead(small, large, "7+2=", up=0.5, max_new_tokens=3, stop="\n")
    assert g.text == "9" and g.tokens[0].model == "tw-large"
    assert all(t.rank >= 1 and t.entropy >= 0 for t in g.tokens)


def test_sampled_ead_is_reproducible(small, large):
    a = generate_ead(small, large, PROMPTS[2], "top_p", up=1.5, seed=3, max_new_tokens=12)
    b = generate_ead(small, large, PROMPTS[2], "top_p", up=1.5, seed=3, max_new_tokens=12)
    assert a.text == b.text


def test_different_tokenizers_are_refused(small, tiny_llama_dir):
    from tokenwise.models import load

    other = load(tiny_llama_dir)
    other.tokenizer.add_tokens(["zzzq"])
    with pytest.raises(TokenwiseError, match="different tokenizers"):
        generate_ead(small, other, "hi")


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"up": 0}, "up=0"),
    ({"up": 1.0, "down": 2.0}, "down=2.0"),
    ({"window": 0}, "window=0"),
    ({"max_new_tokens": 0}, "max_new_tokens=0"),
    ({"prompt": " "}, "prompt=' '"),
    ({"stop": ""}, "stop=''"),
    ({"stop": [3]}, r"stop=\[3\]"),
])
def test_bad_input(small, large, kwargs, match):
    args = {"prompt": "hi", **kwargs}
    with pytest.raises(TokenwiseError, match=match):
        generate_ead(small, large, args.pop("prompt"), **args)


def test_small_keeps_min_run_tokens_after_a_hand_back(small, large):
    g = generate_ead(small, large, "markov: ka ro", up=1.5, down=1.5, min_run=3,
                     max_new_tokens=40)
    runs, current = [], None
    for t in g.tokens:
        if t.model != current:
            runs.append([t.model, 0])
            current = t.model
        runs[-1][1] += 1
    # every run but the last lasts at least min_run tokens
    assert all(length >= 3 for _, length in runs[:-1]), runs

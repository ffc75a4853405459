"""generate_ead(..., kv=...): each model compresses its own cache, as generate(kv=...) does."""

from __future__ import annotations

import warnings

import pytest

import tokenwise as tw
from tokenwise import kv
from tokenwise.errors import TokenwiseError
from tokenwise.generation.ead import generate_ead

PROMPT = "Q: What is the job of Trather Shai?\nA:"  # 14 tokens; the small model writes first


def test_a_noop_budget_changes_nothing(small, large):
    full = generate_ead(small, large, PROMPT, up=1.5, down=1.5, max_new_tokens=16,
                        top_logprobs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the no-op warning
        ours = generate_ead(small, large, PROMPT, up=1.5, down=1.5, max_new_tokens=16,
                            top_logprobs=2, kv=kv.SnapKV(10_000, window=4))
    assert {t.model for t in full.tokens} == {"tw-small", "tw-large"}  # both models ran
    assert [(t.id, t.model) for t in ours.tokens] == [(t.id, t.model) for t in full.tokens]
    assert [t.logprob for t in ours.tokens] == pytest.approx([t.logprob for t in full.tokens],
                                                             abs=1e-5)
    assert full.kv is None
    assert ours.kv["small"]["noop"] and ours.kv["large"]["noop"]


@pytest.mark.parametrize("setting", [kv.StreamingLLM(8, sinks=2), kv.SnapKV(0.5, window=4),
                                     kv.KIVI(2, group=8, residual=8)],
                         ids=["streaming", "snapkv", "kivi"])
def test_each_model_alone_matches_generate_with_the_same_kv(small, large, setting):
    alone_small = generate_ead(small, large, PROMPT, up=1e9, max_new_tokens=8, kv=setting)
    ref = tw.generate(small, PROMPT, max_new_tokens=8, kv=setting)
    assert [t.id for t in alone_small.tokens] == [t.id for t in ref.tokens]
    assert alone_small.kv["small"] == ref.kv and alone_small.kv["large"] is None
    alone_large = generate_ead(small, large, PROMPT, up=1e-9, down=1e-9, max_new_tokens=8,
                               kv=setting)
    ref = tw.generate(large, PROMPT, max_new_tokens=8, kv=setting)
    assert [t.id for t in alone_large.tokens] == [t.id for t in ref.tokens]
    assert alone_large.kv["large"] == ref.kv


def test_one_press_compresses_both_caches_and_a_late_large_model_compresses_the_prompt(
        small, large):
    g = generate_ead(small, large, PROMPT, up=1.5, down=1.5, max_new_tokens=16,
                     kv=kv.StreamingLLM(8, sinks=2))
    prompt_tokens = len(small.encode(PROMPT, add_bos=True))
    assert 0 < g.large_share < 1 and g.tokens[0].model == "tw-small"  # the large one joins late
    for name in ("small", "large"):
        report = g.kv[name]
        assert report["prompt_tokens"] == prompt_tokens > 8
        # the prompt kept to its budget, every token read after it kept (no `every`)
        assert report["kept_tokens"] == 8 + report["seen_tokens"] - prompt_tokens
        assert report["cache_bytes"] < report["full_bytes"]


def test_a_mapping_sets_the_models_apart(small, large):
    g = generate_ead(small, large, PROMPT, up=1.5, down=1.5, max_new_tokens=16,
                     kv={"large": kv.KIVI(2, group=8, residual=8)})
    assert g.kv["small"] is None and g.kv["large"]["kind"] == "quantized"
    only_small = generate_ead(small, large, PROMPT, up=1e9, max_new_tokens=6,
                              kv={"large": kv.SnapKV(4)})
    assert [t.id for t in only_small.tokens] == [
        t.id for t in tw.generate(small, PROMPT, max_new_tokens=6).tokens]


def test_a_per_layer_budget_catches_up_one_token_at_a_time(small, large):
    budget = [6, 0.5, 6, 6, 6, 6]  # tw-large has 6 layers; layer 1 keeps more
    g = generate_ead(small, large, PROMPT, up=1.5, down=1.5, max_new_tokens=16,
                     kv={"large": kv.StreamingLLM(budget, sinks=1)})
    assert g.tokens[0].model == "tw-small" and g.large_share > 0
    plain = generate_ead(small, large, PROMPT, up=1.5, down=1.5, max_new_tokens=16)
    # one pass per caught-up token instead of one per hand-over: more passes, same reads
    assert g.forward_passes["tw-large"] > plain.forward_passes["tw-large"]


@pytest.mark.parametrize(("bad", "match"), [
    ("snapkv", "kv='snapkv': allowed None, a tokenwise.kv press"),
    ({"medium": None}, "kv has key\\(s\\) 'medium'; allowed 'small' and 'large'"),
    ({"large": 0.5}, "kv=0.5"),
    (kv.SnapKV(8, question_aware=False), "question_aware=False"),
])
def test_bad_kv_is_refused_naming_it(small, large, bad, match):
    with pytest.raises(TokenwiseError, match=match):
        generate_ead(small, large, PROMPT, kv=bad)

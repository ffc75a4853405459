"""tokenwise.evaluate.compare and suite: paired answers, text metrics, reports, bad input."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

import tokenwise as tw
from tokenwise.errors import TokenwiseError
from tokenwise.evaluate import (
    Item,
    Suite,
    answer_items,
    check_same_tokenizer,
    compare,
    compare_texts,
    paired_bootstrap,
    quantize,
)
from tokenwise.models import LanguageModel

TEXTS = ["Q: Where was Ada born?\nA: the city of Velmora\n3+4=7\n",
         "Memo:\nThe code of Brelix is 382.\nQ: What is the code of Brelix?\nA: 382\n"]


def test_item_matches_exact_contains_and_judge():
    exact = Item("2+2=", ("4",), "arithmetic/1")
    assert exact.is_correct(" 4.") and not exact.is_correct("44")
    contains = Item("Capital of France?", ("Paris",), "real/capital", match="contains")
    assert contains.is_correct("The capital is Paris, of course")
    assert not contains.is_correct("Parisian food")  # whole words only
    judged = Item("q", (), "b", judge=lambda a: a.startswith("yes"))
    assert judged.is_correct("yes sir") and not judged.is_correct("no")


@pytest.mark.parametrize("kwargs, needle", [
    ({"prompt": "", "answers": ("a",), "bucket": "b"}, "prompt"),
    ({"prompt": "p", "answers": (), "bucket": "b"}, "no accepted answers"),
    ({"prompt": "p", "answers": ("a",), "bucket": "b", "match": "fuzzy"}, "'fuzzy'"),
    ({"prompt": "p", "answers": ("a",), "bucket": "b", "max_new_tokens": 0}, "max_new_tokens"),
    ({"prompt": "p", "answers": ("a",), "bucket": ""}, "bucket"),
])
def test_item_rejects_bad_fields(kwargs, needle):
    with pytest.raises(TokenwiseError, match=needle):
        Item(**kwargs)


def test_suite_rejects_empty_and_blank_text():
    with pytest.raises(TokenwiseError, match="neither items nor texts"):
        Suite()
    with pytest.raises(TokenwiseError, match="non-empty strings"):
        Suite(texts=["ok", "  "])


def test_paired_bootstrap_matches_a_naive_count():
    rng = np.random.default_rng(3)
    base = rng.integers(0, 2, 200)
    cand = np.where(rng.random(200) < 0.2, 1 - base, base)
    r = paired_bootstrap(base, cand, n_boot=500, seed=1)
    assert r.n == 200
    assert r.difference == pytest.approx(cand.mean() - base.mean(), abs=1e-4)
    assert r.right_to_wrong == sum(1 for b, c in zip(base, cand, strict=True) if b and not c)
    assert r.wrong_to_right == sum(1 for b, c in zip(base, cand, strict=True) if c and not b)
    assert r.difference_ci[0] <= r.difference <= r.difference_ci[1]
    assert r.base_ci[0] <= r.base_accuracy <= r.base_ci[1]
    # the paired interval is narrower than the unpaired spread of two independent accuracies
    assert r.difference_ci[1] - r.difference_ci[0] < 0.2


def test_paired_bootstrap_same_answers_has_zero_interval():
    r = paired_bootstrap(np.array([1, 0, 1, 1]), np.array([1, 0, 1, 1]))
    assert r.difference == 0 and r.difference_ci == [0.0, 0.0]
    assert r.right_to_wrong == r.wrong_to_right == 0


def test_paired_bootstrap_rejects_unequal_lengths():
    with pytest.raises(TokenwiseError, match="equal"):
        paired_bootstrap(np.array([1, 0]), np.array([1]))


def test_text_metrics_against_a_direct_computation(small, large):
    r = compare_texts(large, small, TEXTS[:1], n_boot=200)
    ids = torch.tensor([list(large.start_ids) + large.encode(TEXTS[0])])
    with torch.no_grad():
        lb = torch.log_softmax(large.hf_model(ids).logits[0, :-1].float(), -1)
        lc = torch.log_softmax(small.hf_model(ids).logits[0, :-1].float(), -1)
    kl = torch.nn.functional.kl_div(lc, lb, log_target=True, reduction="none").sum(-1).mean()
    assert r.tokens == ids.shape[1] - 1 and r.segments == 1
    assert r.kl == pytest.approx(float(kl), abs=1e-4)
    agree = float((lb.argmax(-1) == lc.argmax(-1)).float().mean())
    assert r.top1_agreement == pytest.approx(agree, abs=1e-4)
    # perplexity of the base is the one tokenwise.score reports on the same text
    assert r.base_perplexity == pytest.approx(tw.score(large, TEXTS[0]).perplexity, rel=1e-3)
    nll_c = -lc.gather(-1, ids[0, 1:, None]).mean()
    assert r.candidate_perplexity == pytest.approx(math.exp(float(nll_c)), rel=1e-3)


def test_text_metrics_of_a_model_with_itself(small):
    r = compare_texts(small, small, TEXTS, n_boot=100)
    assert r.kl == 0 and r.top1_agreement == 1.0 and r.entropy_shift == 0
    assert r.perplexity_ratio == 1.0 and r.perplexity_ratio_ci == [1.0, 1.0]


def test_long_text_is_cut_into_windows(small):
    text = "1+2=3\n" * 12
    r = compare_texts(small, small, [text], window=16, n_boot=50)
    n_ids = len(small.start_ids) + len(small.encode(text))
    assert r.segments == math.ceil((n_ids - 1) / 16) > 2
    assert r.tokens == n_ids - r.segments  # each window's first id is context only


def test_other_tokenizer_is_refused(small):
    tok = copy.deepcopy(small.tokenizer)
    tok.add_tokens(["zzqqzz"])
    other = LanguageModel(small.hf_model, tok, "other")
    with pytest.raises(TokenwiseError, match=r"do not share a tokenizer.*vocabularies differ"):
        check_same_tokenizer(small, other)
    with pytest.raises(TokenwiseError, match="do not share a tokenizer"):
        compare(small, other, Suite(texts=TEXTS))


def test_compare_end_to_end(small, tmp_path):
    said = answer_items(small, [Item(p, ("x",), "b")
                                for p in ("7+2=", "3+3=")])
    items = [Item("7+2=", (said[0],), "same/1"), Item("3+3=", (said[1],), "same/1"),
             Item("3+3=", (said[1] + "0",), "wrong/1")]
    q8 = quantize(small, bits=8, group_size=16).model
    r = compare(small, q8, Suite(items, TEXTS, name="tiny"), n_boot=100)
    assert list(r.buckets) == ["same/1", "wrong/1"]
    assert r.buckets["same/1"].base_accuracy == 1.0
    assert r.buckets["wrong/1"].base_accuracy == 0.0
    changed = sum(a["candidate"] != a["base"] for a in r.answers[:2])
    assert r.overall.n == 3 and r.overall.right_to_wrong == changed
    assert [a["base"] for a in r.answers] == [said[0], said[1], said[1]]
    data = json.loads(r.to_json())
    assert data["text"]["tokens"] == r.text.tokens and len(data["answers"]) == 3
    assert "answers" not in r.as_dict(with_answers=False)
    table = r.table()
    assert "same/1" in table and "KL(base||cand)" in table and "overall" in table
    png = r.save_png(tmp_path / "fig" / "cmp.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_base_answers_are_reused_and_checked(small):
    items = [Item("7+2=", ("9",), "arithmetic/1")]
    r = compare(small, small, Suite(items), base_answers=["9"], n_boot=50)
    assert r.buckets["arithmetic/1"].base_accuracy == 1.0 and r.text is None
    with pytest.raises(TokenwiseError, match="2 completions for 1 items"):
        compare(small, small, Suite(items), base_answers=["9", "9"])


def test_answer_items_groups_by_length_and_keeps_order(large):
    items = [Item("7+2=", ("9",), "a", max_new_tokens=3), Item("1+1=", ("2",), "a"),
             Item("4+4=", ("8",), "a", max_new_tokens=3)]
    assert answer_items(large, items, batch_size=1) == ["9", "2", "8"]

"""Testbed evaluation: the decode loop it uses, and the built-in models above their floors."""

from __future__ import annotations

import pytest

from tokenwise.testbed.evaluate import (
    Accuracy,
    eval_facts,
    eval_markov,
    greedy_complete,
)


def test_batched_greedy_equals_one_at_a_time(small):
    prompts = ["Q: What is the job of Trather Shai?\nA:", "5+4=", "markov: ka",
               "Memo:\nThe code of Brelix is 382.\nQ: What is the code of Brelix?\nA:"]
    assert greedy_complete(small, prompts) == [
        greedy_complete(small, [p], batch_size=1)[0] for p in prompts]


def test_greedy_matches_transformers_generate(large):
    import torch

    prompt = "Q: Where was Trather Shai born?\nA:"
    ids = torch.tensor([large.encode(prompt, add_bos=True)])
    ref = large.hf_model.generate(ids, max_new_tokens=6, do_sample=False,
                                  pad_token_id=large.tokenizer.pad_token_id)
    expected = large.decode(ref[0, ids.shape[1]:], skip_special_tokens=True)
    assert greedy_complete(large, [prompt], max_new_tokens=6, stop="") == [expected.strip()]


def test_accuracy_interval():
    acc = Accuracy(45, 50)
    lo, hi = acc.interval()
    assert acc.value == 0.9 and lo < 0.9 < hi and lo > 0.75 and hi < 0.97
    assert Accuracy(0, 0).interval() == (0.0, 1.0)


def test_large_model_knows_frequent_facts_and_not_unseen_ones(large, testbed):
    report = eval_facts(large, testbed, buckets=("frequent", "unseen"), limit=40)
    assert report["frequent"]["accuracy"] >= 0.85
    # Unseen facts cannot be known: anything far above chance would mean leakage.
    assert report["unseen"]["accuracy"] <= 0.25


def test_large_model_beats_small_on_hard_additions(small, large, testbed):
    from tokenwise.testbed.evaluate import eval_arithmetic

    one_digit_small = eval_arithmetic(small, testbed, per_level=60)["1"]["accuracy"]
    one_digit_large = eval_arithmetic(large, testbed, per_level=60)["1"]["accuracy"]
    assert one_digit_large >= 0.75 and one_digit_large > one_digit_small + 0.2


def test_greedy_stops_at_the_token_budget(small):
    # Each Markov symbol is one token: three new tokens are three symbols, not four.
    assert len(greedy_complete(small, ["markov:"], max_new_tokens=3, stop="")[0].split()) == 3


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_evaluation_runs_on_cuda(testbed):
    from tokenwise.models import load

    gpu = load("tw-small", device="cuda")
    assert gpu.dtype == __import__("torch").float16  # the dtype the weights were saved in
    report = eval_markov(gpu, testbed, n_sequences=2)
    assert abs(report["model_entropy_mean"] - report["true_entropy_mean"]) < 0.3
    assert greedy_complete(gpu, ["2+2="]) == greedy_complete(load("tw-small"), ["2+2="])


@pytest.mark.parametrize("name", ["small", "large"])
def test_measured_entropy_tracks_the_true_entropy(name, request, testbed):
    lm = request.getfixturevalue(name)
    report = eval_markov(lm, testbed, n_sequences=5)
    assert report["positions"] == 5 * testbed.markov.length
    assert abs(report["model_entropy_mean"] - report["true_entropy_mean"]) < 0.2
    assert report["correlation"] > 0.9
    # Cross-entropy can approach the true entropy but not go far below it.
    assert report["cross_entropy"] > report["true_entropy_mean"] - 0.3

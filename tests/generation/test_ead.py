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


def test_records_carry_the_top_alternatives_of_the_model_that_wrote_each_token(small, large):
    import torch

    g = generate_ead(small, large, "markov: ka ro", up=1.5, down=1.5, max_new_tokens=12,
                     top_logprobs=3)
    assert {t.model for t in g.tokens} == {"tw-small", "tw-large"}
    ids = small.encode("markov: ka ro", add_bos=True)
    for rec in g.tokens:
        writer = small if rec.model == "tw-small" else large
        with torch.no_grad():
            logp = writer.forward(torch.tensor([ids])).logits[0, -1].double().log_softmax(-1)
        values, top = logp.topk(3)
        assert list(rec.top_ids) == top.tolist()
        assert rec.top_logprobs == pytest.approx(values.tolist(), abs=1e-4)
        ids.append(rec.id)
    plain = generate_ead(small, large, "markov: ka ro", up=1.5, down=1.5, max_new_tokens=12)
    assert [t.id for t in plain.tokens] == [t.id for t in g.tokens]
    assert all(t.top_ids == () for t in plain.tokens)


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
    ({"up": 1.0, "down": 2.0}, r"down=2.0: allowed a number from 0 to up=1 "),
    ({"up": 1.0, "down": -1}, r"down=-1: allowed a number in \[0, inf\)"),
    ({"window": 0}, "window=0"),
    ({"max_new_tokens": 0}, "max_new_tokens=0"),
    ({"prompt": " "}, "prompt=' '"),
    ({"stop": ""}, "stop=''"),
    ({"stop": [3]}, r"stop=\[3\]"),
    ({"top_logprobs": 2000}, "top_logprobs=2000: allowed an integer from 0 to 1024"),
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


def _naive_small_judged(small, large, prompt, up, down, window, min_run, n):
    """judge="small" without caches: full forwards, the rule written out step by step."""
    import math

    import torch

    seq = small.encode(prompt, add_bos=True)
    bits, out, active, last, run = [], [], "small", None, 0
    with torch.inference_mode():
        for _ in range(n):
            lp = small.forward(torch.tensor([seq])).logits[0, -1].float().log_softmax(-1)
            bits.append(float(-(lp.exp() * lp).sum()) / math.log(2))
            mean = sum(bits[-window:]) / len(bits[-window:])
            if last is None or run >= min_run:
                if active == "small" and mean > up:
                    active = "large"
                elif active == "large" and mean < down:
                    active = "small"
            lm = small if active == "small" else large
            tok = int(lm.forward(torch.tensor([seq])).logits[0, -1].argmax())
            run = run + 1 if active == last else 1
            last = active
            if tok == lm.eos_token_id:
                break
            out.append((tok, lm.name))
            seq.append(tok)
    return out


@pytest.mark.parametrize(("up", "down", "window", "min_run"),
                         [(1.8, 1.2, 3, 1), (2.0, 1.5, 2, 2), (1.0, 1.0, 2, 1), (1.5, 1.5, 1, 1)])
def test_small_judge_matches_a_naive_loop(small, large, up, down, window, min_run):
    # The answer, then a new question: the small model writes, the large one takes over
    # mid-way and hands back. The windowed cases were checked to route differently from a
    # rule that looks at the latest entropy alone.
    prompt = PROMPTS[0]
    g = generate_ead(small, large, prompt, up=up, down=down, window=window,
                     min_run=min_run, judge="small", max_new_tokens=20)
    want = _naive_small_judged(small, large, prompt, up, down, window, min_run, 20)
    assert [(t.id, t.model) for t in g.tokens] == want
    assert 0 < g.large_share < 1  # the case switches, so the rule is exercised both ways
    # the small model reads every token exactly once: the prompt and all but the last token
    n_prompt = len(small.encode(prompt, add_bos=True))
    assert g.tokens_processed["tw-small"] == n_prompt + len(g.tokens) - 1


@pytest.mark.parametrize("prompt", PROMPTS[:2])
def test_small_judge_at_the_limits_gives_each_model_alone(small, large, prompt):
    only_small = generate_ead(small, large, prompt, up=1e9, judge="small", max_new_tokens=6)
    assert [t.id for t in only_small.tokens] == [
        t.id for t in tw.generate(small, prompt, max_new_tokens=6).tokens]
    only_large = generate_ead(small, large, prompt, up=1e-9, down=1e-9, judge="small",
                              max_new_tokens=6)
    assert [t.id for t in only_large.tokens] == [
        t.id for t in tw.generate(large, prompt, max_new_tokens=6).tokens]
    assert only_large.large_share == 1.0


def test_small_judge_differs_from_active_judge_where_large_stays_unsure(small, large):
    # "active" keeps the large model while its own entropy is high; "small" hands back as soon
    # as the small model is sure, so over a Markov line the two rules disagree on who writes.
    kw = {"up": 1.5, "down": 1.5, "window": 1, "max_new_tokens": 30}
    a = generate_ead(small, large, "markov: ka ro", judge="active", **kw)
    s = generate_ead(small, large, "markov: ka ro", judge="small", **kw)
    assert [t.model for t in a.tokens] != [t.model for t in s.tokens]


def test_bad_judge(small, large):
    with pytest.raises(TokenwiseError, match="judge='large'"):
        generate_ead(small, large, "hi", judge="large")

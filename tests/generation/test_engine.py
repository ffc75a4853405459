"""The decode loop: equal to transformers when greedy, reproducible when sampled, records."""

from __future__ import annotations

import math

import pytest
import torch

import tokenwise as tw
from tokenwise.errors import TokenwiseError
from tokenwise.sampling import Chain, Temperature, TopK, TopP

PROMPTS = ["Q: What is the job of Trather Shai?\nA:", "5+3=", "markov: ka ro",
           "Memo:\nThe code of Brelix is 382.\nQ: What is the code of Brelix?\nA:"]


def _hf_greedy(lm, prompt: str, n: int) -> list[int]:
    ids = torch.tensor([lm.encode(prompt, add_bos=True)])
    out = lm.hf_model.generate(ids, max_new_tokens=n, do_sample=False, min_new_tokens=n,
                               pad_token_id=lm.tokenizer.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


def test_greedy_equals_transformers_generate_batched_and_alone(large):
    batch = tw.generate(large, PROMPTS, max_new_tokens=8)
    for prompt, gen in zip(PROMPTS, batch, strict=True):
        ours = [t.id for t in gen.tokens]
        assert ours == _hf_greedy(large, prompt, len(ours))
        assert ours == [t.id for t in tw.generate(large, prompt, max_new_tokens=8).tokens]


def test_same_seed_same_output_batched_or_alone(large):
    sampler = Chain([Temperature(1.3), TopP(0.95)])
    together = tw.generate(large, PROMPTS, sampler, max_new_tokens=12, seed=[5, 6, 7, 8])
    for i, prompt in enumerate(PROMPTS):
        alone = tw.generate(large, prompt, sampler, max_new_tokens=12, seed=5 + i)
        assert alone.text == together[i].text and alone.seed == 5 + i
    again = tw.generate(large, PROMPTS[2], sampler, max_new_tokens=12, seed=7)
    assert again.text == together[2].text


def test_sampling_follows_the_model_distribution(small):
    # First token after "markov: ka": compare sampled frequencies with the softmax.
    prompt = "markov: ka"
    ids = torch.tensor([small.encode(prompt, add_bos=True)])
    probs = small.forward(ids).logits[0, -1].float().softmax(-1)
    n = 400
    gens = tw.generate(small, [prompt] * n, TopK(small.vocab_size), max_new_tokens=1,
                       seed=list(range(n)))
    counts = torch.bincount(torch.tensor([g.tokens[0].id for g in gens]),
                            minlength=small.vocab_size).float()
    top = probs.topk(3).indices
    for t in top.tolist():  # each frequent token within 4 standard errors
        p = float(probs[t])
        assert abs(counts[t] / n - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-3


def test_records_describe_the_model_distribution(large):
    gen = tw.generate(large, "7+2=", max_new_tokens=4)
    first = gen.tokens[0]
    ids = torch.tensor([large.encode("7+2=", add_bos=True)])
    logits = large.forward(ids).logits[0, -1].float()
    assert first.rank == 1 and first.id == int(logits.argmax())
    assert first.logprob == pytest.approx(float(logits.log_softmax(-1).max()), abs=1e-5)
    assert first.entropy == pytest.approx(float(tw.signals.entropy(logits)), abs=1e-5)
    assert all(t.logprob <= 0 and t.entropy >= 0 and t.rank >= 1 for t in gen.tokens)


def test_records_carry_the_top_alternatives_of_the_model_distribution(large):
    # the decode loop's own pass: what the server reports as top_logprobs (issue 16)
    gens = tw.generate(large, ["7+2=", "markov: ka"], max_new_tokens=3, top_logprobs=4)
    for prompt, gen in zip(["7+2=", "markov: ka"], gens, strict=True):
        ids = large.encode(prompt, add_bos=True)
        for rec in gen.tokens:
            with torch.no_grad():
                logp = large.forward(torch.tensor([ids])).logits[0, -1].double().log_softmax(-1)
            values, top = logp.topk(4)
            assert list(rec.top_ids) == top.tolist()
            assert rec.top_logprobs == pytest.approx(values.tolist(), abs=1e-4)
            assert rec.top_ids[0] == rec.id and rec.top_logprobs[0] == rec.logprob  # greedy
            ids.append(rec.id)
    as_json = gens[0].tokens[0].as_dict()
    assert as_json["top_ids"] == list(gens[0].tokens[0].top_ids)


def test_records_carry_no_alternatives_unless_asked(large):
    gen = tw.generate(large, "7+2=", max_new_tokens=2)
    assert all(t.top_ids == () and t.top_logprobs == () for t in gen.tokens)
    assert set(gen.tokens[0].as_dict()) == {"id", "text", "logprob", "entropy", "varentropy",
                                            "rank", "step", "row", "model"}
    sampled = tw.generate(large, "7+2=", "top_p", max_new_tokens=2, seed=1)
    with_top = tw.generate(large, "7+2=", "top_p", max_new_tokens=2, seed=1, top_logprobs=3)
    assert [t.id for t in with_top.tokens] == [t.id for t in sampled.tokens]


def test_stop_strings_eos_and_length(large):
    g = tw.generate(large, "7+2=", max_new_tokens=6, stop="\n")
    assert g.text == "9" and g.finish_reason == "stop"
    g = tw.generate(large, "markov: ka", max_new_tokens=3)
    assert g.finish_reason == "length" and len(g.tokens) == 3


def test_streaming_yields_the_same_tokens(large):
    streamed = list(tw.generate(large, PROMPTS[:2], max_new_tokens=5, stream=True))
    finished = tw.generate(large, PROMPTS[:2], max_new_tokens=5)
    for row in range(2):
        assert [r.id for r in streamed if r.row == row] == [t.id for t in finished[row].tokens]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"prompt": ""}, "non-empty string"),
    ({"prompt": []}, "no prompt"),
    ({"max_new_tokens": 0}, "max_new_tokens=0"),
    ({"prompt": "ka " * 300}, "exceeds the context length 256"),
    ({"sampler": "nucleus"}, "unknown sampler 'nucleus'"),
    ({"sampler": "top_k"}, "sampler 'top_k' needs top_k"),
    ({"sampler": "top_p", "seed": -1}, "seed=-1"),
    # torch.Generator.manual_seed takes at most 2**64 - 1 (issue 15: a traceback, not this)
    ({"sampler": "top_p", "seed": 2**64}, r"seed=18446744073709551616: allowed an integer "
                                          r"from 0 to 2\*\*64 - 1"),
    ({"sampler": "top_p", "prompt": ["a", "b"], "seed": [1, 10**23]}, "seed=1000000000000"),
    ({"sampler": "top_p", "seed": 1.5}, "seed=1.5"),
    ({"prompt": ["a", "b"], "seed": [1]}, "1 seeds for 2 prompts"),
    ({"stop": [""]}, "stop="),
    ({"top_logprobs": -1}, "top_logprobs=-1: allowed an integer from 0 to 1024"),
    ({"top_logprobs": 1025}, "top_logprobs=1025"),
    ({"top_logprobs": True}, "top_logprobs=True"),
])
def test_bad_input(small, kwargs, match):
    args = {"prompt": "hello", **kwargs}
    with pytest.raises(TokenwiseError, match=match):
        tw.generate(small, args.pop("prompt"), **args)


def test_streaming_checks_arguments_at_the_call(small):
    with pytest.raises(TokenwiseError, match="max_new_tokens=0"):
        tw.generate(small, "hi", max_new_tokens=0, stream=True)


def test_the_largest_seed_torch_takes_is_accepted(small):
    g = tw.generate(small, "hi", "top_p", max_new_tokens=2, seed=2**64 - 1)
    assert g.seed == 2**64 - 1 and len(g.tokens) >= 1


def test_greedy_generations_record_no_seed(small):
    assert tw.generate(small, "hi", max_new_tokens=2, seed=3).seed is None
    assert tw.generate(small, "hi", "top_p", max_new_tokens=2, seed=3).seed == 3


def test_every_generation_config_end_id_stops_as_in_transformers():
    # Llama-3-style models list several end-of-text ids in generation_config.json: a copy of
    # tw-small given the id it greedily writes third as a second EOS must stop right before it,
    # as transformers' generate does, and say "eos".
    import copy

    from tokenwise.models import LanguageModel, load

    base = load("tw-small")
    prompt = "markov: ka ro"
    free = tw.generate(base, prompt, max_new_tokens=6)
    third = free.tokens[2].id
    assert third != base.eos_token_id
    hf = copy.deepcopy(base.hf_model)
    hf.generation_config.eos_token_id = [base.eos_token_id, third]
    lm = LanguageModel(hf, base.tokenizer, name="tw-small-two-eos")
    assert lm.end_token_ids == {base.eos_token_id, third}
    gen = tw.generate(lm, prompt, max_new_tokens=6)
    assert [t.id for t in gen.tokens] == [t.id for t in free.tokens[:2]]
    assert gen.finish_reason == "eos"
    ids = torch.tensor([lm.encode(prompt, add_bos=True)])
    theirs = hf.generate(ids, max_new_tokens=6, do_sample=False,
                         pad_token_id=lm.tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()
    assert theirs == [t.id for t in gen.tokens] + [third]  # transformers keeps the EOS it hit

    from tokenwise.generation.ead import generate_ead

    ead = generate_ead(lm, lm, prompt, up=100.0, max_new_tokens=6)  # the small one writes all
    assert [t.id for t in ead.tokens] == [t.id for t in free.tokens[:2]]
    assert ead.finish_reason == "eos"

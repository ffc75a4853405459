"""``model.generate(custom_generate=tokenwise.custom_generate_path(), ...)`` runs our loop."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
from transformers import GenerationConfig
from transformers.generation.utils import GenerateDecoderOnlyOutput

import tokenwise as tw
from tokenwise.errors import TokenwiseError
from tokenwise.generation.ead import generate_ead
from tokenwise.sampling import Chain, MirostatV2, Temperature, TopH, TopK


def hf_generate(lm, ids, **kwargs):
    """generate() through the tokenwise directory, as a transformers user calls it."""
    return lm.hf_model.generate(ids, custom_generate=tw.custom_generate_path(),
                                trust_remote_code=True, tokenizer=lm.tokenizer, **kwargs)


def prompt_ids(lm, prompt):
    return torch.tensor([lm.encode(prompt, add_bos=True)])


def left_padded(lm, prompts):
    rows = [lm.encode(p, add_bos=True) for p in prompts]
    width = max(len(r) for r in rows)
    pad = lm.tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def test_the_directory_has_the_layout_transformers_loads():
    root = Path(tw.custom_generate_path())
    assert isinstance(tw.custom_generate_path(), str)  # transformers ignores a Path there
    assert (root / "custom_generate" / "generate.py").is_file()
    assert root.is_relative_to(Path(tw.__file__).parent)  # shipped inside the package


def test_runs_our_loop_and_equals_tokenwise_generate(small):
    ids = prompt_ids(small, "markov: ka")
    sampler = Chain([TopH(0.4), Temperature(0.8)])
    out = hf_generate(small, ids, sampler=sampler, seed=3, max_new_tokens=8, top_logprobs=2,
                      return_dict_in_generate=True)
    ours = tw.generate(small, "markov: ka", sampler, seed=3, max_new_tokens=8, top_logprobs=2)
    assert isinstance(out, GenerateDecoderOnlyOutput)
    assert out.sequences[0, :ids.shape[1]].tolist() == ids[0].tolist()
    assert out.sequences[0, ids.shape[1]:].tolist() == [t.id for t in ours.tokens]
    assert out.tokenwise_records == [ours.tokens]  # entropies, logprobs, ranks, top-2
    assert out.tokenwise_generations[0].text == ours.text
    assert out.scores is None and out.logits is None


def test_mirostat_and_a_sampler_by_name(small):
    ids = prompt_ids(small, "markov: ka")
    out = hf_generate(small, ids, sampler=MirostatV2(tau=2.0, eta=0.5), seed=1,
                      max_new_tokens=6)
    ours = tw.generate(small, "markov: ka", MirostatV2(tau=2.0, eta=0.5), seed=1,
                       max_new_tokens=6)
    assert out[0, ids.shape[1]:].tolist() == [t.id for t in ours.tokens]
    assert [r.entropy for r in out.tokenwise_records[0]] == [t.entropy for t in ours.tokens]
    named = hf_generate(small, ids, sampler="top_h", seed=1, max_new_tokens=3)
    assert named[0, ids.shape[1]:].tolist() == [
        t.id for t in tw.generate(small, "markov: ka", "top_h", seed=1, max_new_tokens=3).tokens]


def test_greedy_batch_equals_transformers_own_generate_with_end_tokens_and_padding(small):
    ids, mask = left_padded(small, ["7+2=", "Q: What is the job of Trather Shai?\nA:"])
    newline = small.encode("\n")[-1]
    # two end ids: a row keeps the one that ended it, then the pad id, as transformers does
    args = {"attention_mask": mask, "max_new_tokens": 10, "eos_token_id": [2, newline]}
    out = hf_generate(small, ids, **args)
    theirs = small.hf_model.generate(ids, do_sample=False, **args)
    assert out.tolist() == theirs.tolist()
    new = out[:, ids.shape[1]:]
    assert newline in new[0].tolist() and new[0, -1] == small.tokenizer.pad_token_id
    assert [g.finish_reason for g in out.tokenwise_generations] == ["eos", "eos"]
    assert [g.seed for g in out.tokenwise_generations] == [None, None]
    assert out.tokenwise_records[0][0].text == "9"


def test_the_configs_sampling_becomes_our_samplers(small):
    ids = prompt_ids(small, "markov: ka")
    out = hf_generate(small, ids, do_sample=True, temperature=0.7, top_k=3, seed=4,
                      max_new_tokens=5)
    ours = tw.generate(small, "markov: ka", Chain([Temperature(0.7), TopK(3)]), seed=4,
                       max_new_tokens=5)
    assert out[0, ids.shape[1]:].tolist() == [t.id for t in ours.tokens]
    # transformers' default top_k=50 comes along when nothing sets top_k, as in generate()
    plain = hf_generate(small, ids, do_sample=True, seed=4, max_new_tokens=5)
    assert plain[0, ids.shape[1]:].tolist() == [
        t.id for t in tw.generate(small, "markov: ka", TopK(50), seed=4, max_new_tokens=5).tokens]


def test_num_return_sequences_give_one_row_per_seed(small):
    ids = prompt_ids(small, "markov: ka")
    out = hf_generate(small, ids, sampler=TopK(20), num_return_sequences=3, seed=7,
                      max_new_tokens=6)
    assert out.shape[0] == 3
    for r in range(3):
        ours = tw.generate(small, "markov: ka", TopK(20), seed=7 + r, max_new_tokens=6)
        assert out[r, ids.shape[1]:].tolist() == [t.id for t in ours.tokens]
    assert len({tuple(row) for row in out.tolist()}) > 1


def test_large_runs_entropy_adaptive_decoding(small, large):
    ids = prompt_ids(small, "7+2=")
    out = hf_generate(small, ids, large=large.hf_model, ead={"up": 0.5}, max_new_tokens=3,
                      stop_strings="\n", return_dict_in_generate=True)
    ours = generate_ead(small, large, "7+2=", up=0.5, max_new_tokens=3, stop="\n")
    assert out.sequences[0, ids.shape[1]:].tolist() == [t.id for t in ours.tokens]
    assert [(r.text, r.model) for r in out.tokenwise_records[0]] == [
        (t.text, t.model) for t in ours.tokens]
    assert out.tokenwise_generations[0].large_share == ours.large_share > 0


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"num_beams": 2}, r"num_beams=2 \(passed to generate\(\)\).*without custom_generate"),
    ({"repetition_penalty": 1.2}, r"repetition_penalty=1\.2.*Penalties"),
    ({"min_new_tokens": 3}, r"min_new_tokens=3"),
    ({"output_scores": True}, r"output_scores=True is not available"),
    ({"logits_processor": [TopK(2).as_hf()]}, r"logits_processor=.*sampler="),
    ({"streamer": object()}, r"streamer="),
    ({"sampler": TopK(3), "temperature": 0.7}, r"temperature=0\.7 beside sampler="),
    ({"sampler": TopK(3), "do_sample": False}, r"do_sample=False beside sampler="),
    ({"max_tokens": 3}, r"unknown argument\(s\) max_tokens"),
    ({"ead": {"up": 1.0}}, r"ead= without large="),
    ({"do_sample": True, "top_h": 0.4}, r"top_h=0\.4.*TopH"),
    ({"num_return_sequences": 2}, r"num_return_sequences=2 with greedy"),
])
def test_what_the_loop_would_not_apply_is_refused_by_name(small, kwargs, match):
    with pytest.raises(TokenwiseError, match=match):
        hf_generate(small, prompt_ids(small, "7+2="), max_new_tokens=2, **kwargs)


def test_bad_inputs_are_named(small):
    ids = prompt_ids(small, "7+2=")
    with pytest.raises(TokenwiseError, match="tokenizer= is required"):
        small.hf_model.generate(ids, custom_generate=tw.custom_generate_path(),
                                trust_remote_code=True, max_new_tokens=2)
    right_padded = torch.ones_like(ids)
    right_padded[0, -1] = 0
    with pytest.raises(TokenwiseError, match=r"row 0 of attention_mask is \[1, 1, 1, 1, 0\]"):
        hf_generate(small, ids, attention_mask=right_padded, max_new_tokens=2)
    with pytest.raises(TokenwiseError, match=r"max_length=3 leaves no room"):
        hf_generate(small, ids, max_length=3)
    with pytest.raises(TokenwiseError, match=r"ead=.*unknown option\(s\) upp"):
        hf_generate(small, ids, large=small.hf_model, ead={"upp": 1.0}, max_new_tokens=2)


def test_a_value_in_the_models_own_config_is_named_with_the_way_out(small, monkeypatch):
    monkeypatch.setattr(small.hf_model.generation_config, "repetition_penalty", 1.3)
    ids = prompt_ids(small, "7+2=")
    with pytest.raises(TokenwiseError, match=r"repetition_penalty=1\.3 \(in model\."
                                             r"generation_config\).*repetition_penalty=1\.0"):
        hf_generate(small, ids, max_new_tokens=2)
    assert hf_generate(small, ids, max_new_tokens=2, repetition_penalty=1.0).shape[1] > 4


def test_a_clean_config_and_a_sampler_go_together(small):
    ids = prompt_ids(small, "markov: ka")
    config = tw.hf_generation_config(small, max_new_tokens=5)
    out = hf_generate(small, ids, generation_config=config, sampler=TopK(5), seed=2)
    ours = tw.generate(small, "markov: ka", TopK(5), seed=2, max_new_tokens=5)
    assert out[0, ids.shape[1]:].tolist() == [t.id for t in ours.tokens]
    with pytest.raises(TokenwiseError, match=r"temperature=0\.5 beside sampler"):
        hf_generate(small, ids, generation_config=GenerationConfig(temperature=0.5),
                    sampler=TopK(5))


def test_loads_from_disk_without_the_network_and_keeps_the_training_mode(small, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError(f"network access: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ids = prompt_ids(small, "7+2=")
    small.hf_model.train()
    try:
        out = hf_generate(small, ids, max_new_tokens=2, revision="main")
        assert small.hf_model.training  # put back as the caller had it
    finally:
        small.hf_model.eval()
    assert out.shape == (1, ids.shape[1] + 2)
    assert os.environ["HF_HUB_OFFLINE"] == "1"

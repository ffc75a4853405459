"""``as_hf`` beside transformers' own warpers: the warning, and a config where ours alone decide."""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

import tokenwise as tw
from tokenwise.errors import TokenwiseError
from tokenwise.sampling import Chain, Temperature, TopH, TopK, TopP
from tokenwise.sampling.hf import TransformersWarpersWarning, hf_generation_config

PROMPT = torch.tensor([[1, 7, 9, 4, 11]])


def tiny_llama(**generation: object) -> LlamaForCausalLM:
    """A random 32-token Llama whose generation config holds ``generation``."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=64, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0)
    model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0,
                                               **generation)
    return model


def sampled_steps(model, sampler, **kwargs):
    """Raw logits and the scores generate() sampled from, step by step."""
    torch.manual_seed(1)
    out = model.generate(PROMPT, logits_processor=[sampler.as_hf()], max_new_tokens=6,
                         output_scores=True, output_logits=True, return_dict_in_generate=True,
                         **kwargs)
    return out.logits, out.scores


def test_as_hf_warns_when_the_models_config_stacks_warpers():
    model = tiny_llama(do_sample=True, top_k=5, temperature=0.7)
    with pytest.warns(TransformersWarpersWarning,
                      match=r"temperature=0\.7 \(model\.generation_config\), top_k=5 "
                            r"\(model\.generation_config\).*hf_generation_config") as caught:
        TopP(0.5).as_hf(model)
    assert caught[0].filename == __file__  # points at the call, so it shows once per call site


def test_the_warning_is_true_transformers_scales_and_cuts_after_ours():
    model = tiny_llama(do_sample=True, top_k=5, temperature=0.7)
    sampler = TopP(0.5)
    logits, scores = sampled_steps(model, sampler)
    for raw, used in zip(logits, scores, strict=True):
        ours = sampler(raw)
        assert int(used.isfinite().sum()) <= 5 < int(ours.isfinite().sum())
        kept = used.isfinite()
        torch.testing.assert_close(used[kept], ours[kept] / 0.7)


def test_with_hf_generation_config_each_step_samples_from_exactly_our_scores():
    model = tiny_llama(do_sample=True, top_k=5, temperature=0.7, max_new_tokens=3)
    config = tw.hf_generation_config(model, max_new_tokens=6)
    sampler = Chain([TopH(0.4), Temperature(0.8)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning for the clean config
        sampler.as_hf(model, generation_config=config)
    logits, scores = sampled_steps(model, sampler, generation_config=config)
    assert len(scores) >= 2
    for raw, used in zip(logits, scores, strict=True):
        assert torch.equal(used, sampler(raw))  # nothing of transformers' after ours
        assert 1 <= int(used.isfinite().sum()) < 32
    # the model's own config is untouched
    assert (model.generation_config.top_k, model.generation_config.temperature) == (5, 0.7)


def test_a_plain_config_still_gets_transformers_default_top_k_and_no_sampling():
    model = tiny_llama()
    with pytest.warns(TransformersWarpersWarning) as caught:
        TopK(40).as_hf(model)
    message = str(caught[0].message)
    assert "top_k=50 (transformers' default)" in message
    assert "do_sample is False (transformers' default)" in message
    # the default top-k really runs: do_sample=True alone keeps at most 50 of 100 tokens
    config = LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    torch.manual_seed(0)
    wide = LlamaForCausalLM(config).eval()
    wide.generation_config = GenerationConfig(eos_token_id=2, pad_token_id=0)
    _, scores = sampled_steps(wide, TopK(80), do_sample=True)
    assert int(scores[0].isfinite().sum()) == 50


def test_as_hf_without_a_model_checks_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        processor = TopK(2).as_hf()
    assert processor(None, torch.tensor([[1.0, 3.0, 2.0]])).isinf().tolist() == [[True, False,
                                                                                False]]


def test_hf_generation_config_keeps_lengths_and_ids_and_neutralises_every_warper():
    model = tiny_llama(do_sample=False, top_k=5, top_p=0.8, min_p=0.1, typical_p=0.9,
                       epsilon_cutoff=3e-4, eta_cutoff=3e-4, temperature=0.7, max_new_tokens=7)
    config = hf_generation_config(model)
    assert (config.eos_token_id, config.pad_token_id, config.bos_token_id) == (2, 0, 1)
    assert config.max_new_tokens == 7 and config.do_sample is True
    assert (config.temperature, config.top_k, config.top_p, config.min_p, config.typical_p,
            config.epsilon_cutoff, config.eta_cutoff) == (1.0, 0, 1.0, 0.0, 1.0, 0.0, 0.0)
    assert hf_generation_config(model, max_new_tokens=3, pad_token_id=5).pad_token_id == 5
    # a LanguageModel works as well as the transformers model inside it
    assert tw.hf_generation_config(tw.load("tw-small")).eos_token_id == 2


@pytest.mark.parametrize(("override", "match"), [
    ({"temperature": 0.7}, r"temperature=0\.7: transformers would apply it after"),
    ({"top_k": None}, r"top_k=5"),  # None is filled from the model's config by generate()
    ({"do_sample": False}, r"do_sample=False: allowed True"),
    ({"max_tokens": 3}, r"max_tokens: not generation config fields"),
])
def test_hf_generation_config_refuses_overrides_that_take_the_choice_away(override, match):
    model = tiny_llama(top_k=5)
    with pytest.raises(TokenwiseError, match=match):
        hf_generation_config(model, **override)


def test_top_h_in_the_models_config_cannot_be_neutralised():
    model = tiny_llama(do_sample=True, top_h=0.4)
    with pytest.warns(TransformersWarpersWarning, match=r"top_h=0\.4"):
        TopK(3).as_hf(model)
    with pytest.raises(TokenwiseError, match=r"top_h=0\.4.*model\.generation_config\.top_h = "
                                             r"None"):
        hf_generation_config(model)
    model.generation_config.top_h = None
    assert hf_generation_config(model).top_h is None


def test_bad_model_is_named():
    with pytest.raises(TokenwiseError, match="allowed a transformers model"):
        hf_generation_config(object())

"""The vLLM server's spec translation of ``logit_bias`` and the penalties: vLLM's own
``SamplingParams`` fields, in vLLM's order (logit bias, typical, penalties, temperature, ...),
chains in another order refused unless the two orders agree (no vLLM needed)."""

from __future__ import annotations

import pytest
import torch

from tokenwise.errors import TokenwiseError
from tokenwise.serving.sampler_spec import sampler_spec
from tokenwise.serving.schemas import CompletionRequest
from tokenwise.vllm.server import MAX_SEED, engine_spec, native_and_extra


def spec(**fields):
    return sampler_spec(CompletionRequest(model="m", prompt="x", **fields))


def chain(*steps):
    return spec(tokenwise={"sampler": list(steps)})


def test_top_level_fields_become_vllms_own_fields_in_vllms_order():
    s = engine_spec(spec(logit_bias={"5": -100, "2": 1.5}, presence_penalty=0.5,
                         frequency_penalty=-0.25, repetition_penalty=1.2, temperature=0.7,
                         top_p=0.9, typical_p=0.95))
    assert [name for name, _ in s.steps] == ["logit_bias", "typical", "penalties",
                                             "temperature", "top_p"]
    native, extra = native_and_extra(s)
    assert native == {"temperature": 0.7, "top_k": 0, "top_p": 0.9, "min_p": 0.0,
                      "logit_bias": {2: 1.5, 5: -100.0}, "presence_penalty": 0.5,
                      "frequency_penalty": -0.25, "repetition_penalty": 1.2}
    assert extra == {"typical": 0.95}


def test_greedy_with_penalties_stays_greedy_after_them():
    native, _ = native_and_extra(engine_spec(spec(temperature=0, frequency_penalty=1.0)))
    assert native["temperature"] == 0.0 and native["frequency_penalty"] == 1.0
    assert native_and_extra(spec(temperature=0, frequency_penalty=0.0)) == \
        ({"temperature": 0.0}, {})  # neutral penalties leave plain greedy decoding


@pytest.mark.parametrize("steps", [
    [{"name": "logit_bias", "bias": {"3": 1}}, {"name": "penalties", "repetition_penalty": 2}],
    # additive penalties commute with a bias
    [{"name": "penalties", "presence_penalty": 1}, {"name": "logit_bias", "bias": {"3": 1}}],
    [{"name": "typical", "mass": 0.9}, {"name": "penalties", "frequency_penalty": 1}],
    [{"name": "temperature", "temperature": 1.0}, {"name": "penalties", "presence_penalty": 1}],
    [{"name": "penalties", "presence_penalty": 1}, {"name": "top_h", "alpha": 0.4}],
])
def test_chains_vllm_runs_as_written(steps):
    native, _ = native_and_extra(chain(*steps))
    assert "presence_penalty" in native or "logit_bias" in native


@pytest.mark.parametrize("steps, message", [
    ([{"name": "penalties", "repetition_penalty": 2}, {"name": "logit_bias", "bias": {"3": 1}}],
     "vLLM applies logit_bias before penalties"),
    ([{"name": "penalties", "presence_penalty": 1}, {"name": "typical", "mass": 0.9}],
     "vLLM applies typical before penalties"),
    ([{"name": "typical", "mass": 0.9}, {"name": "logit_bias", "bias": {"3": 1}}],
     "vLLM applies logit_bias before typical"),
    ([{"name": "temperature", "temperature": 0.5}, {"name": "penalties", "presence_penalty": 1}],
     "vLLM applies penalties before temperature"),
    ([{"name": "top_k", "top_k": 3}, {"name": "logit_bias", "bias": {"3": 1}}],
     "vLLM applies logit_bias before top_k"),
    ([{"name": "logit_bias", "bias": {"3": 1}}, {"name": "logit_bias", "bias": {"4": 1}}],
     "'logit_bias' twice"),
])
def test_chains_in_another_order_are_refused_naming_the_steps(steps, message):
    with pytest.raises(TokenwiseError, match=message):
        native_and_extra(chain(*steps))


def test_the_orders_it_accepts_give_the_same_logits():
    # The commuting pair vLLM reorders: a bias beside presence and frequency penalties.
    logits = torch.randn(2, 12, generator=torch.Generator().manual_seed(0))
    a = chain({"name": "penalties", "presence_penalty": 1, "frequency_penalty": 0.5},
              {"name": "logit_bias", "bias": {"3": 2.0}}).build()
    b = chain({"name": "logit_bias", "bias": {"3": 2.0}},
              {"name": "penalties", "presence_penalty": 1, "frequency_penalty": 0.5}).build()
    for sampler in (a, b):
        sampler.observe_prompt([[1], [2]])
        sampler(logits)
        sampler.observe(torch.tensor([3, 4]))
    assert torch.allclose(a(logits), b(logits))


@pytest.mark.parametrize("prompt, refused_from", [
    ([1, 2, 3], MAX_SEED + 1),            # one prompt of token ids: seeds seed .. seed + n - 1
    ("x", MAX_SEED + 1),
    ([[1], [2], [3]], MAX_SEED - 1),      # three prompts: seed + 2 is the last seed used
])
def test_seed_range_counts_a_token_id_prompt_as_one_prompt(prompt, refused_from):
    from tokenwise.serving.errors import APIError
    from tokenwise.vllm.server import VLLMBackend

    def check(seed):
        VLLMBackend._check_seed(None, CompletionRequest(model="m", prompt=prompt, seed=seed))

    check(refused_from - 1)
    if refused_from <= MAX_SEED:
        with pytest.raises(APIError, match="seed="):
            check(refused_from)

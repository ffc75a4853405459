"""``logit_bias`` and the penalties on a real vLLM engine, as the vLLM server maps them
(:func:`tokenwise.vllm.server.native_and_extra`): greedy tokens equal tokenwise's own decode
loop with the same chain, so both count the same history (the prompt for the repetition
penalty, the generated tokens for all three)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm")

from vllm import SamplingParams
from vllm.inputs import TokensPrompt

import tokenwise as tw
from tokenwise.models import load
from tokenwise.serving.sampler_spec import sampler_spec
from tokenwise.serving.schemas import CompletionRequest
from tokenwise.vllm.server import engine_spec, native_and_extra

PROMPTS = ["markov: ka", "7+2=", "markov: lo zu"]
STEPS = 12


@pytest.fixture(scope="module")
def hf():
    return load("tw-small", dtype=torch.float32)


@pytest.mark.parametrize("fields", [
    {"frequency_penalty": 1.0, "presence_penalty": 0.5},
    {"repetition_penalty": 1.5},
    {"repetition_penalty": 0.8, "presence_penalty": -0.5},
    {"logit_bias": {"28": -100.0, "353": 4.0}, "frequency_penalty": 2.0},
])
def test_greedy_tokens_equal_the_embedded_decode_loop(llm, hf, fields):
    spec = engine_spec(sampler_spec(CompletionRequest(model="tw-small", prompt="x",
                                                      temperature=0, **fields)))
    native, extra = native_and_extra(spec)
    assert not extra
    prompts = [TokensPrompt(prompt_token_ids=hf.encode(p, add_bos=True)) for p in PROMPTS]
    outs = llm.generate(prompts, SamplingParams(max_tokens=STEPS, **native), use_tqdm=False)
    plain = llm.generate(prompts, SamplingParams(max_tokens=STEPS, temperature=0.0),
                         use_tqdm=False)
    changed = 0
    for prompt, out, base in zip(PROMPTS, outs, plain, strict=True):
        ours = tw.generate(hf, prompt, spec.build(), max_new_tokens=STEPS, seed=0)
        got = [t for t in out.outputs[0].token_ids if t not in hf.end_token_ids]
        assert got == [t.id for t in ours.tokens], (prompt, fields)
        changed += list(out.outputs[0].token_ids) != list(base.outputs[0].token_ids)
    assert changed, "the settings changed no answer: the comparison could not fail"

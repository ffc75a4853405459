"""sample_answers on a vLLM LLM: the same SampleSet, log-probabilities the HF model agrees with."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("vllm")

from vllm import SamplingParams
from vllm.inputs import TokensPrompt

from tokenwise import signals
from tokenwise.errors import TokenwiseError
from tokenwise.models import load
from tokenwise.uncertainty.samples import DEFAULT_TEMPLATE, SampleSet, sample_answers

QUESTION = "What is the job of Ana Velmora?"
ATOL = 1e-4


@pytest.fixture(scope="module")
def hf():
    return load("tw-small", dtype=torch.float32)


def _hf_scores(lm, prompt: str, tokens: list[int]) -> signals.TokenStats:
    ids = lm.encode(prompt, add_bos=True)
    logits = lm.forward(torch.tensor([ids + tokens])).logits[0, len(ids) - 1:-1]  # (N, V)
    return signals.token_stats(logits.float(), torch.tensor(tokens), top_k=0)


def _engine_tokens(llm, hf, prompt: str, n: int, temperature: float, seed: int) -> list:
    """The same seeded request sent straight to vLLM: its completions' token ids."""
    params = SamplingParams(n=n, temperature=temperature, seed=seed, max_tokens=12,
                            stop=["\n"], logprobs=0)
    out = llm.generate([TokensPrompt(prompt_token_ids=hf.encode(prompt, add_bos=True))],
                       params, use_tqdm=False)[0]
    done = []
    for c in sorted(out.outputs, key=lambda c: c.index):
        ids = list(c.token_ids)
        done.append(ids[:-1] if ids and ids[-1] == hf.eos_token_id else ids)
    return done


def test_answers_and_logprobs_agree_with_hf_rescoring(llm, hf):
    s = sample_answers(llm, QUESTION, n=5, temperature=1.0, seed=11, max_new_tokens=12)
    assert isinstance(s, SampleSet) and s.n == 5 and s.temperature == 1.0
    assert s.prompt == DEFAULT_TEMPLATE.replace("{question}", QUESTION)
    assert s.has_logprobs and s.reference is not None and s.reference.has_logprobs
    assert all(a.token_entropies is None for a in s.answers)  # logprobs=0: no entropies
    tokens = _engine_tokens(llm, hf, s.prompt, 5, 1.0, 11)
    for answer, ids in zip(s.answers, tokens, strict=True):
        assert answer.text == hf.decode(ids, skip_special_tokens=True).split("\n")[0].strip()
        ref = _hf_scores(hf, s.prompt, ids)
        np.testing.assert_allclose(answer.token_logprobs, ref.logprobs, atol=ATOL)
        assert answer.finish_reason in ("stop", "eos", "length")
    # the reference answer is the (n+1)-th seed at the low temperature
    ref_ids = _engine_tokens(llm, hf, s.prompt, 1, 0.1, 11 + 5)[0]
    np.testing.assert_allclose(s.reference.token_logprobs,
                               _hf_scores(hf, s.prompt, ref_ids).logprobs, atol=ATOL)
    again = sample_answers(llm, QUESTION, n=5, temperature=1.0, seed=11, max_new_tokens=12)
    assert again.texts == s.texts


def test_entropies_on_request(llm, hf):
    s = sample_answers(llm, QUESTION, n=3, seed=2, max_new_tokens=12, vllm_entropies=True,
                       reference_temperature=None)
    assert s.reference is None
    plain = sample_answers(llm, QUESTION, n=3, seed=2, max_new_tokens=12,
                           reference_temperature=None)
    assert s.texts == plain.texts  # the same seeded request, only more logprobs
    tokens = _engine_tokens(llm, hf, s.prompt, 3, 1.0, 2)
    for answer, ids in zip(s.answers, tokens, strict=True):
        ref = _hf_scores(hf, s.prompt, ids)
        np.testing.assert_allclose(answer.token_entropies, ref.entropies, atol=ATOL)
        np.testing.assert_allclose(answer.token_logprobs, ref.logprobs, atol=ATOL)


def test_checks_still_apply(llm):
    with pytest.raises(TokenwiseError, match="n=1"):
        sample_answers(llm, QUESTION, n=1)
    with pytest.raises(TokenwiseError, match="temperature=0"):
        sample_answers(llm, QUESTION, temperature=0)
    with pytest.raises(TokenwiseError, match="question"):
        sample_answers(llm, "  ")


def test_refuses_an_engine_that_returns_processed_or_logit_values(llm):
    from tokenwise.vllm import VLLMModel

    for mode in ("processed_logprobs", "raw_logits"):
        model = VLLMModel(llm)
        model._config = type("Cfg", (), {"logprobs_mode": mode, "__getattr__":
                                         lambda self, n, c=model._config: getattr(c, n)})()
        for entropies in (False, True):
            with pytest.raises(TokenwiseError, match=rf"logprobs_mode='{mode}'.*raw_logprobs"):
                sample_answers(model, QUESTION, n=2, vllm_entropies=entropies)

"""The perplexity compressor and token surprisal on a vLLM LLM against the HF model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("vllm")

import tokenwise.vllm as tv
from tokenwise.compression.perplexity import PerplexityCompressor, token_surprisal
from tokenwise.errors import TokenwiseError
from tokenwise.models import load

TEXT = ("The code of Tavoun is 917. The code of Brelix is 382. Ana Velmora works as a "
        "teacher in Grugri.")
DOCS = [TEXT, "Ana was born in Velmora. Her pet is a kitten.", "7+5=12. 9+3=12."]
QUESTION = "What is the code of Brelix?"
ATOL = 1e-4


@pytest.fixture(scope="module")
def hf():
    return load("tw-small", dtype=torch.float32)


def test_prompt_surprisal_equals_token_surprisal(llm, hf):
    ids = hf.encode(TEXT)
    np.testing.assert_allclose(tv.prompt_surprisal(llm, TEXT), token_surprisal(hf, ids),
                               atol=ATOL)
    prefix = hf.encode(QUESTION + "\n")
    np.testing.assert_allclose(tv.prompt_surprisal(llm, ids, prefix),
                               token_surprisal(hf, ids, prefix), atol=ATOL)
    # overlapping windows: every token scored once with the same left context
    np.testing.assert_allclose(tv.prompt_surprisal(llm, ids, prefix, window=8, stride=3),
                               token_surprisal(hf, ids, prefix, window=8, stride=3), atol=ATOL)
    assert tv.prompt_surprisal(llm, []).shape == (0,)


def test_long_text_is_read_in_windows(llm, hf):
    ids = hf.encode(" ".join([TEXT] * 14))
    model = tv.as_vllm_model(llm)
    assert len(ids) > model.context_length + 2  # longer than the engine's context
    got = tv.prompt_surprisal(llm, ids)
    assert got.shape == (len(ids),) and np.isfinite(got).all()
    # the same windows on the HF model (the engine keeps two positions of max_model_len)
    np.testing.assert_allclose(got, token_surprisal(hf, ids, window=model.context_length),
                               atol=ATOL)
    with pytest.raises(TokenwiseError, match="allowed 2"):
        model.prompt_logprobs([ids[:model.context_length + 2]])


@pytest.mark.parametrize("question", [None, QUESTION])
def test_compressor_keeps_the_same_words(llm, hf, question):
    ours, ref = PerplexityCompressor(llm), PerplexityCompressor(hf)
    assert isinstance(ours.lm, tv.VLLMModel) and ours.window == ours.lm.context_length
    # scores agree to float tolerance; the kept words are then the same unless two words'
    # scores tie within it (none do in these texts)
    a = ours.score_words(DOCS, question=question)
    b = ref.score_words(DOCS, question=question)
    np.testing.assert_array_equal(a.starts, b.starts)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-3)
    for rate in (0.3, 0.5):
        r1 = ours.compress(DOCS, rate=rate, question=question)
        r2 = ref.compress(DOCS, rate=rate, question=question)
        assert r1.text == r2.text and r1.tokens_after == r2.tokens_after
        assert ours.last_document_order == ref.last_document_order


def test_compressor_refuses_an_engine_that_returns_logits(llm):
    model = tv.VLLMModel(llm)
    model._config = type("Cfg", (), {"logprobs_mode": "processed_logits", "__getattr__":
                                     lambda self, n, c=model._config: getattr(c, n)})()
    with pytest.raises(TokenwiseError, match=r"logprobs_mode='processed_logits'.*logits"):
        PerplexityCompressor(model).compress(DOCS, rate=0.5, question=QUESTION)

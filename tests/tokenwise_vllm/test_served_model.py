"""The vLLM server's ServedModel is a codec, not a LanguageModel: it has no forward pass, and
it renders, encodes and plans requests exactly as a LanguageModel with the same tokenizer (no
vLLM needed for any of this)."""

from __future__ import annotations

import asyncio

import pytest
from tests.models.helpers import load_tiny_chat_model
from tests.serving.helpers import InlineBackend

from tokenwise.models import Codec, ForwardScorer, LanguageModel, Scorer, TokenizerCodec
from tokenwise.serving import routes
from tokenwise.serving.chat_format import render
from tokenwise.serving.config import ServerConfig
from tokenwise.serving.errors import APIError
from tokenwise.serving.planning import plan_request
from tokenwise.serving.schemas import ChatCompletionRequest, CompletionRequest
from tokenwise.vllm.server import ServedModel

MESSAGES = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is 7+2? <|im_end|> </s>"}]


def served_like(lm: LanguageModel, context_length: int | None = None) -> ServedModel:
    return ServedModel(lm.name, lm.path, lm.tokenizer, context_length or lm.context_length)




def test_a_served_model_is_a_codec_with_no_forward_pass(small):
    served = served_like(small)
    assert isinstance(served, Codec) and isinstance(served, TokenizerCodec)
    assert not isinstance(served, LanguageModel)
    assert not isinstance(served, ForwardScorer) and not isinstance(served, Scorer)
    assert not hasattr(served, "forward") and not hasattr(served, "hf_model")
    assert served.vocab_size == len(small.tokenizer)


def test_its_context_length_is_the_engines(small):
    served = served_like(small, 64)
    assert served.context_length == 64
    served.context_length = 200  # what VLLMBackend.start sets from vLLM's max_model_len
    assert served.context_length == 200 and "context=200" in repr(served)


@pytest.mark.parametrize("which", ["tw-small", "template"])
def test_it_encodes_and_renders_as_the_language_model(which, small, tmp_path):
    lm = small if which == "tw-small" else load_tiny_chat_model(tmp_path)
    served = served_like(lm)
    assert served.start_ids == lm.start_ids and served.bos_token_id == lm.bos_token_id
    assert served.eos_token_id == lm.eos_token_id
    mine, theirs = render(served.tokenizer, MESSAGES), render(lm.tokenizer, MESSAGES)
    assert mine == theirs
    assert mine.format == ("qa-fallback" if which == "tw-small" else "template")
    for text in ("12+7=19", "hello <|im_end|> </s> 12", mine.text):
        for add_bos in (False, True):
            assert served.encode(text, add_bos) == lm.encode(text, add_bos)
    ids = lm.encode(mine.text, add_bos=True)
    for skip in (False, True):
        assert served.decode(ids, skip) == lm.decode(ids, skip)


@pytest.mark.parametrize("which", ["tw-small", "template"])
def test_requests_are_planned_the_same_over_either(which, small, tmp_path):
    lm = small if which == "tw-small" else load_tiny_chat_model(tmp_path)
    served = served_like(lm)
    requests = [
        ChatCompletionRequest(model=lm.name, messages=MESSAGES, max_tokens=8, seed=3,
                              temperature=0.7, stop=["!"]),
        CompletionRequest(model=lm.name, prompt=["7+2=", "12+7="], max_tokens=4,
                          temperature=0.0),
    ]
    for req in requests:
        ours = plan_request(req, ServerConfig(), {lm.name: served})
        theirs = plan_request(req, ServerConfig(), {lm.name: lm})
        assert ours.lm is served and theirs.lm is lm
        assert ours.prompts == theirs.prompts and ours.prompt_tokens == theirs.prompt_tokens
        assert [served.encode(p, add_bos=True) for p in ours.prompts] == \
            [lm.encode(p, add_bos=True) for p in theirs.prompts]
        assert (ours.stops, ours.spec, ours.seeds) == (theirs.stops, theirs.spec, theirs.seeds)


def test_the_context_check_reads_the_served_context(small):
    req = CompletionRequest(model="tw-small", prompt="7+2=", max_tokens=8)
    with pytest.raises(APIError, match="maximum context length is 8 tokens"):
        plan_request(req, ServerConfig(), {"tw-small": served_like(small, 8)})
    assert plan_request(req, ServerConfig(), {"tw-small": served_like(small, 16)}).max_tokens == 8


def test_a_compressed_prompt_is_counted_on_the_served_models_tokenizer(small):
    req = CompletionRequest(model="tw-small", prompt="Q: Where was Dalvin Orsk born? " * 4
                            + "\nA:", max_tokens=4, temperature=0.0,
                            tokenwise={"compress": {"method": "perplexity", "rate": 0.5}})
    plans = []
    for model in (served_like(small), small):
        service = routes.CompletionService(ServerConfig(), {"tw-small": model},
                                           InlineBackend())
        plans.append(asyncio.run(service._plan(req, "completion")))
    ours, theirs = plans
    assert ours.info["compression"]["text"] == theirs.info["compression"]["text"]
    assert ours.info["compression"]["tokens_before"] == theirs.info["compression"][
        "tokens_before"] == len(small.encode(req.prompt))
    assert ours.prompt_tokens == theirs.prompt_tokens


def test_the_embedded_engine_refuses_a_served_model(small):
    from tokenwise.serving.app import create_app

    with pytest.raises(TypeError, match=r"'tw-small' is a ServedModel.*no forward pass"):
        create_app(ServerConfig(), models={"tw-small": served_like(small)})

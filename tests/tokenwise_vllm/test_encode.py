"""The vLLM backend encodes exactly as LanguageModel does (no vLLM needed for this)."""

from __future__ import annotations

from tests.models.helpers import load_tiny_chat_model

from tokenwise.models import load
from tokenwise.models.language_model import EncodedText
from tokenwise.vllm.backend import VLLMModel


def _backend_over(lm):
    backend = object.__new__(VLLMModel)  # an engine is not needed to encode
    backend.tokenizer, backend.name = lm.tokenizer, lm.name
    return backend


def test_the_backend_follows_each_tokenizers_own_start_rule(tmp_path):
    for lm in (load("tw-small"), load_tiny_chat_model(tmp_path)):
        backend = _backend_over(lm)
        assert backend.start_ids == lm.start_ids
        for add_bos in (False, True):
            assert backend.encode("hello <|im_end|> 12", add_bos) == \
                lm.encode("hello <|im_end|> 12", add_bos)
    chat = load_tiny_chat_model(tmp_path / "again")
    assert chat.start_ids == ()  # SmolLM2's kind: nothing is put before a text
    rendered = EncodedText("<|im_start|>user\nhi", [1, 5, 6])
    assert _backend_over(chat).encode(rendered, add_bos=True) == [1, 5, 6]


class _FakeModelConfig:
    """The part of vLLM's ModelConfig the backend's codec reads."""

    def __init__(self, eos_ids):
        self.max_model_len, self._eos_ids = 64, eos_ids

    def get_vocab_size(self):
        return 1024

    def try_get_generation_config(self):
        return {"eos_token_id": self._eos_ids}


def test_the_backend_is_a_codec_and_a_prompt_scorer_with_the_engines_end_ids():
    from tokenwise.models import Codec, PromptScorer

    lm = load("tw-small")
    backend = _backend_over(lm)
    backend._config = _FakeModelConfig([lm.eos_token_id, 7])
    assert isinstance(backend, Codec) and isinstance(backend, PromptScorer)
    assert backend.end_token_ids == {lm.eos_token_id, 7}  # the engine's config lists one more
    assert backend.context_length == 62 and backend.vocab_size == 1024
    backend._config = _FakeModelConfig(None)
    assert backend.end_token_ids == {lm.eos_token_id}

"""The two roles a model plays: a codec (text <-> token ids) and a scorer (what it predicts).

A :class:`Codec` turns text into the ids a model reads and back, and knows the ids that
start and end a text, the vocabulary and the context; a server that only plans requests
(renders chats, counts tokens, checks limits) needs nothing more. A scorer is a codec that
also gives log-probabilities, in one of two ways:

* :class:`ForwardScorer`: a forward pass over token ids, with a KV cache for incremental
  decoding (:class:`~tokenwise.models.LanguageModel`; what the decode loop needs).
* :class:`PromptScorer`: the log-probability of each prompt token given those before it, for
  many prompts in one call (how the vLLM backend, ``tokenwise.vllm.backend.VLLMModel``,
  scores: vLLM's prompt logprobs).

:data:`Scorer` is either; :func:`tokenwise.scoring.token_surprisal` reads any of them.
:class:`~tokenwise.models.LanguageModel` is a codec and a forward scorer; the vLLM server's
``ServedModel`` is a codec only (its weights live in the engine). Both take the codec from
:class:`~tokenwise.models.language_model.TokenizerCodec`, which reads it from a Hugging Face
tokenizer.

The protocols are ``runtime_checkable``: ``isinstance`` checks that the members exist, not
their signatures (before Python 3.12 it reads each property, so a model whose config declares
a bad context length raises that error there too).

Example:
    >>> from tokenwise.models import load
    >>> lm = load("tw-small")
    >>> isinstance(lm, Codec), isinstance(lm, ForwardScorer), isinstance(lm, PromptScorer)
    (True, True, False)
    >>> isinstance(lm, Scorer)
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import torch

    from tokenwise.models.language_model import ForwardOutput

__all__ = ["Codec", "ForwardScorer", "PromptScorer", "Scorer"]


@runtime_checkable
class Codec(Protocol):
    """Text to token ids and back, with the ids and limits that go with them.

    Attributes:
        name: the model id (reports, the server's ``model`` field).
        tokenizer: the Hugging Face tokenizer (chat templates, token texts and bytes).
    """

    name: str
    tokenizer: Any

    @property
    def context_length(self) -> int:
        """Longest sequence, in tokens, the model reads."""
        ...

    @property
    def vocab_size(self) -> int:
        """Width of the model's distribution over tokens."""
        ...

    @property
    def start_ids(self) -> tuple[int, ...]:
        """The ids the tokenizer puts in front of every text (possibly none)."""
        ...

    @property
    def bos_token_id(self) -> int | None:
        """A start-like token id (BOS, else EOS, else None), for callers that need one."""
        ...

    @property
    def eos_token_id(self) -> int | None:
        """The tokenizer's end-of-text token, if any."""
        ...

    @property
    def end_token_ids(self) -> frozenset[int]:
        """Every token that ends a text."""
        ...

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        """Token ids of ``text``, special-token strings read as text; with ``add_bos`` the
        start ids first. A chat prompt rendered with the model's template
        (:class:`~tokenwise.models.language_model.EncodedText`) brings its own ids."""
        ...

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = False
               ) -> str:
        """Text of token ids."""
        ...


@runtime_checkable
class ForwardScorer(Codec, Protocol):
    """A codec with a forward pass: logits for token ids, with a KV cache to decode on."""

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        cache: Any = None,
        position_ids: torch.Tensor | None = None,
        use_cache: bool = False,
        output_hidden_states: bool = False,
        logits_to_keep: int = 0,
    ) -> ForwardOutput:
        """One forward pass, no gradients (see :meth:`tokenwise.models.LanguageModel.forward`).

        ``(B, T)`` ids in; ``(B, T_kept, V)`` logits out (the last ``logits_to_keep``
        positions when it is > 0), with the cache when ``use_cache``.
        """
        ...


@runtime_checkable
class PromptScorer(Codec, Protocol):
    """A codec that scores prompts: each token's log-probability given those before it."""

    def prompt_logprobs(self, prompts: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """``log p(ids[t] | ids[:t])`` for ``t >= 1`` of each id list, in one call.

        Each prompt has 2 to ``context_length + 1`` ids; the result has one float array of
        ``len(ids) - 1`` values per prompt.
        """
        ...


#: A model that gives log-probabilities: by forward passes or by prompt logprobs.
Scorer: TypeAlias = ForwardScorer | PromptScorer

"""`LanguageModel`: one wrapper over a Hugging Face causal LM and its tokenizer.

Its tokenizer half (:class:`TokenizerCodec`: encode, decode, start and end ids) is shared with
models whose weights live elsewhere (the vLLM server's ``ServedModel``), so every holder of a
tokenizer encodes a prompt the same way. The roles themselves are
:class:`~tokenwise.models.protocols.Codec` and :data:`~tokenwise.models.protocols.Scorer`.
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from tokenwise.errors import TokenwiseError

#: config keys that hold a model's context length, most common first.
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length")


def context_value(key: str, value: Any, where: str) -> int | None:
    """A context-length setting checked: the positive int it holds, or None when unset.

    A config that sets a context length to something else (``"lots"``, ``-4``, ``64.0``,
    ``true``) is refused rather than skipped: skipping it would quietly give the model some
    other window.

    Args:
        key: the config key (one of :data:`CONTEXT_KEYS`), named in the error.
        value: what the config holds there (None when the key is absent or null).
        where: the config's name for the error, e.g. the path of its config.json.

    Example:
        >>> context_value("max_position_embeddings", 256, "config.json")
        256
        >>> context_value("n_positions", None, "config.json") is None
        True
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise TokenwiseError(
            f"{where}: {key}={value!r} is not a context length; allowed: a positive whole "
            "number of tokens (e.g. 2048), or leave the key out"
        )
    return value


def count_parameters(module: torch.nn.Module) -> int:
    """Distinct parameters of ``module`` (tied weights counted once).

    Example:
        >>> count_parameters(torch.nn.Linear(3, 2))
        8
    """
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def start_token_id(tokenizer: Any) -> int | None:
    """A start-like token: the tokenizer's BOS, else its EOS (GPT-2 style), else None.

    Only a token id for callers that need one (padding, a first position); what a text
    starts with is :func:`tokenizer_start_ids`.

    Args:
        tokenizer: a Hugging Face tokenizer.

    Example:
        >>> from types import SimpleNamespace
        >>> start_token_id(SimpleNamespace(bos_token_id=None, eos_token_id=50256))
        50256
    """
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return None


def tokenizer_start_ids(tokenizer: Any) -> tuple[int, ...]:
    """The ids the tokenizer itself puts in front of a text (its own special-token rule).

    They are what ``tokenizer("a", add_special_tokens=True)`` has before the ids of
    ``tokenizer("a", add_special_tokens=False)``: the BOS for Llama 3, Gemma and tw-small,
    nothing for SmolLM2, Qwen and GPT-2 (whose ``bos_token`` is a chat-turn marker or the
    end-of-text token, never added to a text).

    Args:
        tokenizer: a Hugging Face tokenizer.

    Example:
        >>> from tokenwise.models import load
        >>> tokenizer_start_ids(load("tw-small").tokenizer)
        (1,)
    """
    with_specials = list(tokenizer("a", add_special_tokens=True, verbose=False)["input_ids"])
    plain = list(tokenizer("a", add_special_tokens=False, verbose=False)["input_ids"])
    for at in range(len(with_specials) - len(plain) + 1):
        if with_specials[at:at + len(plain)] == plain:
            return tuple(int(t) for t in with_specials[:at])
    return ()


def end_token_id(tokenizer: Any) -> int | None:
    """The tokenizer's end-of-text token, if it has one.

    Args:
        tokenizer: a Hugging Face tokenizer.

    Example:
        >>> from types import SimpleNamespace
        >>> end_token_id(SimpleNamespace(eos_token_id=None)) is None
        True
    """
    tid = tokenizer.eos_token_id
    return None if tid is None else int(tid)


class EncodedText(str):
    """A text that carries the token ids the model reads for it.

    A chat prompt rendered with the model's template holds control tokens (``<|im_start|>``)
    that plain :meth:`LanguageModel.encode` would spell out as text; this string keeps the
    ids its renderer made, so every path that encodes a prompt (the decode loop, EAD, the
    server's token counts) reads the same ids. String operations return plain ``str``.

    Args:
        text: the rendered text (for display and logs).
        ids: the ids, start tokens included.

    Example:
        >>> p = EncodedText("<|im_start|>user\\nhi", [1, 9, 8])
        >>> p, p.ids
        ('<|im_start|>user\\nhi', (1, 9, 8))
    """

    ids: tuple[int, ...]

    def __new__(cls, text: str, ids: list[int] | tuple[int, ...]) -> EncodedText:
        obj = super().__new__(cls, text)
        obj.ids = tuple(int(i) for i in ids)
        return obj


@dataclass
class ForwardOutput:
    """What :meth:`LanguageModel.forward` returns.

    Attributes:
        logits: ``(B, T_kept, V)`` float logits (T_kept = T, or ``logits_to_keep``).
        cache: the KV cache to pass to the next call, when ``use_cache``.
        hidden_states: one ``(B, T, D)`` tensor per layer (embeddings first), when asked.
    """

    logits: torch.Tensor
    cache: Any = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


class TokenizerCodec(abc.ABC):
    """The codec half of a model, read from its Hugging Face tokenizer: text to token ids and
    back, the ids that start and end a text, the vocabulary and the context.

    :class:`LanguageModel` and the vLLM server's ``ServedModel`` (whose weights live in
    the engine) both build on it, so a prompt is encoded the same way whichever holds it.
    A subclass sets ``name`` and ``tokenizer`` and gives :attr:`context_length`; it satisfies
    :class:`~tokenwise.models.protocols.Codec`.

    Attributes:
        name: the model id, for reports.
        tokenizer: the Hugging Face tokenizer (chat templates, token texts and bytes).

    Example:
        >>> from tokenwise.models import load
        >>> class TokenizerOnly(TokenizerCodec):
        ...     def __init__(self, name, tokenizer):
        ...         self.name, self.tokenizer = name, tokenizer
        ...     context_length = 256
        >>> codec = TokenizerOnly("tw-small", load("tw-small").tokenizer)
        >>> codec.encode("7+5=", add_bos=True) == load("tw-small").encode("7+5=", add_bos=True)
        True
    """

    name: str
    tokenizer: Any

    @property
    @abc.abstractmethod
    def context_length(self) -> int:
        """Longest sequence, in tokens, the model reads."""

    @property
    def vocab_size(self) -> int:
        """Tokens of the tokenizer (a model whose logits are wider says so itself)."""
        return len(self.tokenizer)

    @property
    def bos_token_id(self) -> int | None:
        """A start-like token id (BOS, else EOS, GPT-2 style, else None), for callers that
        need some token id (padding, a classifier's first position).

        Not necessarily what starts a text: that is :attr:`start_ids`, which follows the
        tokenizer's own rule (SmolLM2's ``bos_token`` is its chat-turn marker, never put in
        front of a text).
        """
        return start_token_id(self.tokenizer)

    @cached_property
    def start_ids(self) -> tuple[int, ...]:
        """The ids the tokenizer puts in front of every text (see :func:`tokenizer_start_ids`).

        ``()`` for tokenizers that add none (SmolLM2, Qwen, GPT-2): then a text's first token
        has no prediction, and :func:`tokenwise.score` scores from its second token on.

        Example:
            >>> from tokenwise.models import load
            >>> load("tw-small").start_ids
            (1,)
        """
        return tokenizer_start_ids(self.tokenizer)

    @property
    def eos_token_id(self) -> int | None:
        """The end-of-text token, if the tokenizer has one."""
        return end_token_id(self.tokenizer)

    def _generation_config(self) -> Any:
        """The generation config whose ``eos_token_id`` may list more end ids (None: none)."""
        return None

    @property
    def end_token_ids(self) -> frozenset[int]:
        """Every token that ends a text: the tokenizer's EOS and the generation config's.

        Models such as Llama 3 list several end-of-text ids in ``generation_config.json``
        (``eos_token_id`` as a list); transformers' ``generate`` stops on any of them, and so
        does :func:`tokenwise.generate`.

        Example:
            >>> from tokenwise.models import load
            >>> sorted(load("tw-small").end_token_ids)
            [2]
        """
        ids = set()
        if self.eos_token_id is not None:
            ids.add(self.eos_token_id)
        extra = getattr(self._generation_config(), "eos_token_id", None)
        if extra is not None:
            ids.update(int(t) for t in (extra if isinstance(extra, (list, tuple)) else [extra]))
        return frozenset(ids)

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        """Token ids of ``text``; with ``add_bos`` the tokenizer's start ids
        (:attr:`start_ids`, possibly none) first.

        Special-token strings inside ``text`` are encoded as ordinary text. An
        :class:`EncodedText` (a chat prompt rendered with the model's template) brings its own
        ids: they are returned as they are (``add_bos``) or without their leading start ids.

        Args:
            text: the text.
            add_bos: put the tokenizer's start ids in front.

        Example:
            >>> from tokenwise.models import load
            >>> lm = load("tw-small")
            >>> lm.decode(lm.encode("12+7=19"))
            '12+7=19'
        """
        start = list(self.start_ids)
        if isinstance(text, EncodedText):
            ids = list(text.ids)
            if not add_bos and start and ids[:len(start)] == start:
                ids = ids[len(start):]
            return ids
        # Text that looks like a special token ("<s>", "</s>") is text, not a control token.
        ids = list(self.tokenizer(text, add_special_tokens=False, split_special_tokens=True,
                                  verbose=False)["input_ids"])
        return start + ids if add_bos else ids

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = False
               ) -> str:
        """Text of token ids.

        Args:
            ids: token ids (a list or a 1-D tensor).
            skip_special_tokens: leave control tokens (BOS, EOS, turn markers) out.

        Example:
            >>> from tokenwise.models import load
            >>> lm = load("tw-small")
            >>> ids = lm.encode("7+5=", add_bos=True)
            >>> lm.decode(ids), lm.decode(ids, skip_special_tokens=True)
            ('<s>7+5=', '7+5=')
        """
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


class LanguageModel(TokenizerCodec):
    """A causal language model with its tokenizer, in eval mode, ready for inference.

    Every part of tokenwise talks to models through this class. Build it with
    :func:`tokenwise.models.load`. It is a :class:`~tokenwise.models.protocols.Codec`
    (encode, decode, start and end ids, from :class:`TokenizerCodec`) and a
    :class:`~tokenwise.models.protocols.ForwardScorer` (:meth:`forward` with a KV cache).

    Args:
        hf_model: a ``transformers`` causal LM (``...ForCausalLM``).
        tokenizer: its tokenizer.
        name: a short name for reports.
        path: the directory it came from, if any.

    Example:
        >>> from tokenwise.models import load
        >>> lm = load("tw-small")
        >>> ids = lm.encode("7+5=", add_bos=True)
        >>> lm.forward(torch.tensor([ids])).logits.shape[-1] == lm.vocab_size
        True
    """

    def __init__(self, hf_model: Any, tokenizer: Any, name: str, path: Path | None = None):
        self.hf_model = hf_model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.path = path
        # transformers renamed `past_key_values` to `cache` (5.2x); speak whichever it knows.
        params = inspect.signature(hf_model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    def __repr__(self) -> str:
        return (f"LanguageModel({self.name!r}, params={self.num_parameters():,}, "
                f"device={self.device}, dtype={self.dtype})")

    @property
    def config(self) -> Any:
        """The HF model config."""
        return self.hf_model.config

    @property
    def device(self) -> torch.device:
        """Where the weights live."""
        return next(self.hf_model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype."""
        return next(self.hf_model.parameters()).dtype

    @property
    def vocab_size(self) -> int:
        """Width of the logits (the output embedding's rows)."""
        return int(self.hf_model.get_output_embeddings().weight.shape[0])

    @property
    def context_length(self) -> int:
        """Longest sequence the model was built for (``max_position_embeddings``).

        Falls back on the tokenizer's ``model_max_length``, then 2048, only when the config
        declares no context length; a declared one that is not a positive int is an error.
        """
        for key in CONTEXT_KEYS:
            value = context_value(key, getattr(self.config, key, None),
                                  f"model {self.name!r}'s config")
            if value is not None:
                return value
        limit = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(limit, int) and 0 < limit < 1_000_000:
            return limit
        return 2048

    def _generation_config(self) -> Any:
        return getattr(self.hf_model, "generation_config", None)

    def num_parameters(self) -> int:
        """Number of distinct parameters (tied embeddings counted once)."""
        return count_parameters(self.hf_model)

    @torch.inference_mode()
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
        """One forward pass, no gradients.

        Args:
            input_ids: ``(B, T)`` token ids.
            attention_mask: ``(B, T_past + T)`` 1 for real tokens, 0 for padding.
            cache: the KV cache from a previous call with ``use_cache=True``.
            position_ids: ``(B, T)`` positions (needed with left padding).
            use_cache: return the KV cache for incremental decoding.
            output_hidden_states: return every layer's hidden states.
            logits_to_keep: if > 0, compute logits only for the last that many positions
                (saves the ``(T, V)`` projection when only the tail is needed).

        Example:
            >>> from tokenwise.models import load
            >>> lm = load("tw-small")
            >>> out = lm.forward(torch.tensor([lm.encode("1+1=", add_bos=True)]), use_cache=True)
            >>> nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            >>> lm.forward(nxt, cache=out.cache).logits.shape[1]
            1
        """
        if input_ids.dim() != 2:
            raise TokenwiseError(
                f"input_ids must be (batch, tokens); got shape {tuple(input_ids.shape)}"
            )
        device = self.device
        kwargs: dict[str, Any] = {
            "input_ids": input_ids.to(device),
            "use_cache": use_cache,
            "output_hidden_states": output_hidden_states,
        }
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask.to(device)
        if cache is not None:
            kwargs[self._cache_kw] = cache
        if position_ids is not None:
            kwargs["position_ids"] = position_ids.to(device)
        if logits_to_keep:
            kwargs["logits_to_keep"] = logits_to_keep
        out = self.hf_model(**kwargs)
        return ForwardOutput(
            logits=out.logits,
            cache=getattr(out, self._cache_kw, None) if use_cache else None,
            hidden_states=out.hidden_states if output_hidden_states else None,
        )

    @torch.inference_mode()
    def hidden_states(self, text_or_ids: str | list[int], layer: int = -1) -> torch.Tensor:
        """``(T, D)`` hidden states of one layer for one text (start ids added to a text).

        Args:
            text_or_ids: a text, or token ids used as they are.
            layer: which layer (0 = embeddings, -1 = last).

        Example:
            >>> from tokenwise.models import load
            >>> lm = load("tw-small")
            >>> lm.hidden_states("hello").shape[-1] == lm.config.hidden_size
            True
        """
        if isinstance(text_or_ids, str):
            ids = self.encode(text_or_ids, add_bos=True)
        else:
            ids = list(text_or_ids)
        if len(ids) > self.context_length:
            raise TokenwiseError(
                f"{len(ids)} tokens exceed the context length {self.context_length} of "
                f"{self.name!r}; split the text"
            )
        out = self.forward(torch.tensor([ids]), output_hidden_states=True, logits_to_keep=1)
        assert out.hidden_states is not None
        return out.hidden_states[layer][0]

"""What every press shares: the budget, the inputs a press scores from, and the eviction itself.

A press scores each cached token per KV head; the cache keeps the ``k`` best of every head
(the same ``k`` for every head of a layer, so the tensors stay rectangular) by gathering them
into smaller tensors: memory is really freed, nothing is masked. Scores never decide order:
the kept tokens stay in position order.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from tokenwise.errors import TokenwiseError

#: a budget: tokens (int >= 1), a ratio of the prompt (float in (0, 1]), or one per layer.
BudgetSpec = int | float | Sequence[int | float]

#: query rows scored at a time when a press reads attention (bounds the ``(W, S)`` block).
QUERY_BLOCK = 256


def check_budget(budget: object, setting: str = "budget") -> BudgetSpec:
    """``budget`` checked: an int >= 1 (tokens), a float in (0, 1] (a ratio), or a non-empty
    list of those (one per layer).

    Args:
        budget: the value to check.
        setting: its name in the error.

    Returns:
        The budget, a list made a tuple.

    Example:
        >>> check_budget(0.25), check_budget(64), check_budget([32, 0.5])
        (0.25, 64, (32, 0.5))
        >>> check_budget(0)
        Traceback (most recent call last):
        ...
        tokenwise.errors.TokenwiseError: budget=0: allowed a whole number of tokens >= 1, ...
    """
    allowed = ("allowed a whole number of tokens >= 1, a ratio of the prompt in (0, 1] "
               "(e.g. 0.25), or a list of those, one per layer")
    if isinstance(budget, Sequence) and not isinstance(budget, str):
        if not budget:
            raise TokenwiseError(f"{setting}=[]: {allowed}")
        return tuple(check_budget(b, setting) for b in budget)  # type: ignore[misc]
    if isinstance(budget, bool):
        raise TokenwiseError(f"{setting}={budget!r}: {allowed}")
    if isinstance(budget, numbers.Integral):
        if budget < 1:
            raise TokenwiseError(f"{setting}={budget!r}: {allowed}")
        return int(budget)
    if isinstance(budget, numbers.Real):
        if not (0.0 < float(budget) <= 1.0) or math.isnan(float(budget)):
            raise TokenwiseError(f"{setting}={budget!r}: {allowed}")
        return float(budget)
    raise TokenwiseError(f"{setting}={budget!r}: {allowed}")


def check_positive(setting: str, value: object) -> int:
    """``value`` checked as a whole number >= 1 (a press's window, kernel, group, ...).

    Args:
        setting: its name in the error.
        value: the value to check (``bool`` is refused, numpy integers are taken).

    Example:
        >>> check_positive("window", 16)
        16
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise TokenwiseError(f"{setting}={value!r}: allowed a whole number >= 1")
    return int(value)


def tokens_for(budget: BudgetSpec, prompt_tokens: int, layer: int, n_layers: int) -> int:
    """The tokens layer ``layer`` keeps for a prompt of ``prompt_tokens`` tokens.

    A ratio keeps ``ceil(ratio * prompt_tokens)`` tokens (at least 1); a per-layer list needs
    one entry per layer.

    Args:
        budget: a checked budget (:func:`check_budget`).
        prompt_tokens: tokens the prompt put in the cache.
        layer: the layer index.
        n_layers: the model's layers (a per-layer list must have this many).

    Example:
        >>> tokens_for(0.25, 100, 0, 2), tokens_for(30, 100, 0, 2), tokens_for((8, 0.5), 100, 1, 2)
        (25, 30, 50)
    """
    if isinstance(budget, tuple):
        if len(budget) != n_layers:
            raise TokenwiseError(f"budget has {len(budget)} entries for a model of {n_layers} "
                                 "layers: give one budget, or one per layer")
        budget = budget[layer]
    if isinstance(budget, float):
        return max(1, math.ceil(budget * prompt_tokens))
    return int(budget)


@dataclass
class ScoreInputs:
    """What a press scores one layer's cache from.

    Attributes:
        keys: ``(B, H_kv, S, D)`` cached keys (RoPE applied), old kept tokens then new ones.
        values: ``(B, H_kv, S, D)`` cached values.
        positions: ``(B, H_kv, S)`` the true position of every cached token.
        queries: ``(B, H_q, W, D)`` the queries (RoPE applied) of the press's window, or None
            when the press asked for none.
        query_positions: ``(W,)`` their true positions.
        scaling: the attention's score scale (``1/sqrt(D)`` for most models).
        layer: the layer index.
        state: ``(B, H_kv, S)`` what the press returned last time for the kept tokens (0 for
            the new ones), for presses that accumulate (H2O); None otherwise.
        prompt_end: the true position one past the prompt's last token seen so far.
    """

    keys: torch.Tensor
    values: torch.Tensor
    positions: torch.Tensor
    queries: torch.Tensor | None
    query_positions: torch.Tensor | None
    scaling: float
    layer: int
    state: torch.Tensor | None = None
    prompt_end: int = 0

    def attention(self) -> torch.Tensor:
        """``(B, H_kv, W, S)`` softmax attention of the window's queries over the cache,
        averaged over the query heads that share a KV head; causal by true position.

        Computed in blocks of :data:`QUERY_BLOCK` queries, so the whole prompt's attention
        matrix is never held at once.

        Example:
            >>> k = torch.randn(1, 1, 4, 8)
            >>> inp = ScoreInputs(k, k, torch.arange(4).view(1, 1, 4), k[:, :, -1:],
            ...                   torch.tensor([3]), 8 ** -0.5, 0)
            >>> round(float(inp.attention().sum()), 4)
            1.0
        """
        if self.queries is None or self.query_positions is None:
            raise TokenwiseError("this press reads attention but no queries were captured; "
                                 "use a cache built with the model (kv.CompressedCache(model, "
                                 "press))")
        b, h_kv, _, d = self.keys.shape
        h_q, w = self.queries.shape[1], self.queries.shape[2]
        group = h_q // h_kv
        keys = self.keys.float()
        out = []
        for start in range(0, w, QUERY_BLOCK):
            q = self.queries[:, :, start:start + QUERY_BLOCK].float()  # (B, H_q, w', D)
            q = q.view(b, h_kv, group, q.shape[2], d)
            logits = torch.einsum("bhgwd,bhsd->bhgws", q, keys) * self.scaling
            qpos = self.query_positions[start:start + QUERY_BLOCK].to(keys.device)
            future = self.positions[:, :, None, None, :] > qpos[None, None, None, :, None]
            logits = logits.masked_fill(future, float("-inf"))
            out.append(logits.softmax(-1).mean(2))  # (B, H_kv, w', S)
        return torch.cat(out, 2)


@dataclass
class Press:
    """A scoring rule for cached tokens and the budget it evicts down to.

    Subclasses set :meth:`score` (higher = keep) and the class attributes that say what
    they read. The budget and schedule fields are shared by every press.

    Attributes:
        budget: tokens kept per head and layer: a whole number (>= 1), a ratio of the prompt
            in (0, 1], or a list with one of those per layer.
        every: also compress during decoding, back to the budget, each time this many tokens
            were decoded since the last compression (None: only after the prompt).
        chunk_size: prefill the prompt this many tokens at a time, compressing after each
            chunk, so the cache never holds more than ``budget + chunk_size`` tokens
            (None: the whole prompt in one pass).
        question_tokens: with ``chunk_size``, the last this many tokens of a one-string
            prompt (``tokenwise.generate(..., kv=press)``, EAD, the server) are its question:
            the context is read chunk by chunk and, before each chunk is compressed, the
            question is run after it as a probe, so a press that reads queries (SnapKV,
            expected attention, CRITIC, H2O) scores the chunk by the question's attention
            and stays question-aware with a bounded peak (``budget + chunk_size +
            question_tokens`` tokens a layer); the budget is of the context, and the question
            is then read once and kept whole (see :func:`tokenwise.kv.prefill`). None: no
            split (chunks before the question are compressed without it). It must be below
            the prompt's length.

    Example:
        >>> from tokenwise.kv import SnapKV
        >>> SnapKV(0.25, chunk_size=256, question_tokens=30).describe()["question_tokens"]
        30
        >>> SnapKV(0.25, question_tokens=30)
        Traceback (most recent call last):
        ...
        tokenwise.errors.TokenwiseError: question_tokens=30 needs chunk_size ...
    """

    budget: BudgetSpec = 0.5
    every: int | None = field(default=None, kw_only=True)
    chunk_size: int | None = field(default=None, kw_only=True)
    question_tokens: int | None = field(default=None, kw_only=True)

    #: the press's name in :data:`tokenwise.kv.PRESSES`.
    name: ClassVar[str] = ""
    #: trailing queries the press reads: 0 none, a count, or None for every query since the
    #: last compression (H2O's accumulated attention).
    window_queries: ClassVar[int | None] = 0
    #: whether the cache keeps what :meth:`score` returned for the next compression.
    accumulates: ClassVar[bool] = False

    def __post_init__(self) -> None:
        self.budget = check_budget(self.budget)
        for setting in ("every", "chunk_size"):
            value = getattr(self, setting)
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, numbers.Integral) or value < 1):
                raise TokenwiseError(f"{setting}={value!r}: allowed None or a whole number >= 1")
        if self.question_tokens is not None:
            self.question_tokens = check_positive("question_tokens", self.question_tokens)
            if self.chunk_size is None:
                raise TokenwiseError(
                    f"question_tokens={self.question_tokens} needs chunk_size (a chunked "
                    "prefill); without chunks the prompt is read in one pass, already "
                    "question-aware when it ends with the question: leave question_tokens "
                    "None or set chunk_size")

    def queries_needed(self) -> int | None:
        """How many trailing queries this press reads (0 none, None all since the last
        compression)."""
        return self.window_queries

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        """``(B, H_kv, S)`` scores: the cache keeps each head's highest."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """The press's settings, for reports (JSON-ready); ``question_tokens`` only when set
        (a prompt split into context and question), so unsplit settings read as before."""
        from dataclasses import asdict

        out = asdict(self)
        if out.get("question_tokens") is None:
            out.pop("question_tokens", None)
        out["press"] = self.name
        if isinstance(out.get("budget"), tuple):
            out["budget"] = list(out["budget"])
        return out


def keep_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """``(B, H, k)`` indices of each head's ``k`` best scores, in position order.

    Example:
        >>> keep_indices(torch.tensor([[[0.1, 0.9, 0.5, 0.7]]]), 2).tolist()
        [[[1, 3]]]
    """
    k = min(k, scores.shape[-1])
    top = scores.float().topk(k, dim=-1).indices
    return top.sort(dim=-1).values


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x`` ``(B, H, S, ...)`` reduced to the tokens ``idx`` ``(B, H, k)`` of every head: a
    new, smaller tensor (the old one can be freed).

    Example:
        >>> x = torch.arange(8.0).view(1, 2, 4)
        >>> gather_tokens(x, torch.tensor([[[0, 3], [1, 2]]])).tolist()
        [[[0.0, 3.0], [5.0, 6.0]]]
    """
    if x.dim() == idx.dim():
        return x.gather(2, idx).contiguous()
    expand = idx[..., None].expand(*idx.shape, x.shape[-1])
    return x.gather(2, expand).contiguous()


def pool_scores(scores: torch.Tensor, kernel: int) -> torch.Tensor:
    """Scores smoothed over neighbouring tokens (average pooling, same length), so a kept
    token keeps its neighbours too (SnapKV's clustering).

    Example:
        >>> pool_scores(torch.tensor([[[0.0, 3.0, 0.0]]]), 3).tolist()
        [[[1.5, 1.0, 1.5]]]
    """
    if kernel <= 1:
        return scores
    b, h, s = scores.shape
    pooled = torch.nn.functional.avg_pool1d(scores.reshape(b * h, 1, s).float(), kernel,
                                            stride=1, padding=kernel // 2,
                                            count_include_pad=False)
    return pooled[..., :s].reshape(b, h, s)


FULL, SLIDING = "full_attention", "sliding_attention"


def layer_kinds(config: Any) -> list[str]:
    """Each layer's kind, ``"full_attention"`` or ``"sliding_attention"``, from a text config.

    Without ``layer_types``, a config with ``sliding_window`` set has sliding-window layers
    only (as transformers infers it), otherwise full-attention layers only.

    Args:
        config: the model's text config.

    Example:
        >>> from transformers import LlamaConfig
        >>> layer_kinds(LlamaConfig(num_hidden_layers=2))
        ['full_attention', 'full_attention']
    """
    n = int(config.num_hidden_layers)
    types = getattr(config, "layer_types", None)
    window = getattr(config, "sliding_window", None)
    if types is None:
        types = [SLIDING if window is not None else FULL] * n
    types = list(types)
    bad = sorted(set(types) - {FULL, SLIDING})
    if bad:
        raise TokenwiseError(
            f"{config.model_type}: layers of type {bad}; kv presses support "
            f"'{FULL}' and '{SLIDING}' layers")
    if len(types) != n:
        raise TokenwiseError(f"{config.model_type}: {len(types)} layer_types for "
                             f"{n} layers")
    if SLIDING in types and (isinstance(window, bool) or not isinstance(window, int)
                             or window < 1):
        raise TokenwiseError(f"{config.model_type}: sliding_window={window!r} with "
                             "sliding-window layers; allowed a whole number >= 1")
    return types

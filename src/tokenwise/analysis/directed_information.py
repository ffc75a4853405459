"""Directed information per token: how many nats each answer token takes from a context.

For an answer ``y = y_1..y_n`` read after a context ``c`` (a memo, a retrieved document, a
system prompt) and a prompt ``q`` (the question, kept in both readings), the information
token ``y_t`` takes from the context is the pointwise conditional mutual information

    DI_t = log p(y_t | c, q, y_<t) - log p(y_t | q, y_<t)            (nats)

and, by the chain rule, the answer's total is ``sum_t DI_t = log p(y | c, q) - log p(y | q)``.
Averaged over answers drawn from the model it is the directed information
``I(c -> y | q) = sum_t I(c ; y_t | q, y_<t)`` of "Forget BIT, It is All about TOKEN". A
token with DI_t near 0 came from the model's own knowledge (or the prompt); a large DI_t
marks a token grounded in the context. DI_t < 0 means the context made the token less likely.

Exact values on the testbed: a needle answer (``" 917"``) is a code drawn uniformly from
100..999 fresh for every memo, so an ideal reader takes ``log 9`` nats for the first digit,
``log 10`` for each of the others and ``log 900 = 6.80`` nats in all from the memo; a fact
answer does not depend on an unrelated memo, so the ideal value is 0 for each token.

The pieces are encoded separately and joined (``start ids + c + q + y``), so the answer's
tokens are the same ids in both readings; put a piece's leading space or newline on the piece
it begins (``" 917"``), as the testbed's formats do.

Long inputs: when ``start + c + q + y`` is longer than ``window`` (default: the model's
context length), the answer is read in overlapping windows over ``c + q + y``, each with the
start ids in front and ``stride`` new answer tokens (every answer token then has at least
``window - stride - len(start)`` tokens before it). The reading without the context uses the
same window with the context's tokens taken out, so both readings of a token see the same
prompt and answer tokens, and differ only in the context tokens the window held. A token
whose window no longer reaches the context reads identical inputs twice: its DI_t is exactly
0, which is what a model with that window takes from the context, not an estimate of what a
longer one would. :attr:`DirectedInformation.context_seen` gives, per token, how many context
tokens its window held (all of them when everything fits).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tokenwise.errors import TokenwiseError
from tokenwise.scoring import check_window_args, scorer_start_ids

#: What a piece may be: a text (encoded with the model's tokenizer) or token ids as they are.
Piece = str | Sequence[int]


@dataclass(frozen=True)
class DirectedInformation:
    """Directed information of one answer from its context, token by token.

    Attributes:
        token_ids: the answer's token ids.
        pieces: the text of each answer token.
        logprob_with: ``(n,)`` log p(y_t | context, prompt, y_<t), nats.
        logprob_without: ``(n,)`` log p(y_t | prompt, y_<t), nats.
        context_tokens: tokens of the context.
        context_seen: ``(n,)`` context tokens inside the window that predicted each token.
    """

    token_ids: tuple[int, ...]
    pieces: tuple[str, ...]
    logprob_with: np.ndarray
    logprob_without: np.ndarray
    context_tokens: int
    context_seen: np.ndarray

    @property
    def per_token(self) -> np.ndarray:
        """``(n,)`` DI_t = logprob_with - logprob_without (nats)."""
        return self.logprob_with - self.logprob_without

    @property
    def total(self) -> float:
        """sum_t DI_t = log p(y | context, prompt) - log p(y | prompt) (nats)."""
        return float(np.nansum(self.per_token))

    @property
    def truncated(self) -> bool:
        """Whether some answer token was predicted without the whole context in its window."""
        return bool((self.context_seen < self.context_tokens).any())

    def __len__(self) -> int:
        return len(self.token_ids)


def _ids(lm: Any, piece: Piece, what: str) -> list[int]:
    if isinstance(piece, str):
        return list(lm.encode(piece))
    try:
        ids = [int(t) for t in piece]
    except (TypeError, ValueError):
        raise TokenwiseError(f"{what}={piece!r}: allowed a text or a sequence of token ids"
                             ) from None
    vocab = getattr(lm, "vocab_size", None)
    bad = [t for t in ids if t < 0 or (vocab is not None and t >= vocab)]
    if bad:
        raise TokenwiseError(f"{what} holds token id {bad[0]}: allowed 0..{vocab}-1")
    return ids


def _as_list(value: Piece | Sequence[Piece], n: int | None, what: str) -> list[Piece]:
    # A str or a flat id list is one piece; a list of str / of id lists is one per item.
    if isinstance(value, str):
        items: list[Piece] = [value]
    elif len(value) == 0 and n is not None:
        items = [value]  # an empty context or prompt: no tokens
    elif len(value) > 0 and all(isinstance(v, (int, np.integer)) for v in value):
        items = [value]  # type: ignore[list-item]
    else:
        items = list(value)  # type: ignore[arg-type]
    if n is not None and len(items) == 1 and n > 1:
        items = items * n
    if n is not None and len(items) != n:
        raise TokenwiseError(f"{what}: {len(items)} given for {n} answers; allowed one, or one "
                             "per answer")
    return items


@torch.inference_mode()
def _batched_logprobs(lm: Any, seqs: list[list[int]], firsts: list[int],
                      batch_size: int) -> list[np.ndarray]:
    """log p(seq[j] | seq[:j]) for ``j >= first`` of each sequence, right-padded batches."""
    out: list[np.ndarray] = [np.empty(0)] * len(seqs)
    pad = scorer_start_ids(lm)[:1] or [0]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # similar lengths together
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        width = max(len(seqs[i]) for i in idx)
        ids = torch.full((len(idx), width), pad[0], dtype=torch.long)  # (B, T)
        mask = torch.zeros((len(idx), width), dtype=torch.long)  # (B, T)
        for row, i in enumerate(idx):
            ids[row, :len(seqs[i])] = torch.tensor(seqs[i])
            mask[row, :len(seqs[i])] = 1
        first = min(firsts[i] for i in idx)
        keep = width - first + 1  # logits from position first-1 on predict tokens first..
        logits = lm.forward(ids, attention_mask=mask, logits_to_keep=keep).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)  # (B, keep-1, V): predicts first..
        targets = ids[:, first:].to(logp.device)  # (B, keep-1)
        chosen = logp.gather(-1, targets[..., None])[..., 0].cpu().double().numpy()
        for row, i in enumerate(idx):
            out[i] = chosen[row, firsts[i] - first:len(seqs[i]) - first]
    return out


def directed_information(
    model: Any,
    answers: Piece | Sequence[Piece],
    contexts: Piece | Sequence[Piece],
    prompts: Piece | Sequence[Piece] = "",
    *,
    window: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
) -> list[DirectedInformation]:
    """Directed information DI_t = log p(y_t | c, q, y_<t) - log p(y_t | q, y_<t) of answers.

    Every reading (one per answer when it fits in ``window``, one per window otherwise, see
    the module docstring), with and without the context, is a row of right-padded batches of
    ``batch_size`` rows.

    Args:
        model: a :class:`~tokenwise.models.LanguageModel` (or a name to load).
        answers: an answer, or one per item (texts or token ids).
        contexts: the context ``c`` removed in the second reading; one, or one per answer.
        prompts: the prompt ``q`` kept in both readings (e.g. the question); one, or one per
            answer; ``""`` for none.
        window: tokens per forward pass, 2..context length (default: the context length).
        stride: new tokens per window when a reading is longer than ``window`` (default
            ``window // 2``).
        batch_size: answers per forward pass (>= 1).

    Returns:
        One :class:`DirectedInformation` per answer, in order.

    Example:
        >>> from tokenwise.models import load
        >>> lm = load("tw-reader")
        >>> memo = "Memo:\\nThe code of Brelix is 382.\\n"
        >>> [d] = directed_information(lm, " 382", memo, "Q: What is the code of Brelix?\\nA:")
        >>> d.total > 3.0  # nats the code took from the memo (ideal: log 900 = 6.80)
        True
    """
    if isinstance(model, str):
        from tokenwise.models import load

        model = load(model)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise TokenwiseError(f"batch_size={batch_size!r}: allowed an integer >= 1")
    w, s = check_window_args(window, stride, model.context_length)
    assert w is not None and s is not None
    answer_list = _as_list(answers, None, "answers")
    n = len(answer_list)
    if n == 0:
        return []
    ctx_list = _as_list(contexts, n, "contexts")
    prompt_list = _as_list(prompts, n, "prompts")
    start = scorer_start_ids(model)
    items = []
    for i in range(n):
        y = _ids(model, answer_list[i], "answers")
        if not y:
            raise TokenwiseError(f"answer {i} is empty: allowed at least one token")
        c = _ids(model, ctx_list[i], "contexts")
        q = _ids(model, prompt_list[i], "prompts")
        if not start and not q:
            raise TokenwiseError(f"answer {i}: the model adds no start token, so with an empty "
                                 "prompt nothing predicts the first answer token in the reading "
                                 "without the context; give a prompt")
        items.append((y, c, q))
    jobs: list[tuple[int, int, int]] = []  # (item, first answer index, last + 1) per window
    seqs: list[list[int]] = []
    firsts: list[int] = []
    seen: list[np.ndarray] = []
    for i, (y, c, q) in enumerate(items):
        body = [*c, *q, *y]
        first_target = len(c) + len(q)
        seen.append(np.zeros(len(y), dtype=np.int64))
        for begin, t_lo, t_hi in _plan_windows(len(start), len(body), first_target, w, s):
            for b0 in (begin, max(begin, len(c))):  # with, then without the context
                seqs.append([*start, *body[b0:t_hi]])
                firsts.append(len(start) + t_lo - b0)
            jobs.append((i, t_lo - first_target, t_hi - first_target))
            seen[i][t_lo - first_target:t_hi - first_target] = max(0, len(c) - begin)
    got = _batched_logprobs(model, seqs, firsts, batch_size)
    with_lp = [np.zeros(len(y)) for y, _, _ in items]
    without_lp = [np.zeros(len(y)) for y, _, _ in items]
    for k, (i, lo, hi) in enumerate(jobs):
        with_lp[i][lo:hi] = got[2 * k]
        without_lp[i][lo:hi] = got[2 * k + 1]
    return [
        DirectedInformation(
            token_ids=tuple(y),
            pieces=tuple(model.decode([t]) for t in y),
            logprob_with=with_lp[i],
            logprob_without=without_lp[i],
            context_tokens=len(c),
            context_seen=seen[i],
        )
        for i, (y, c, _) in enumerate(items)
    ]


def _plan_windows(n_start: int, n_body: int, first_target: int, window: int,
                  stride: int) -> list[tuple[int, int, int]]:
    """Windows over ``body = c + q + y`` that predict every answer token once.

    A window ``(begin, t_lo, t_hi)`` reads ``start + body[begin:t_hi]`` (at most ``window``
    tokens) and scores the targets ``body[t_lo:t_hi]``. One window when everything fits;
    otherwise the first window ends ``stride`` targets after the first answer token and each
    later one ``stride`` further, so every target has at least ``window - n_start - stride``
    body tokens before it.

    Example:
        >>> _plan_windows(1, 10, 6, window=11, stride=2)
        [(0, 6, 10)]
        >>> _plan_windows(1, 10, 6, window=6, stride=2)
        [(3, 6, 8), (5, 8, 10)]
    """
    if n_start + n_body <= window:
        return [(0, first_target, n_body)]
    span = window - n_start  # body tokens per window (the inputs and the last target)
    if span < 2:
        raise TokenwiseError(f"window={window}: leaves {span} tokens after the start ids; "
                             f"allowed a window of at least {n_start + 2}")
    stride = min(stride, span - 1)
    plans = []
    t_lo = first_target
    t_hi = min(n_body, max(first_target + stride, span))
    while True:
        plans.append((max(0, t_hi - span), t_lo, t_hi))
        if t_hi >= n_body:
            return plans
        t_lo, t_hi = t_hi, min(n_body, t_hi + stride)


def expected_needle_information(code_digits: int = 3) -> np.ndarray:
    """Ideal per-digit directed information of a needle code drawn uniformly from
    ``10**(d-1)..10**d - 1``: ``log 9`` for the first digit, ``log 10`` for each other.

    Args:
        code_digits: digits of the code (the testbed's codes have 3).

    Example:
        >>> round(float(expected_needle_information().sum()), 4)  # log 900
        6.8024
    """
    if code_digits < 1:
        raise TokenwiseError(f"code_digits={code_digits}: allowed >= 1")
    return np.array([np.log(9.0)] + [np.log(10.0)] * (code_digits - 1))

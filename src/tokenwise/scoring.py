"""`tokenwise.score`: per-token signals of a text of any length under a model.

:func:`token_surprisal` is the bare version: the surprisal of given token ids, read the same
way (overlapping windows) by any scorer.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tokenwise import signals
from tokenwise.errors import TokenwiseError
from tokenwise.trace import TokenTrace

if TYPE_CHECKING:
    from tokenwise.models import LanguageModel


def check_text(text: object) -> str:
    """Return ``text`` if it is a non-empty string; raise a TokenwiseError naming it otherwise.

    Args:
        text: what was given as the text to score.

    Example:
        >>> check_text("hi")
        'hi'
    """
    if not isinstance(text, str):
        raise TokenwiseError(f"text must be a str; got {type(text).__name__}")
    if not text.strip():
        raise TokenwiseError(
            f"text is empty or whitespace only ({len(text)} characters); nothing to score"
        )
    return text


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_window_args(window: int | None, stride: int | None, limit: int | None = None, *,
                      prefix: str = "") -> tuple[int | None, int | None]:
    """Check ``window`` and ``stride``; return them with defaults filled in.

    Without ``limit`` (the model's context length, unknown before the model is loaded) the
    checks that need no model are still made, so a command line can fail fast.

    Args:
        window: tokens per forward pass, 2..limit, or None for the context length.
        stride: new tokens per window, 1..window-1, or None for ``window // 2``.
        limit: the model's context length, if known.
        prefix: put before the names in messages (``"--"`` names the command-line options).

    Example:
        >>> check_window_args(None, None, 256)
        (256, 128)
    """
    w = limit if window is None else window
    if w is not None and (not _is_int(w) or w < 2 or (limit is not None and w > limit)):
        most = f"the model's context length {limit}" if limit else "the model's context length"
        raise TokenwiseError(f"{prefix}window={window!r}: allowed an integer from 2 to {most}")
    s = stride if stride is not None or w is None else max(1, w // 2)
    if s is not None and (not _is_int(s) or s < 1 or (w is not None and s > w - 1)):
        most = f"window - 1 = {w - 1}" if w is not None else "window - 1"
        raise TokenwiseError(
            f"{prefix}stride={stride!r}: allowed an integer from 1 to {most} (each new window "
            "keeps window - stride tokens of the previous one as context)"
        )
    return w, s


def plan_windows(n_targets: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows that score every target once, each with as much left context as fits.

    The sequence is ``start ids + tokens``; target ``j`` (1..n) is predicted from the inputs
    before it. Each window feeds inputs ``[begin, end)`` (at most ``window`` tokens) and
    scores the targets ``first..end``. The first window starts at 0; each later one ends
    ``stride`` targets further, so every target after the first window sees at least
    ``window - stride + 1`` tokens of left context.

    Args:
        n_targets: tokens to score.
        window: input tokens per forward pass.
        stride: new targets per window after the first.

    Returns:
        ``(begin, first_target, end)`` per window.

    Example:
        >>> plan_windows(10, window=4, stride=2)
        [(0, 1, 4), (2, 5, 6), (4, 7, 8), (6, 9, 10)]
    """
    plans = []
    end = min(window, n_targets)
    plans.append((0, 1, end))
    while end < n_targets:
        new_end = min(end + stride, n_targets)
        plans.append((new_end - window, end + 1, new_end))
        end = new_end
    return plans


def scorer_start_ids(lm: Any) -> list[int]:
    """The ids a scorer puts in front of a text: its ``start_ids`` (the tokenizer's own
    rule), or, for a scorer without that attribute, its ``bos_token_id`` if it has one.

    Example:
        >>> from types import SimpleNamespace
        >>> scorer_start_ids(SimpleNamespace(start_ids=(), bos_token_id=7))
        []
    """
    start = getattr(lm, "start_ids", None)
    if start is not None:
        return [int(t) for t in start]
    bos = getattr(lm, "bos_token_id", None)
    return [] if bos is None else [int(bos)]


@torch.inference_mode()
def token_surprisal(lm: Any, ids: Sequence[int], prefix: Sequence[int] = (), *,
                    window: int | None = None, stride: int | None = None) -> np.ndarray:
    """Surprisal (nats) of each of ``ids`` given the start ids, ``prefix`` and the ids before it.

    The start ids are the tokenizer's own (:attr:`~tokenwise.models.LanguageModel.start_ids`).
    Where there are none and no ``prefix`` either (SmolLM2, Qwen, GPT-2), nothing predicts
    ``ids[0]``: its entry is NaN (unscored), so the result still lines up with ``ids``.

    Sequences longer than ``window`` (default: the model's context length) are read with
    overlapping windows of it, ``stride`` new tokens each (default half a window); every
    token is scored once, with at least ``window - stride`` tokens of left context.

    Args:
        lm: a scorer with ``context_length``, ``start_ids`` (or ``bos_token_id``), and either
            ``forward(ids, logits_to_keep=)`` (a :class:`~tokenwise.models.LanguageModel`;
            only the scored positions' logits are made) or, without ``forward``,
            ``prompt_logprobs(prompts)`` (the vLLM backend: every window is one prompt, all
            sent in one call).
        ids: the tokens to score.
        prefix: tokens they are conditioned on (not scored).
        window: input tokens per forward pass, 2..context length.
        stride: new tokens per window after the first.

    Example:
        >>> from tokenwise.models import load
        >>> lm = load("tw-small")
        >>> s = token_surprisal(lm, lm.encode("12+7=19"))
        >>> s.shape, bool((s >= 0).all())
        ((7,), True)
    """
    w, s = check_window_args(window, stride, lm.context_length)
    assert w is not None and s is not None
    start = scorer_start_ids(lm)
    seq = torch.tensor([*start, *prefix, *ids], dtype=torch.long)  # (S + P + N,)
    n_prefix, n = len(start) + len(prefix), len(ids)
    out = np.zeros(n, dtype=np.float64)
    if n == 0:
        return out
    if n_prefix == 0:
        out[0] = np.nan  # no token before ids[0]: nothing predicts it
        if n == 1:
            return out
    first_target = max(n_prefix, 1)  # position in seq of the first scored id
    offset = n_prefix  # position in seq of ids[0]
    if not hasattr(lm, "forward"):
        return _prompt_logprob_surprisal(lm, seq.tolist(), first_target, offset, out, w, s)
    for begin, first, end in plan_windows(len(seq) - 1, w, s):
        if end < first_target:
            continue  # this window scores only prefix tokens
        first = max(first, first_target)
        n_new = end - first + 1
        logits = lm.forward(seq[begin:end][None], logits_to_keep=n_new).logits[0]  # (n_new, V)
        logits = logits.float()
        lse = torch.logsumexp(logits, dim=-1)  # (n_new,)
        chosen = logits.gather(-1, seq[first:end + 1, None].to(logits.device))[:, 0]
        out[first - offset:end + 1 - offset] = (lse - chosen).cpu().double().numpy()
    return out


def _prompt_logprob_surprisal(lm: Any, seq: list[int], first_target: int, offset: int,
                              out: np.ndarray, w: int, s: int) -> np.ndarray:
    """:func:`token_surprisal`'s windows scored by a scorer's prompt logprobs.

    A window's scored tokens must be in the prompt, so each prompt is the window's inputs
    plus the token after them (at most ``w + 1 <= max_model_len`` ids); all windows go to the
    scorer in one call.
    """
    plans = [p for p in plan_windows(len(seq) - 1, w, s) if p[2] >= first_target]
    prompts = [seq[begin:end + 1] for begin, _, end in plans]
    for (begin, first, end), lps in zip(plans, lm.prompt_logprobs(prompts), strict=True):
        first = max(first, first_target)
        # lps[k] is log p(seq[begin + 1 + k] | seq[begin:begin + 1 + k])
        out[first - offset:end + 1 - offset] = -lps[first - begin - 1:end - begin]
    return out


def _tokenize(
    model: LanguageModel, text: str
) -> tuple[list[int], list[str], list[tuple[int, int]]]:
    """Token ids, text pieces and character spans, from one tokenizer call where possible."""
    try:
        enc = model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True,
                              split_special_tokens=True, verbose=False)
        ids = list(enc["input_ids"])
        offsets = [tuple(o) for o in enc["offset_mapping"]]
        if len(offsets) != len(ids):
            raise ValueError("offsets do not line up with the tokens")
    except (NotImplementedError, ValueError, KeyError, TypeError):
        # Slow (Python) tokenizers have no offsets: decode each token instead.
        ids = model.encode(text)
        return ids, [model.decode([i]) for i in ids], [(-1, -1)] * len(ids)
    # Make the spans tile the text: a gap (whitespace some tokenizers trim from their
    # offsets) goes to the token after it, a character split over several byte-level tokens
    # goes to the first of them (the others get an empty span at its end), and the last
    # token runs to the end of the text. Then "".join(pieces) == text.
    pieces: list[str] = []
    spans: list[tuple[int, int]] = []
    prev_end = 0
    for i, (_, end) in enumerate(offsets):
        start = prev_end
        end = len(text) if i == len(offsets) - 1 else max(end, start)
        pieces.append(text[start:end])
        spans.append((start, end))
        prev_end = end
    return ids, pieces, spans


def score(
    model: LanguageModel | str | os.PathLike[str],
    text: str,
    *,
    window: int | None = None,
    stride: int | None = None,
    top_k: int = 5,
    progress: bool = False,
) -> TokenTrace:
    """Score every token of ``text``: log-probability, entropy, varentropy, alternatives.

    Texts longer than the window are scored with overlapping windows: each token is scored
    exactly once, with at least ``window - stride + 1`` tokens of left context (all of it
    when the text fits in one window). Only one window's logits exist at a time, and only
    for the positions that window scores.

    Args:
        model: a :class:`~tokenwise.models.LanguageModel`, or a built-in name / local
            directory to load.
        text: the text (non-empty), scored as given: a leading U+FEFF is scored too (the
            command line drops a byte order mark when it reads a file).
        window: input tokens per forward pass, 2..context length (default: the context
            length).
        stride: new tokens scored per window after the first, 1..window-1 (default
            ``window // 2``).
        top_k: alternatives to keep per position (0..vocabulary size).
        progress: show a progress bar over the windows on standard error (redrawn at
            most every few seconds when stderr is a file or a pipe).

    Returns:
        A :class:`~tokenwise.trace.TokenTrace` with one row per token of ``text``: per token
        from the second on when the tokenizer puts no start token in front of a text
        (SmolLM2, Qwen, GPT-2), as nothing predicts the first (``trace.unscored == 1``).

    Example:
        >>> import tokenwise as tw
        >>> trace = tw.score("tw-large", "Q: Where was Dalvin Orsk born?\\nA:")
        >>> bool((trace.entropies >= 0).all())
        True
    """
    from tokenwise.models import LanguageModel, load

    text = check_text(text)
    lm = model if isinstance(model, LanguageModel) else load(model)
    w, s = check_window_args(window, stride, lm.context_length)
    assert w is not None and s is not None
    if not _is_int(top_k) or not 0 <= top_k <= lm.vocab_size:
        raise TokenwiseError(f"top_k={top_k!r}: allowed an integer from 0 to {lm.vocab_size}")
    ids, pieces, offsets = _tokenize(lm, text)
    start = list(lm.start_ids)
    # Without start ids nothing predicts the text's first token: the trace starts at the
    # second, and the first one's text goes to its piece (see TokenTrace, ``unscored``).
    unscored = 0 if start else 1
    if len(ids) <= unscored:
        raise TokenwiseError(
            f"text {text!r} is {len(ids)} token(s), and model {lm.name!r}'s tokenizer puts no "
            "start token in front of a text, so nothing predicts its first token; give a "
            "longer text"
        )
    if unscored:
        pieces = [pieces[0] + pieces[1], *pieces[2:]]
        joined = (offsets[0][0], offsets[1][1]) if offsets[0][0] >= 0 else offsets[1]
        offsets = [joined, *offsets[2:]]
    seq = torch.tensor([*start, *ids], dtype=torch.long)  # (S + n,)
    first_target = max(len(start), 1)  # position in seq of the first scored token
    stats_parts = []
    contexts = []
    plans = [p for p in plan_windows(len(seq) - 1, w, s) if p[2] >= first_target]
    from tokenwise.progress import progress_bar

    for begin, first, end in progress_bar(plans, desc="score", unit="window", enabled=progress):
        first = max(first, first_target)
        inputs = seq[begin:end][None]  # (1, end - begin)
        n_new = end - first + 1
        logits = lm.forward(inputs, logits_to_keep=n_new).logits[0]  # (n_new, V)
        stats = signals.token_stats(logits, seq[first : end + 1], top_k=top_k)
        # The trace lives on the CPU whatever the model's device (JSON, HTML, numpy).
        stats_parts.append(dataclasses.replace(
            stats, **{f.name: getattr(stats, f.name).cpu() for f in dataclasses.fields(stats)}
        ))
        contexts.append(torch.arange(first, end + 1) - begin)
        del logits
    top_ids = torch.cat([p.top_ids for p in stats_parts])
    unique = torch.unique(top_ids).tolist()
    # No alternatives (top_k=0) decode to nothing: transformers 5.19 (and 5.16) answers
    # batch_decode([]) with [''] (one empty sequence), so an empty batch is never asked for.
    pieces_of = lm.tokenizer.batch_decode([[u] for u in unique]) if unique else []
    decoded = dict(zip(unique, pieces_of, strict=True))
    return TokenTrace(
        text=text,
        model=lm.name,
        token_ids=seq[first_target:].clone(),
        pieces=pieces,
        offsets=offsets,
        logprobs=torch.cat([p.logprobs for p in stats_parts]),
        entropies=torch.cat([p.entropies for p in stats_parts]),
        varentropies=torch.cat([p.varentropies for p in stats_parts]),
        top_ids=top_ids,
        top_logprobs=torch.cat([p.top_logprobs for p in stats_parts]),
        top_pieces=[[decoded[t] for t in row] for row in top_ids.tolist()],
        context_lengths=torch.cat(contexts),
        window=w,
        stride=s,
        unscored=unscored,
    )

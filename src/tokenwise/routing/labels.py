"""Difficulty labels from sampled answers, as DiffAdapt labels its probe's training set.

For each training question the model answers ``k`` times (sampled); the fraction right is its
accuracy and the entropy of its normalised answers says how much the samples scatter.
DiffAdapt splits questions into Easy / Normal / Hard by these; the exact cut points are not
published, so ours are parameters with these defaults:

- ``easy``: accuracy >= ``easy_at`` (0.8), unless the answers scatter more than
  ``easy_max_entropy`` (off by default): right by luck of the draw is not easy;
- ``hard``: accuracy <= ``hard_at`` (0.2): more samples of this model rarely help;
- ``normal``: everything between, where a stronger strategy has the most to gain.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tokenwise.errors import TokenwiseError

LABELS = ("easy", "normal", "hard")


def difficulty_labels(accuracy: Sequence[float], answer_entropy: Sequence[float] | None = None,
                      *, easy_at: float = 0.8, hard_at: float = 0.2,
                      easy_max_entropy: float | None = None) -> list[str]:
    """One of ``easy``/``normal``/``hard`` per question.

    Args:
        accuracy: per question, the fraction of its ``k`` sampled answers that were right.
        answer_entropy: per question, the entropy (nats) of its normalised answers
            (:func:`tokenwise.routing.answer_entropy`); needed with ``easy_max_entropy``.
        easy_at: accuracy at or above which a question is easy (0 < hard_at < easy_at <= 1).
        hard_at: accuracy at or below which a question is hard.
        easy_max_entropy: if set, an accurate question whose answers scatter more than this
            is ``normal``, not ``easy``.

    Example:
        >>> difficulty_labels([1.0, 0.5, 0.0, 0.9], [0.0, 0.7, 1.6, 0.9], easy_max_entropy=0.5)
        ['easy', 'normal', 'hard', 'normal']
    """
    if not (0.0 <= hard_at < easy_at <= 1.0):
        raise TokenwiseError(f"need 0 <= hard_at < easy_at <= 1, got hard_at={hard_at!r}, "
                             f"easy_at={easy_at!r}")
    acc = [float(a) for a in accuracy]
    bad = [a for a in acc if not 0.0 <= a <= 1.0]
    if bad:
        raise TokenwiseError(f"accuracies must lie in [0, 1], got {bad[0]!r}")
    if easy_max_entropy is not None:
        if answer_entropy is None:
            raise TokenwiseError("easy_max_entropy needs answer_entropy")
        if not easy_max_entropy >= 0:
            raise TokenwiseError(f"easy_max_entropy must be >= 0, got {easy_max_entropy!r}")
    ent = None if answer_entropy is None else [float(h) for h in answer_entropy]
    if ent is not None:
        if len(ent) != len(acc):
            raise TokenwiseError(f"{len(acc)} accuracies but {len(ent)} answer entropies")
        if any(not (h >= 0 and math.isfinite(h)) for h in ent):
            raise TokenwiseError("answer entropies must be finite and >= 0")
    out = []
    for i, a in enumerate(acc):
        if a <= hard_at:
            out.append("hard")
        elif a >= easy_at and not (easy_max_entropy is not None and ent is not None
                                   and ent[i] > easy_max_entropy):
            out.append("easy")
        else:
            out.append("normal")
    return out

"""The figure of a comparison: accuracy per bucket for both models, and the text metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def comparison_figure(result: Any, path: str | Path) -> Path:
    """Write a PNG: left, accuracy per bucket (base and candidate, 95% intervals); right,
    the held-out text's KL, top-1 disagreement and perplexity ratio - 1.

    Args:
        result: a :class:`~tokenwise.evaluate.compare.Comparison`.
        path: the PNG's path (parent folders are made).

    Example:
        >>> from tokenwise.evaluate.compare import Comparison
        >>> comparison_figure(Comparison("a", "b", "s"), "/tmp/cmp.png").name  # doctest: +SKIP
        'cmp.png'
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2),
                                      gridspec_kw={"width_ratios": [3, 1]})
    names = list(result.buckets)
    x = np.arange(len(names))
    for shift, who, color in ((-0.2, "base", "tab:blue"), (0.2, "candidate", "tab:orange")):
        acc = np.array([getattr(result.buckets[n], f"{who}_accuracy") for n in names])
        ci = np.array([getattr(result.buckets[n], f"{who}_ci") for n in names]).reshape(-1, 2)
        err = np.abs(ci.T - acc) if len(names) else None
        left.bar(x + shift, acc, 0.4, yerr=err, capsize=3, color=color,
                 label=getattr(result, who))
    left.set_xticks(x, names, rotation=35, ha="right", fontsize=8)
    left.set_ylim(0, 1.05)
    left.set_ylabel("greedy accuracy (95% CI)")
    left.legend(fontsize=8)
    left.set_title(f"answers: {result.candidate} vs {result.base}", fontsize=10)
    t = result.text
    if t is not None:
        labels = ["KL(base||cand)", "1 - top-1 agree", "ppl ratio - 1"]
        vals = [t.kl, 1 - t.top1_agreement, t.perplexity_ratio - 1]
        lows = [t.kl_ci[0], 1 - t.top1_agreement_ci[1], t.perplexity_ratio_ci[0] - 1]
        highs = [t.kl_ci[1], 1 - t.top1_agreement_ci[0], t.perplexity_ratio_ci[1] - 1]
        err = np.abs(np.array([lows, highs]) - np.array(vals))
        right.bar(labels, vals, yerr=err, capsize=3, color="tab:gray")
        right.tick_params(axis="x", labelrotation=30, labelsize=8)
        right.set_title(f"held-out text ({t.tokens} tokens)", fontsize=10)
    else:
        right.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

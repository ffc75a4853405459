"""AEPO-style rewards: difficulty buckets, hierarchical entropy reward, non-drifting KL coefficient.

ARES (Chen et al., 2025, arXiv 2510.08457, "Multimodal Adaptive Reasoning via Difficulty-Aware
Token-Level Entropy Shaping") trains with Adaptive Entropy Policy Optimization (AEPO). A
token is a high window-entropy (HWE) token when the entropy averaged over a sliding window,
``Hbar_{t:w} = (1/w) * sum_{tau=t}^{t+w-1} H_tau``, passes a threshold; the number of HWE
tokens in a rollout measures how much it explored. AEPO buckets each prompt by the accuracy
of its k rollouts (easy / medium / hard), gives each bucket a target HWE usage, and shapes the
reward so that easy problems explore less and hard ones more, with a KL penalty whose
coefficient adapts to the measured KL.

These are pure functions a TRL or verl reward hook can call on a batch of rollouts:

* :func:`difficulty_buckets`: bucket per prompt from rollout accuracy.
* :func:`bucket_targets`: per-bucket target usage, a scaled mean of the bucket's usage.
* :func:`aepo_rewards`: accuracy reward plus the bounded, bucket-dependent shaping term.
* :func:`adaptive_kl_coef`: the KL coefficient for the KL measured now; it never compounds.

Where this differs from the ARES code, on purpose: the per-bucket coefficients are real
parameters with different defaults per bucket (the code's target scales are all 1.0); the
KL coefficient is a function of the current KL, not a product over steps, so the same KL gives
the same coefficient at every step; and a wrong answer gets no exploration bonus at or below
its target (the code's ``sigmoid(0) = 0.5`` gave every wrong answer one), and can never score
as high as a correct answer of its bucket.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tokenwise.errors import TokenwiseError

__all__ = [
    "BUCKETS",
    "DEFAULT_SHAPING",
    "DEFAULT_TARGET_SCALES",
    "ShapingCoefficients",
    "adaptive_kl_coef",
    "aepo_rewards",
    "bucket_targets",
    "difficulty_buckets",
]

BUCKETS = ("easy", "medium", "hard")


@dataclass(frozen=True)
class ShapingCoefficients:
    """How one difficulty bucket shapes the reward around its target HWE usage.

    With ``d = (u - T) / T`` the relative deviation of a rollout's usage ``u`` from the
    bucket target ``T``, ``over = clip(d, 0, 1)`` and ``under = clip(-d, 0, 1)``:
    a correct rollout gets ``above * over + below * under``, a wrong one ``wrong * over``.

    Args:
        above: weight on usage above the target, for correct rollouts (negative penalises
            extra exploration, positive rewards it).
        below: weight on usage below the target, for correct rollouts.
        wrong: weight on usage above the target, for wrong rollouts (at or below the target
            a wrong rollout's shaping is 0).

    Example:
        >>> ShapingCoefficients(above=-0.5, below=0.0, wrong=0.1).above
        -0.5
    """

    above: float
    below: float
    wrong: float


# Easy: a correct answer pays for HWE use beyond the target (overthinking), none for less.
# Medium: a correct answer is held near the target from both sides.
# Hard: a correct answer earns for exploring beyond the target, pays for under-exploring.
# Wrong answers earn a little for exploring beyond the target, more on harder problems.
# Each satisfies max(0, wrong) - min(0, above, below) < 1, so wrong < correct (see aepo_rewards).
DEFAULT_SHAPING: Mapping[str, ShapingCoefficients] = {
    "easy": ShapingCoefficients(above=-0.5, below=0.0, wrong=0.1),
    "medium": ShapingCoefficients(above=-0.25, below=-0.25, wrong=0.2),
    "hard": ShapingCoefficients(above=0.5, below=-0.25, wrong=0.4),
}

# Target = scale * mean usage of the bucket: below the mean for easy prompts (use fewer HWE
# tokens), at the mean for medium, above it for hard (use more).
DEFAULT_TARGET_SCALES: Mapping[str, float] = {"easy": 0.8, "medium": 1.0, "hard": 1.2}


def _values(x: Any, name: str) -> list[Any]:
    """``x`` (a list, tuple or tensor) as a flat Python list."""
    if isinstance(x, torch.Tensor):
        if x.dim() > 1:
            raise TokenwiseError(f"{name} must be one value per rollout (1-D); got shape "
                                 f"{tuple(x.shape)}")
        return x.detach().cpu().tolist()
    if isinstance(x, (str, bytes)) or not isinstance(x, Sequence):
        raise TokenwiseError(f"{name} must be a list or 1-D tensor; got {type(x).__name__}")
    return list(x)


def _floats(x: Any, name: str, *, low: float = 0.0, high: float = math.inf) -> list[float]:
    """``x`` as floats, each finite and in ``[low, high]``."""
    out = []
    for i, v in enumerate(_values(x, name)):
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise TokenwiseError(f"{name}[{i}] = {v!r} is not a number") from None
        if not (math.isfinite(f) and low <= f <= high):
            raise TokenwiseError(f"{name}[{i}] = {v!r}; allowed: a finite number in "
                                 f"[{low}, {high}]")
        out.append(f)
    return out


def difficulty_buckets(
    accuracies: Any, easy: float = 2 / 3, hard: float = 1 / 3
) -> list[str]:
    """The difficulty bucket of each prompt from the fraction of its rollouts that were correct.

    ``accuracy >= easy`` is ``"easy"``, ``accuracy < hard`` is ``"hard"``, the rest
    ``"medium"`` (ARES's code uses 2/3 and 1/3, the defaults here). With one rollout per
    prompt (k = 1) a correct prompt is easy and a wrong one hard.

    Args:
        accuracies: per prompt, the fraction of its k rollouts that were correct, in [0, 1]
            (a list or 1-D tensor).
        easy: lowest accuracy that counts as easy.
        hard: accuracies below this are hard; ``0 <= hard <= easy <= 1``.

    Example:
        >>> difficulty_buckets([1.0, 0.75, 0.5, 0.25, 0.0])
        ['easy', 'easy', 'medium', 'hard', 'hard']
    """
    if not (0.0 <= hard <= easy <= 1.0):
        raise TokenwiseError(f"thresholds easy={easy!r}, hard={hard!r}; allowed: "
                             "0 <= hard <= easy <= 1")
    accs = _floats(accuracies, "accuracies", high=1.0)
    return ["easy" if a >= easy else "hard" if a < hard else "medium" for a in accs]


def _usage(hwe_counts: Any, lengths: Any | None) -> list[float]:
    """HWE usage per rollout: the count, or the count over the length when lengths are given."""
    counts = _floats(hwe_counts, "hwe_counts")
    if lengths is None:
        return counts
    lens = _floats(lengths, "lengths")
    if len(lens) != len(counts):
        raise TokenwiseError(f"lengths has {len(lens)} values, hwe_counts {len(counts)}; "
                             "allowed: one length per rollout")
    for i, (c, n) in enumerate(zip(counts, lens, strict=True)):
        if n <= 0 or c > n:
            raise TokenwiseError(f"lengths[{i}] = {n!r} with hwe_counts[{i}] = {c!r}; allowed: "
                                 "a positive length no smaller than the HWE count")
    return [c / n for c, n in zip(counts, lens, strict=True)]


def _rollout_buckets(
    correct: list[bool], groups: Any | None, buckets: Any | None, easy: float, hard: float
) -> list[str]:
    """Each rollout's bucket, given directly or from its group's accuracy."""
    if (groups is None) == (buckets is None):
        raise TokenwiseError("pass exactly one of groups= (prompt id per rollout; buckets come "
                             "from each group's accuracy) or buckets= (bucket per rollout)")
    if buckets is not None:
        out = [str(b) for b in _values(buckets, "buckets")]
        name = "buckets"
    else:
        ids = _values(groups, "groups")
        for i, g in enumerate(ids):
            if not isinstance(g, Hashable):
                raise TokenwiseError(f"groups[{i}] = {g!r}; allowed: a hashable prompt id")
        hits: dict[Hashable, list[int]] = {}
        for g, c in zip(ids, correct, strict=True):
            hits.setdefault(g, []).append(int(c))
        by_group = dict(zip(hits, difficulty_buckets(
            [sum(v) / len(v) for v in hits.values()], easy=easy, hard=hard), strict=True))
        out = [by_group[g] for g in ids]
        name = "groups"
    if len(out) != len(correct):
        raise TokenwiseError(f"{name} has {len(out)} values, correct {len(correct)}; "
                             "allowed: one per rollout")
    return out


def _correct(correct: Any) -> list[bool]:
    out = []
    for i, v in enumerate(_values(correct, "correct")):
        if isinstance(v, bool) or v in (0, 1):
            out.append(bool(v))
        else:
            raise TokenwiseError(f"correct[{i}] = {v!r}; allowed: True/False or 1/0")
    return out


def bucket_targets(
    hwe_counts: Any,
    buckets: Any,
    scales: Mapping[str, float] = DEFAULT_TARGET_SCALES,
    lengths: Any | None = None,
) -> dict[str, float]:
    """Per-bucket target HWE usage: ``T_b = scale_b * mean(usage of the rollouts in bucket b)``.

    ARES sets each bucket's target to its mean HWE count (its scales are all 1.0); here the
    scale is a real parameter, below 1 for easy prompts (pull usage down), 1 for medium,
    above 1 for hard (push it up). Buckets with no rollouts get no target.

    Args:
        hwe_counts: HWE token count per rollout (a list or 1-D tensor, each >= 0).
        buckets: bucket name per rollout (e.g. from :func:`difficulty_buckets`).
        scales: bucket name to its positive scale; every bucket present needs one.
        lengths: optional response length per rollout; then usage is the HWE fraction
            ``count / length``, as in :func:`aepo_rewards`.

    Example:
        >>> bucket_targets([10, 30, 20, 40], ["easy", "easy", "hard", "hard"])
        {'easy': 16.0, 'hard': 36.0}
    """
    usage = _usage(hwe_counts, lengths)
    names = [str(b) for b in _values(buckets, "buckets")]
    if len(names) != len(usage):
        raise TokenwiseError(f"buckets has {len(names)} values, hwe_counts {len(usage)}; "
                             "allowed: one bucket per rollout")
    sums: dict[str, list[float]] = {}
    for b, u in zip(names, usage, strict=True):
        sums.setdefault(b, []).append(u)
    out = {}
    for b, us in sums.items():
        if b not in scales:
            raise TokenwiseError(f"bucket {b!r} has no scale; allowed: {sorted(scales)}")
        s = float(scales[b])
        if not (math.isfinite(s) and s > 0):
            raise TokenwiseError(f"scales[{b!r}] = {s!r}; allowed: a positive number")
        out[b] = s * sum(us) / len(us)
    return out


def _check_shaping(coefficients: Mapping[str, ShapingCoefficients]) -> None:
    for b, c in coefficients.items():
        ws = (c.above, c.below, c.wrong)
        if not all(math.isfinite(float(w)) for w in ws):
            raise TokenwiseError(f"coefficients[{b!r}] = {c!r}; allowed: finite weights")
        spread = max(0.0, c.wrong) - min(0.0, c.above, c.below)
        if spread >= 1.0:
            raise TokenwiseError(
                f"coefficients[{b!r}] = {c!r} lets a wrong answer reach a correct one "
                f"(max(0, wrong) - min(0, above, below) = {spread:g}); allowed: below 1")


def aepo_rewards(
    correct: Any,
    hwe_counts: Any,
    targets: Mapping[str, float],
    *,
    groups: Any | None = None,
    buckets: Any | None = None,
    lengths: Any | None = None,
    coefficients: Mapping[str, ShapingCoefficients] = DEFAULT_SHAPING,
    easy: float = 2 / 3,
    hard: float = 1 / 3,
) -> list[float] | torch.Tensor:
    """Per-rollout AEPO reward: 1 for a correct answer, plus a bounded, bucket-shaped entropy term.

    For rollout i in bucket b, with usage ``u_i`` (HWE token count, or count / length when
    ``lengths`` is given) and target ``T_b > 0``::

        d_i     = (u_i - T_b) / T_b                      relative deviation from the target
        over_i  = clip(d_i, 0, 1),  under_i = clip(-d_i, 0, 1)
        R_i     = 1 + above_b * over_i + below_b * under_i     if rollout i is correct
        R_i     =     wrong_b * over_i                          if it is wrong

    The bucket comes from ``buckets`` directly, or from ``groups``: all rollouts of one prompt
    share an id, the group's accuracy (fraction correct) picks the bucket via
    :func:`difficulty_buckets` with ``easy``/``hard``.

    Invariant (checked on ``coefficients``, raising if it cannot hold): within a bucket, and
    so within a group, every wrong rollout scores strictly below every correct one, because
    ``max(0, wrong_b) - min(0, above_b, below_b) < 1``; and a wrong rollout at or below its
    target gets exactly 0, no bonus.

    Choices where the paper is vague: the deviation is relative to the target, so one set of
    weights serves counts and fractions alike; it saturates at twice (or zero times) the
    target, so the shaping is bounded and linear, with no sigmoid offset; a wrong rollout is
    only ever rewarded for exploring beyond the target (ARES's code rewards wrong answers for
    exploring too, but also at the target); the accuracy reward is 1/0 and format rewards are
    left to the caller to add.

    Args:
        correct: per rollout, whether the answer was right (bools or 1/0; list or 1-D tensor).
        hwe_counts: per rollout, the number of high window-entropy tokens (>= 0).
        targets: bucket name to its target usage ``T_b > 0`` (same unit as the usage, e.g.
            from :func:`bucket_targets`); every bucket present needs one.
        groups: per rollout, a prompt id; buckets are computed from each group's accuracy.
        buckets: per rollout, a bucket name; use instead of ``groups``.
        lengths: optional response length per rollout; usage becomes ``hwe_counts / lengths``.
        coefficients: bucket name to its :class:`ShapingCoefficients`.
        easy: accuracy at or above which a group is easy (with ``groups``).
        hard: accuracy below which a group is hard (with ``groups``).

    Returns:
        One reward per rollout: a float32 tensor on ``correct``'s device when ``correct`` is a
        tensor, else a list of floats.

    Example:
        >>> aepo_rewards([1, 1, 0], [10, 15, 30], {"easy": 10.0}, groups=[0, 0, 0])
        [1.0, 0.75, 0.1]
    """
    flags = _correct(correct)
    usage = _usage(hwe_counts, lengths)
    if len(usage) != len(flags):
        raise TokenwiseError(f"hwe_counts has {len(usage)} values, correct {len(flags)}; "
                             "allowed: one per rollout")
    names = _rollout_buckets(flags, groups, buckets, easy, hard)
    _check_shaping(coefficients)
    rewards = []
    for b, ok, u in zip(names, flags, usage, strict=True):
        if b not in targets:
            raise TokenwiseError(f"bucket {b!r} has no target; allowed: {sorted(targets)}")
        if b not in coefficients:
            raise TokenwiseError(f"bucket {b!r} has no coefficients; allowed: "
                                 f"{sorted(coefficients)}")
        t = float(targets[b])
        if not (math.isfinite(t) and t > 0):
            raise TokenwiseError(f"targets[{b!r}] = {t!r}; allowed: a positive number")
        c = coefficients[b]
        d = (u - t) / t
        over, under = min(max(d, 0.0), 1.0), min(max(-d, 0.0), 1.0)
        rewards.append(1.0 + c.above * over + c.below * under if ok else c.wrong * over)
    if isinstance(correct, torch.Tensor):
        return torch.tensor(rewards, dtype=torch.float32, device=correct.device)
    return rewards


def adaptive_kl_coef(
    kl: float,
    target: float,
    init_coef: float,
    *,
    gain: float = 1.0,
    max_error: float = 1.0,
    beta_min: float = 0.0,
    beta_max: float = math.inf,
) -> float:
    """The KL coefficient for the KL measured now; the same KL always gives the same coefficient.

    ``e = clip(kl / target - 1, -max_error, max_error)`` and
    ``beta = clip(init_coef * (1 + gain * e), beta_min, beta_max)``.

    KL above its target raises the coefficient, below lowers it, proportionally and around
    ``init_coef``. It is derived from the initial value, never from the previous step's
    coefficient, so N steps at one KL give one beta and it cannot drift or compound (ARES's
    code multiplies the coefficient by a step factor every step, and the TRL/Ziegler
    controller it copies compounds too). The price is a proportional controller's steady-state
    offset: a persistent KL above target holds beta at a fixed, bounded level instead of
    ratcheting it up. For per-bucket KL budgets, call it per bucket with that bucket's KL,
    target and initial coefficient.

    Args:
        kl: the KL measured this step (mean per token, >= 0).
        target: the KL aimed for (> 0).
        init_coef: the coefficient at ``kl == target`` (>= 0).
        gain: how strongly the relative KL error moves beta (>= 0).
        max_error: the relative error is clipped to ``[-max_error, max_error]`` (> 0).
        beta_min: lowest coefficient returned (>= 0).
        beta_max: highest coefficient returned (>= beta_min).

    Example:
        >>> adaptive_kl_coef(0.05, 0.1, 0.01)  # KL at half its target: 0.01 * (1 - 0.5)
        0.005
        >>> [round(adaptive_kl_coef(0.15, 0.1, 0.01), 6) for step in range(3)]  # no drift
        [0.015, 0.015, 0.015]
    """
    checks = [
        ("kl", kl, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
        ("target", target, lambda v: math.isfinite(v) and v > 0, "a finite number > 0"),
        ("init_coef", init_coef, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
        ("gain", gain, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
        ("max_error", max_error, lambda v: math.isfinite(v) and v > 0, "a finite number > 0"),
        ("beta_min", beta_min, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
        ("beta_max", beta_max, lambda v: v >= beta_min, f"a number >= beta_min = {beta_min}"),
    ]
    for name, value, ok, allowed in checks:
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise TokenwiseError(f"{name} = {value!r}; allowed: {allowed}") from None
        if math.isnan(v) or not ok(v):
            raise TokenwiseError(f"{name} = {value!r}; allowed: {allowed}")
    err = min(max(float(kl) / float(target) - 1.0, -max_error), max_error)
    beta = float(init_coef) * (1.0 + float(gain) * err)
    return min(max(beta, float(beta_min)), float(beta_max))

"""Compare a model with its compressed variant on the same items and the same text.

Perplexity alone hides what compression costs (LLM-KICK, Jaiswal et al. 2023): a pruned model
can keep its perplexity and lose the facts it had seen least. :func:`compare` therefore reads
both models on one :class:`~tokenwise.evaluate.suite.Suite`:

- answers: greedy accuracy of both per bucket, the paired difference with a percentile
  bootstrap interval (items resampled, both models' answers kept together), and the flips
  (right -> wrong, wrong -> right);
- text: on the same held-out tokens, KL(base || candidate) of the next-token distributions,
  how often their top-1 tokens agree, the shift of the mean entropy, and both perplexities,
  with intervals from resampling the text's segments (windows of at most ``window`` tokens).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from tokenwise import signals
from tokenwise.errors import TokenwiseError
from tokenwise.evaluate.suite import Item, Suite
from tokenwise.models import LanguageModel
from tokenwise.progress import progress_bar

#: Bootstrap resamples behind every interval.
N_BOOT = 2000


def check_same_tokenizer(base: LanguageModel, candidate: LanguageModel) -> None:
    """Raise unless both models read text into the same token ids (same vocabulary, same
    start and end ids, same logits width): the comparison is token by token.

    Args:
        base: the reference model.
        candidate: the model compared with it.

    Example:
        >>> from tokenwise.models import load
        >>> check_same_tokenizer(load("tw-small"), load("tw-large"))  # same testbed tokenizer
    """
    what = []
    if base.tokenizer.get_vocab() != candidate.tokenizer.get_vocab():
        what.append("vocabularies differ")
    if tuple(base.start_ids) != tuple(candidate.start_ids):
        what.append(f"start ids {tuple(base.start_ids)} vs {tuple(candidate.start_ids)}")
    if base.eos_token_id != candidate.eos_token_id:
        what.append(f"end ids {base.eos_token_id} vs {candidate.eos_token_id}")
    if base.vocab_size != candidate.vocab_size:
        what.append(f"logits width {base.vocab_size} vs {candidate.vocab_size}")
    if what:
        raise TokenwiseError(
            f"models {base.name!r} and {candidate.name!r} do not share a tokenizer "
            f"({'; '.join(what)}); compare needs a model and a variant of it with the same "
            "tokenizer")


def answer_items(model: LanguageModel, items: Sequence[Item], *, batch_size: int = 32,
                 progress: bool = False) -> list[str]:
    """Greedy completions of every item's prompt (batched; items with the same length limit
    and stop string share batches).

    Args:
        model: the model.
        items: the questions.
        batch_size: prompts per batch.
        progress: show a progress bar on standard error.

    Example:
        >>> from tokenwise.models import load
        >>> answer_items(load("tw-large"), [Item("7+2=", ("9",), "arithmetic/1")])
        ['9']
    """
    from tokenwise.generation import generate

    if batch_size < 1:
        raise TokenwiseError(f"batch_size={batch_size}: must be >= 1")
    groups: dict[tuple[int, str], list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault((it.max_new_tokens, it.stop), []).append(i)
    out = [""] * len(items)
    bar = progress_bar(total=len(items), desc=f"answers {model.name}", unit="item",
                       enabled=progress)
    for (max_new, stop), idx in groups.items():
        for start in range(0, len(idx), batch_size):
            chunk = idx[start:start + batch_size]
            gens = generate(model, [items[i].prompt for i in chunk], None,
                            max_new_tokens=max_new, stop=stop or None)
            for i, g in zip(chunk, gens, strict=True):
                out[i] = g.text.strip()
            bar.update(len(chunk))
    bar.close()
    return out


def _percentiles(values: np.ndarray) -> list[float]:
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [round(float(lo), 4), round(float(hi), 4)]


@dataclass
class BucketComparison:
    """Both models' answers on one bucket.

    Attributes:
        n: items.
        base_accuracy, candidate_accuracy: shares right.
        base_ci, candidate_ci: 95% percentile-bootstrap intervals.
        difference: candidate - base accuracy.
        difference_ci: 95% paired bootstrap interval of the difference.
        right_to_wrong: items the base got right and the candidate wrong.
        wrong_to_right: items the base got wrong and the candidate right.
    """

    n: int
    base_accuracy: float
    candidate_accuracy: float
    base_ci: list[float]
    candidate_ci: list[float]
    difference: float
    difference_ci: list[float]
    right_to_wrong: int
    wrong_to_right: int


def paired_bootstrap(base_right: np.ndarray, candidate_right: np.ndarray, *,
                     n_boot: int = N_BOOT, seed: int = 0) -> BucketComparison:
    """Accuracies, their difference and flips, with 95% intervals from resampling items
    (each resample keeps an item's two answers together).

    Args:
        base_right: 1/0 per item for the base model.
        candidate_right: 1/0 per item for the candidate, same items in the same order.
        n_boot: bootstrap resamples.
        seed: the resampling seed.

    Example:
        >>> r = paired_bootstrap(np.array([1, 1, 0, 1]), np.array([1, 0, 0, 1]))
        >>> r.difference, r.right_to_wrong, r.wrong_to_right
        (-0.25, 1, 0)
    """
    b = np.asarray(base_right, dtype=float)
    c = np.asarray(candidate_right, dtype=float)
    if b.shape != c.shape or b.ndim != 1:
        raise TokenwiseError(f"paired answers need two equal 1-D arrays; got shapes {b.shape} "
                             f"and {c.shape}")
    n = b.size
    if n == 0:
        return BucketComparison(0, 0.0, 0.0, [0.0, 1.0], [0.0, 1.0], 0.0, [-1.0, 1.0], 0, 0)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))  # (n_boot, n)
    rb, rc = b[idx].mean(1), c[idx].mean(1)
    return BucketComparison(
        n=n,
        base_accuracy=round(float(b.mean()), 4),
        candidate_accuracy=round(float(c.mean()), 4),
        base_ci=_percentiles(rb),
        candidate_ci=_percentiles(rc),
        difference=round(float(c.mean() - b.mean()), 4),
        difference_ci=_percentiles(rc - rb),
        right_to_wrong=int(((b == 1) & (c == 0)).sum()),
        wrong_to_right=int(((b == 0) & (c == 1)).sum()),
    )


@dataclass
class TextComparison:
    """Next-token distributions of both models on the same held-out tokens.

    Attributes:
        tokens: scored positions; segments: windows they came in (the resampling unit).
        kl: mean KL(base || candidate) per token, nats; top1_agreement: share of positions
            whose argmax tokens agree; base_entropy, candidate_entropy, entropy_shift: mean
            entropies (nats) and candidate - base; base_perplexity, candidate_perplexity,
            perplexity_ratio: candidate / base. Each ``*_ci`` is a 95% percentile-bootstrap
            interval over segments.
    """

    tokens: int
    segments: int
    kl: float
    kl_ci: list[float]
    top1_agreement: float
    top1_agreement_ci: list[float]
    base_entropy: float
    candidate_entropy: float
    entropy_shift: float
    entropy_shift_ci: list[float]
    base_perplexity: float
    candidate_perplexity: float
    perplexity_ratio: float
    perplexity_ratio_ci: list[float]


def _segments(model: LanguageModel, texts: Sequence[str], window: int) -> list[list[int]]:
    """Each text's ids (start ids first) cut into windows of at most ``window`` ids; a window
    after the first starts cold (its first id is context only)."""
    out = []
    for text in texts:
        ids = list(model.start_ids) + model.encode(text)
        for start in range(0, len(ids) - 1, window):
            piece = ids[start:start + window]
            if len(piece) >= 2:
                out.append(piece)
    return out


@torch.inference_mode()
def compare_texts(base: LanguageModel, candidate: LanguageModel, texts: Sequence[str], *,
                  window: int = 256, n_boot: int = N_BOOT, seed: int = 0) -> TextComparison:
    """KL(base || candidate), top-1 agreement, entropy shift and both perplexities on the
    same tokens of ``texts``.

    Args:
        base: the reference model.
        candidate: the compressed variant (same tokenizer).
        texts: held-out texts.
        window: most tokens per forward pass (capped at the models' context length).
        n_boot: bootstrap resamples.
        seed: the resampling seed.

    Example:
        >>> from tokenwise.models import load
        >>> lm = load("tw-small")
        >>> compare_texts(lm, lm, ["Q: Where was Ada born?"]).kl
        0.0
    """
    check_same_tokenizer(base, candidate)
    if not texts:
        raise TokenwiseError("no held-out texts to compare the models on")
    window = min(int(window), base.context_length, candidate.context_length)
    if window < 2:
        raise TokenwiseError(f"window={window}: must be >= 2 tokens")
    rows = []  # per segment: tokens, KL, agreements, H_base, H_cand, NLL_base, NLL_cand (sums)
    for ids in _segments(base, texts, window):
        x = torch.tensor([ids])
        lb = torch.log_softmax(base.forward(x).logits[0, :-1].float(), -1)  # (T-1, V)
        lc = torch.log_softmax(candidate.forward(x).logits[0, :-1].float().to(lb.device), -1)
        target = x[0, 1:].to(lb.device)
        kl = (lb.exp() * (lb - lc)).sum(-1)  # (T-1,)
        rows.append([
            len(ids) - 1,
            float(kl.sum()),
            float((lb.argmax(-1) == lc.argmax(-1)).sum()),
            float(signals.entropy(lb).sum()),
            float(signals.entropy(lc).sum()),
            float(-lb.gather(-1, target[:, None]).sum()),
            float(-lc.gather(-1, target[:, None]).sum()),
        ])
    if not rows:
        raise TokenwiseError("the held-out texts give no token to score (each needs >= 2 ids)")
    m = np.array(rows)  # (S, 7)
    idx = np.random.default_rng(seed).integers(0, len(m), size=(n_boot, len(m)))
    boot = m[idx].sum(1)  # (n_boot, 7)
    tot = m.sum(0)

    def per_token(s: np.ndarray, col: int) -> np.ndarray:
        return s[..., col] / s[..., 0]

    ratio = np.exp(per_token(boot, 6) - per_token(boot, 5))
    return TextComparison(
        tokens=int(tot[0]),
        segments=len(m),
        kl=round(float(per_token(tot, 1)), 5),
        kl_ci=[round(float(v), 5) for v in np.percentile(per_token(boot, 1), [2.5, 97.5])],
        top1_agreement=round(float(per_token(tot, 2)), 4),
        top1_agreement_ci=_percentiles(per_token(boot, 2)),
        base_entropy=round(float(per_token(tot, 3)), 4),
        candidate_entropy=round(float(per_token(tot, 4)), 4),
        entropy_shift=round(float(per_token(tot, 4) - per_token(tot, 3)), 4),
        entropy_shift_ci=_percentiles(per_token(boot, 4) - per_token(boot, 3)),
        base_perplexity=round(math.exp(per_token(tot, 5)), 4),
        candidate_perplexity=round(math.exp(per_token(tot, 6)), 4),
        perplexity_ratio=round(math.exp(per_token(tot, 6) - per_token(tot, 5)), 4),
        perplexity_ratio_ci=_percentiles(ratio),
    )


@dataclass
class Comparison:
    """What :func:`compare` found: per-bucket answers, the overall answers and the text.

    Attributes:
        base, candidate: the models' names.
        suite: the suite's name.
        buckets: bucket name -> :class:`BucketComparison`.
        overall: every item together.
        text: :class:`TextComparison`, or None when the suite has no texts.
        answers: per item, its bucket, prompt, the two completions and whether each is right.
    """

    base: str
    candidate: str
    suite: str
    buckets: dict[str, BucketComparison] = field(default_factory=dict)
    overall: BucketComparison | None = None
    text: TextComparison | None = None
    answers: list[dict] = field(default_factory=list)

    def as_dict(self, *, with_answers: bool = True) -> dict:
        """JSON-ready dict (``with_answers=False`` leaves out the per-item answers)."""
        out = {"base": self.base, "candidate": self.candidate, "suite": self.suite,
               "buckets": {k: asdict(v) for k, v in self.buckets.items()},
               "overall": asdict(self.overall) if self.overall else None,
               "text": asdict(self.text) if self.text else None}
        if with_answers:
            out["answers"] = self.answers
        return out

    def to_json(self, *, with_answers: bool = True) -> str:
        """The comparison as a JSON string.

        Example:
            >>> import json
            >>> json.loads(Comparison("a", "b", "s").to_json())["candidate"]
            'b'
        """
        return json.dumps(self.as_dict(with_answers=with_answers), indent=2)

    def table(self) -> str:
        """A plain-text table: accuracies and flips per bucket, then the text metrics.

        Example:
            >>> print(Comparison("a", "b", "s").table().splitlines()[0])
            b vs a on s
        """
        lines = [f"{self.candidate} vs {self.base} on {self.suite}"]
        if self.buckets:
            head = (f"{'bucket':<18}{'n':>5}{'base':>8}{'cand':>8}{'diff':>8}"
                    f"{'diff 95% CI':>18}{'R->W':>6}{'W->R':>6}")
            lines += [head, "-" * len(head)]
            rows = [*self.buckets.items(), *((("overall", self.overall),) if self.overall
                                              else ())]
            for name, b in rows:
                ci = f"[{b.difference_ci[0]:+.3f}, {b.difference_ci[1]:+.3f}]"
                lines.append(f"{name:<18}{b.n:>5}{b.base_accuracy:>8.3f}"
                             f"{b.candidate_accuracy:>8.3f}{b.difference:>+8.3f}{ci:>18}"
                             f"{b.right_to_wrong:>6}{b.wrong_to_right:>6}")
        t = self.text
        if t is not None:
            lines.append(f"held-out text: {t.tokens} tokens in {t.segments} segments")
            lines.append(f"  KL(base||cand)   {t.kl:.4f} nats/token  "
                         f"[{t.kl_ci[0]:.4f}, {t.kl_ci[1]:.4f}]")
            lines.append(f"  top-1 agreement  {t.top1_agreement:.4f}  "
                         f"[{t.top1_agreement_ci[0]:.4f}, {t.top1_agreement_ci[1]:.4f}]")
            lines.append(f"  entropy          {t.base_entropy:.4f} -> {t.candidate_entropy:.4f}"
                         f"  shift {t.entropy_shift:+.4f} "
                         f"[{t.entropy_shift_ci[0]:+.4f}, {t.entropy_shift_ci[1]:+.4f}]")
            lines.append(f"  perplexity       {t.base_perplexity:.3f} -> "
                         f"{t.candidate_perplexity:.3f}  ratio {t.perplexity_ratio:.4f} "
                         f"[{t.perplexity_ratio_ci[0]:.4f}, {t.perplexity_ratio_ci[1]:.4f}]")
        return "\n".join(lines)

    def save_png(self, path: str | Path) -> Path:
        """Draw both models' accuracy per bucket (with intervals) and the text metrics.

        Args:
            path: where the PNG goes (parent folders are made).
        """
        from tokenwise.evaluate.plot import comparison_figure

        return comparison_figure(self, path)


def compare(base: LanguageModel, candidate: LanguageModel, suite: Suite, *,
            base_answers: Sequence[str] | None = None, window: int = 256,
            batch_size: int = 32, n_boot: int = N_BOOT, seed: int = 0,
            progress: bool = False) -> Comparison:
    """Compare ``candidate`` with ``base`` on the same items and text.

    Args:
        base: the reference model.
        candidate: its compressed (or otherwise changed) variant, same tokenizer.
        suite: the items and held-out texts.
        base_answers: the base model's completions of ``suite.items`` when already known
            (from :func:`answer_items`; saves answering them again for every candidate).
        window: most tokens per forward pass on the held-out text.
        batch_size: prompts per generation batch.
        n_boot: bootstrap resamples.
        seed: the resampling seed.
        progress: progress bars on standard error.

    Example:
        >>> from tokenwise.models import load
        >>> suite = Suite([Item("7+2=", ("9",), "arithmetic/1")], ["1+2=3"])
        >>> r = compare(load("tw-large"), load("tw-small"), suite)
        >>> r.buckets["arithmetic/1"].n
        1
    """
    check_same_tokenizer(base, candidate)
    items = list(suite.items)
    if base_answers is not None and len(base_answers) != len(items):
        raise TokenwiseError(f"base_answers has {len(base_answers)} completions for "
                             f"{len(items)} items")
    result = Comparison(base.name, candidate.name, suite.name)
    if items:
        got_b = list(base_answers) if base_answers is not None else answer_items(
            base, items, batch_size=batch_size, progress=progress)
        got_c = answer_items(candidate, items, batch_size=batch_size, progress=progress)
        right_b = np.array([it.is_correct(a) for it, a in zip(items, got_b, strict=True)])
        right_c = np.array([it.is_correct(a) for it, a in zip(items, got_c, strict=True)])
        buckets = np.array([it.bucket for it in items])
        for k, name in enumerate(suite.buckets()):
            sel = buckets == name
            result.buckets[name] = paired_bootstrap(right_b[sel], right_c[sel], n_boot=n_boot,
                                                    seed=seed + k)
        result.overall = paired_bootstrap(right_b, right_c, n_boot=n_boot, seed=seed)
        result.answers = [
            {"bucket": it.bucket, "prompt": str(it.prompt), "base": a, "candidate": c,
             "base_right": bool(rb), "candidate_right": bool(rc)}
            for it, a, c, rb, rc in zip(items, got_b, got_c, right_b, right_c, strict=True)]
    if suite.texts:
        result.text = compare_texts(base, candidate, suite.texts, window=window,
                                    n_boot=n_boot, seed=seed)
    return result

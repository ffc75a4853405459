"""Information surplus of hidden states: what ``h_t`` knows about token t+2 beyond the
model's own two-step rollout ("A Markov Categorical Framework for Language Modeling"; the
surplus EAGLE-style drafters exploit).

The model's two-step rollout predicts ``x_{t+2}`` from ``x_<=t`` by marginalising its own
next token over its ``k`` most likely values (renormalised; the mass they cover is
reported)::

    q(z) = sum_{v in top_k} p(v | x_<=t) p(z | x_<=t, v) / sum_{v in top_k} p(v | x_<=t)

A residual linear probe reads the last hidden state ``h_t`` and corrects the rollout's logits
on a set ``C`` of frequent target tokens::

    r(z) = softmax_z( log q(z) + [z in C] (W h_t + b)_z )

fitted by L2-penalised cross-entropy on training folds (W = 0, b = 0 gives r = q exactly). The
surplus is the held-out gain in nats per token, cross-validated over folds of whole sequences::

    S = E[-log q(x_{t+2})] - E[-log r(x_{t+2})]

with a 95% interval from a bootstrap over sequences. The probe leaves tokens outside ``C``
uncorrected, so only ``C``'s entries and the rest's total mass ``log(1 - sum_C q)`` are needed:
the cross-entropy difference on this ``|C| + 1``-way problem equals the full-vocabulary one
exactly (a token outside ``C`` has the same share of the rest under ``q`` and ``r``).

Ground truth: on a first-order Markov source ``x_{t+2}`` depends on the past only through
``x_t``, which the model's exact rollout already uses, so the true surplus is 0; a model whose
rollout departs from the truth leaves a surplus a probe may recover.

The rollout of every position of a chunk is one forward pass: the chunk's ``T`` tokens and
the ``k`` candidates of each position in one sequence with a tree-shaped 4-D attention mask
(candidate ``(t, v)`` sees ``x_<=t`` and itself, at position ``t + 1``), as speculative
decoders verify draft trees. Texts are read in chunks of ``chunk`` tokens.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tokenwise.errors import TokenwiseError
from tokenwise.scoring import scorer_start_ids


@dataclass(frozen=True)
class TwoStepData:
    """Per-position inputs of the surplus: hidden states, targets and the rollout.

    Attributes:
        hidden: ``(N, D)`` hidden state ``h_t`` of the chosen layer.
        targets: ``(N,)`` the token ``x_{t+2}``.
        groups: ``(N,)`` the sequence (chunk) each position comes from.
        classes: ``(U,)`` token ids whose rollout log-probabilities are kept.
        rollout_logq: ``(N, U)`` log q(z) of those tokens.
        coverage: ``(N,)`` next-token mass the rollout's ``k`` candidates cover.
    """

    hidden: np.ndarray
    targets: np.ndarray
    groups: np.ndarray
    classes: np.ndarray
    rollout_logq: np.ndarray
    coverage: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)


@dataclass(frozen=True)
class Surplus:
    """The cross-validated information surplus (nats per token) and its parts.

    Attributes:
        surplus: ``S = ce_rollout - ce_probe``.
        ci_low: lower end of the 95% bootstrap interval of ``S``.
        ci_high: upper end.
        ce_rollout: held-out cross-entropy of the rollout ``q``.
        ce_probe: held-out cross-entropy of the probe ``r``.
        n_tokens: positions measured.
        n_groups: sequences they come from.
        coverage: mean next-token mass of the rollout's candidates.
        per_token: ``(N,)`` held-out gain of each position.
        l2_chosen: the penalty each fold chose.
    """

    surplus: float
    ci_low: float
    ci_high: float
    ce_rollout: float
    ce_probe: float
    n_tokens: int
    n_groups: int
    coverage: float
    per_token: np.ndarray
    l2_chosen: tuple[float, ...] = ()


def _tree_inputs(ids: list[int], cands: torch.Tensor, min_value: float
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs, positions and 4-D mask of a chunk followed by its candidate tree.

    ``cands`` is ``(T, k)``: row t holds the candidates for position t + 1.
    """
    n, k = cands.shape
    total = n + n * k
    inputs = torch.empty(total, dtype=torch.long)
    inputs[:n] = torch.tensor(ids)
    inputs[n:] = cands.reshape(-1)
    positions = torch.empty(total, dtype=torch.long)
    positions[:n] = torch.arange(n)
    positions[n:] = torch.arange(1, n + 1).repeat_interleave(k)
    allowed = torch.zeros(total, total, dtype=torch.bool)
    allowed[:n, :n] = torch.ones(n, n, dtype=torch.bool).tril()
    rows = torch.arange(n, total)
    owner = torch.arange(n).repeat_interleave(k)  # candidate row -> its position t
    allowed[n:, :n] = torch.arange(n)[None, :] <= owner[:, None]
    allowed[rows, rows] = True
    mask = torch.zeros(total, total).masked_fill(~allowed, min_value)
    return inputs, positions, mask[None, None]


@torch.inference_mode()
def two_step_rollout(model: Any, ids: Sequence[int], top_k: int = 8, layer: int = -1
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The model's two-step rollout ``log q(. | x_<=t)`` at every position of one chunk.

    Args:
        model: a :class:`~tokenwise.models.LanguageModel` whose HF model takes a 4-D
            attention mask (Llama, Gemma 3).
        ids: the chunk's token ids (start ids included), ``T`` of them.
        top_k: next-token candidates marginalised over (1..vocabulary size).
        layer: which hidden state to return (0 = embeddings, -1 = last).

    Returns:
        ``(T, V)`` rollout log q, ``(T,)`` mass the candidates cover, ``(T, D)`` hidden states.

    Example:
        >>> from tokenwise.models import load
        >>> lm = load("tw-small")
        >>> logq, cover, h = two_step_rollout(lm, lm.encode("markov: ka lo", add_bos=True), 4)
        >>> bool(torch.allclose(logq.exp().sum(-1), torch.ones(len(cover)), atol=1e-4))
        True
    """
    if not 1 <= top_k <= model.vocab_size:
        raise TokenwiseError(f"top_k={top_k}: allowed 1..{model.vocab_size}")
    hf = model.hf_model
    x = torch.tensor([list(ids)], device=model.device)  # (1, T)
    out = hf(input_ids=x, output_hidden_states=True)
    logp1 = torch.log_softmax(out.logits[0].float(), -1)  # (T, V)
    hidden = out.hidden_states[layer][0].float()  # (T, D)
    top = logp1.topk(top_k, -1)  # (T, k)
    inputs, positions, mask = _tree_inputs(list(ids), top.indices.cpu(),
                                           torch.finfo(model.dtype).min)
    tree = hf(input_ids=inputs[None].to(model.device),
              position_ids=positions[None].to(model.device),
              attention_mask=mask.to(device=model.device, dtype=model.dtype))
    n = len(ids)
    logp2 = torch.log_softmax(tree.logits[0, n:].float(), -1)  # (T*k, V)
    logp2 = logp2.reshape(n, top_k, -1)  # (T, k, V)
    weights = top.values - torch.logsumexp(top.values, -1, keepdim=True)  # renormalised
    logq = torch.logsumexp(weights[..., None] + logp2, dim=1)  # (T, V)
    return logq, top.values.exp().sum(-1), hidden


def two_step_data(model: Any, texts: Sequence[str], *, top_k: int = 8, chunk: int = 64,
                  layer: int = -1, max_classes: int = 512, min_count: int = 2) -> TwoStepData:
    """Hidden states, targets ``x_{t+2}`` and rollouts of every position of ``texts``.

    Each text is cut into chunks of ``chunk`` tokens (the model's start ids in front of each);
    position t of a chunk contributes when t + 2 is in the chunk and t is not a start id.

    Args:
        model: a :class:`~tokenwise.models.LanguageModel`.
        texts: the texts.
        top_k: next-token candidates of the rollout.
        chunk: tokens per chunk after the start ids (>= 3).
        layer: the hidden state read (-1 = last).
        max_classes: most target tokens the probe may correct (the most frequent ones).
        min_count: a target token needs at least this many positions to be a class.

    Example:
        >>> from tokenwise.models import load
        >>> data = two_step_data(load("tw-small"), ["markov: ka lo mi nu pe ro"], top_k=4)
        >>> data.hidden.shape[0] == len(data.targets) == 6  # 8 tokens, after the first 2
        True
    """
    if chunk < 3:
        raise TokenwiseError(f"chunk={chunk}: allowed >= 3 tokens")
    start = list(scorer_start_ids(model))
    chunks = []
    for text in texts:
        ids = model.encode(text)
        chunks += [ids[i:i + chunk] for i in range(0, len(ids), chunk) if len(ids[i:i + chunk])
                   >= 3]
    if not chunks:
        raise TokenwiseError("texts hold no chunk of 3 tokens or more: nothing to measure")
    counts = Counter(t for c in chunks for t in c[2:])
    classes = np.array(sorted(t for t, n in counts.most_common(max_classes) if n >= min_count),
                       dtype=np.int64)
    cls = torch.tensor(classes)
    hidden, targets, groups, logq_kept, coverage = [], [], [], [], []
    for g, c in enumerate(chunks):
        seq = start + c
        logq, cover, h = two_step_rollout(model, seq, top_k=top_k, layer=layer)
        first = len(start)  # h at the chunk's first token predicts c[2]
        rows = slice(first, len(seq) - 2)
        hidden.append(h[rows].cpu().numpy())
        targets.append(np.array(seq[first + 2:]))
        groups.append(np.full(len(seq) - 2 - first, g))
        logq_kept.append(logq[rows][:, cls.to(logq.device)].cpu().double().numpy())
        coverage.append(cover[rows].cpu().numpy())
        # the target's own log q where it is not a class: kept in the last column
        tgt = torch.tensor(seq[first + 2:], device=logq.device)
        own = logq[rows].gather(-1, tgt[:, None])[:, 0].cpu().double().numpy()
        logq_kept[-1] = np.concatenate([logq_kept[-1], own[:, None]], axis=1)
    return TwoStepData(
        hidden=np.concatenate(hidden).astype(np.float64),
        targets=np.concatenate(targets),
        groups=np.concatenate(groups),
        classes=classes,
        rollout_logq=np.concatenate(logq_kept),
        coverage=np.concatenate(coverage),
    )


def _fit_probe(h: torch.Tensor, base: torch.Tensor, y: torch.Tensor, l2: float,
               steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """L-BFGS fit of W, b for logits ``base + [h W + b, 0]`` (the last column is the rest)."""
    n_cls = base.shape[1] - 1
    w = torch.zeros(h.shape[1], n_cls, dtype=h.dtype, requires_grad=True)
    b = torch.zeros(n_cls, dtype=h.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        corr = torch.cat([h @ w + b, torch.zeros(len(h), 1, dtype=h.dtype)], dim=1)
        penalty = l2 * ((w * w).sum() + (b * b).sum())
        loss = torch.nn.functional.cross_entropy(base + corr, y) + penalty
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def _reduced(data: TwoStepData, cls_mask: np.ndarray, rows: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rollout log-probs over the chosen classes + "rest", the target index and its log q."""
    logq = data.rollout_logq[rows][:, :-1][:, cls_mask]  # (n, C)
    own = data.rollout_logq[rows][:, -1]  # (n,) log q(target)
    with np.errstate(divide="ignore"):
        rest = np.log(np.clip(1.0 - np.exp(logq).sum(1), 1e-300, None))  # (n,)
    base = np.concatenate([logq, rest[:, None]], axis=1)
    chosen = data.classes[cls_mask]
    index = {int(t): i for i, t in enumerate(chosen)}
    y = np.array([index.get(int(t), len(chosen)) for t in data.targets[rows]])
    return base, y, own


#: The probe's L2 penalties tried in each fold (chosen on an inner split of its training folds).
L2_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


def information_surplus(data: TwoStepData, *, folds: int = 5,
                        l2: float | Sequence[float] = L2_GRID,
                        steps: int = 100, min_count: int = 2, bootstrap: int = 1000,
                        seed: int = 0) -> Surplus:
    """Cross-validated surplus ``S = E[-log q] - E[-log r]`` (nats per token) with a 95% CI.

    Folds split whole sequences (``data.groups``). In each, the probe's classes are the
    targets seen at least ``min_count`` times in the training folds, the hidden states are
    standardised with the training folds' mean and spread, and ``W, b`` are fitted by
    L-BFGS (``steps`` iterations) on cross-entropy + ``l2 * (|W|^2 + |b|^2)`` (a large
    ``l2`` gives back the rollout, S = 0); given several ``l2``,
    each fold picks the one with the lowest loss on a quarter of its training sequences
    held out, then refits on all of them. The interval is the
    2.5% and 97.5% quantiles of the mean gain over ``bootstrap`` resamples of sequences.

    Args:
        data: what :func:`two_step_data` collected.
        folds: cross-validation folds (2..number of sequences).
        l2: penalty on the probe's weights, or penalties to choose from per fold.
        steps: L-BFGS iterations per fold.
        min_count: training positions a target token needs to be a class.
        bootstrap: resamples for the interval.
        seed: seeds the fold split and the bootstrap.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> n, k = 400, 4
        >>> y = rng.integers(0, k, n)
        >>> data = TwoStepData(hidden=rng.normal(size=(n, 3)), targets=y,
        ...                    groups=np.arange(n) // 10, classes=np.arange(k),
        ...                    rollout_logq=np.full((n, k + 1), np.log(1 / k)),
        ...                    coverage=np.ones(n))
        >>> abs(information_surplus(data).surplus) < 0.05  # noise knows nothing: S ~ 0
        True
    """
    group_ids = np.unique(data.groups)
    if not 2 <= folds <= len(group_ids):
        raise TokenwiseError(f"folds={folds}: allowed 2..{len(group_ids)} (the sequences)")
    rng = np.random.default_rng(seed)
    fold_of = dict(zip(rng.permutation(group_ids), np.arange(len(group_ids)) % folds,
                       strict=True))
    fold = np.array([fold_of[g] for g in data.groups])
    penalties = [float(l2)] if isinstance(l2, (int, float)) else [float(v) for v in l2]
    if not penalties or min(penalties) < 0:
        raise TokenwiseError(f"l2={l2!r}: allowed a penalty >= 0 or a non-empty list of them")
    gain = np.zeros(len(data))
    ce_q = np.zeros(len(data))
    chosen: list[float] = []
    for f in range(folds):
        train, test = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        counts = Counter(int(t) for t in data.targets[train])
        cls_mask = np.array([counts.get(int(t), 0) >= min_count for t in data.classes],
                            dtype=bool)
        mean = data.hidden[train].mean(0)
        spread = data.hidden[train].std(0) + 1e-6
        base_tr, y_tr, _ = _reduced(data, cls_mask, train)
        h_tr = torch.tensor((data.hidden[train] - mean) / spread)
        penalty = _choose_l2(h_tr, base_tr, y_tr, data.groups[train], penalties, steps, rng)
        chosen.append(penalty)
        w, b = _fit_probe(h_tr, torch.tensor(base_tr), torch.tensor(y_tr), penalty, steps)
        base_te, y_te, own = _reduced(data, cls_mask, test)
        h_te = torch.tensor((data.hidden[test] - mean) / spread)
        corr = torch.cat([h_te @ w + b, torch.zeros(len(test), 1, dtype=w.dtype)], dim=1)
        logits = torch.tensor(base_te) + corr
        logr = torch.log_softmax(logits, -1).gather(-1, torch.tensor(y_te)[:, None])[:, 0]
        logq = torch.log_softmax(torch.tensor(base_te), -1).gather(
            -1, torch.tensor(y_te)[:, None])[:, 0]
        gain[test] = (logr - logq).numpy()
        ce_q[test] = -own
    per_group = {g: np.flatnonzero(data.groups == g) for g in group_ids}
    boots = np.empty(bootstrap)
    for i in range(bootstrap):
        pick = rng.choice(group_ids, size=len(group_ids))
        idx = np.concatenate([per_group[g] for g in pick])
        boots[i] = gain[idx].mean()
    return Surplus(
        surplus=float(gain.mean()),
        ci_low=float(np.quantile(boots, 0.025)),
        ci_high=float(np.quantile(boots, 0.975)),
        ce_rollout=float(ce_q.mean()),
        ce_probe=float((ce_q - gain).mean()),
        n_tokens=len(data),
        n_groups=len(group_ids),
        coverage=float(data.coverage.mean()),
        per_token=gain,
        l2_chosen=tuple(chosen),
    )


def _choose_l2(h: torch.Tensor, base: np.ndarray, y: np.ndarray, groups: np.ndarray,
               penalties: list[float], steps: int, rng: np.random.Generator) -> float:
    """The penalty with the lowest cross-entropy on a held-out quarter of the sequences."""
    if len(penalties) == 1:
        return penalties[0]
    ids = np.unique(groups)
    held = set(rng.choice(ids, size=max(1, len(ids) // 4), replace=False).tolist())
    val = np.array([g in held for g in groups])
    if val.all() or not val.any():
        return penalties[0]
    base_t, y_t = torch.tensor(base), torch.tensor(y)
    losses = []
    for penalty in penalties:
        w, b = _fit_probe(h[~val], base_t[~val], y_t[~val], penalty, steps)
        corr = torch.cat([h[val] @ w + b, torch.zeros(int(val.sum()), 1, dtype=w.dtype)], 1)
        losses.append(float(torch.nn.functional.cross_entropy(base_t[val] + corr, y_t[val])))
    return penalties[int(np.argmin(losses))]

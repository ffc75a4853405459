"""Top-H: keep the likely tokens while an entropy budget ``alpha·H`` lasts.

Top-H decoding (Baghaei et al., 2025, "Top-H Decoding: Adapting the Creativity and
Coherence with Bounded Entropy in Text Generation", arXiv 2509.02510) poses sampling as
entropy-constrained mass maximisation: find the set of tokens with the largest probability
mass whose renormalised distribution has entropy at most ``alpha·H(p)``. That problem is
NP-hard; the paper solves it greedily, adding tokens in descending probability.

Two rules are offered here (``rule=``):

* ``"reference"`` — what the published code (ErfanBaghaei/Top-H-Decoding,
  ``logit_processor.py``) computes: a cumulative-contribution rule,
  ``keep token k while Σ_{i<=k} -p_i log p_i <= alpha · Σ_{i<=n} -p_i log p_i`` over the top
  ``n`` tokens, with ``p`` the full softmax (not renormalised over the top ``n``).
* ``"bound"`` — the constraint as the paper states it: the longest prefix ``S`` of the top
  ``n`` tokens whose renormalised distribution ``q = p_S / Σ p_S`` has
  ``H(q) <= alpha · H(p)``, with ``H(p)`` the entropy of the full distribution.

The two keep very different numbers of tokens (see :class:`TopH`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from tokenwise.errors import TokenwiseError
from tokenwise.sampling.base import Sampler, check_float, check_int, row_param

RULES = ("reference", "bound")


def _check_alpha(name: str, value: object) -> float:
    return check_float(name, value, 0.0, 1.0)


class TopH(Sampler):
    """Top-H sampling (Baghaei et al., 2025): an entropy-bounded set of likely tokens.

    ``p = softmax(logits / temperature)``; tokens are ranked by ``p`` and only the top
    ``n = min(top_n, V)`` are candidates (``top_n=None``: the whole vocabulary). The
    temperature only shapes the mask: kept tokens keep their *unscaled* input logits, as
    in the reference code (apply :class:`Temperature` separately to rescale).

    Rules:

    * ``rule="reference"`` (the published code): ``tau = alpha · Σ_{top n} -p log p`` with
      ``p`` from the full softmax; walking the top ``n`` in descending probability, a token
      is kept while the cumulative ``Σ -p log p`` stays ``<= tau``. The terms are
      non-negative, so the kept set is a prefix and grows with ``alpha``; ``alpha=1``
      keeps all ``n``. Despite the paper's framing it is not "entropy of the kept set
      ``<= alpha·H``".
    * ``rule="bound"`` (the paper's constraint, greedy): the longest prefix ``S_k`` of the
      top ``n`` whose renormalised distribution ``q_k = p_{S_k} / Σ p_{S_k}`` satisfies
      ``H(q_k) <= alpha · H(p)``, with ``H(p)`` the entropy of the *full* distribution
      (not of the top ``n``), so ``alpha`` is a fraction of the model's actual
      uncertainty. Computed from cumulative sums ``S_k = Σ p``, ``A_k = Σ p log p``:
      ``H(q_k) = log S_k - A_k / S_k``. We keep the *longest* satisfying prefix rather
      than stopping at the first violation. In exact arithmetic the two coincide, since
      ``H(q_k)`` never decreases when the added token is no likelier than those already
      in (``ε = p_{k+1}/S_{k+1} <= min q_k <= exp(-H(q_k))`` implies
      ``H(q_{k+1}) >= H(q_k)``); the longest prefix is the robust choice when float
      rounding makes ``H(q_k)`` wiggle at the boundary.

    On the distributions measured (random logits and tw-large's), ``bound`` keeps more
    tokens than ``reference``; ``top_n`` only truncates ``bound`` (which usually stops well
    inside the top 100), while ``reference`` with ``top_n=None`` takes tau over the whole tail
    and keeps far more, so keep the cap. The kept-set sizes of both rules and of transformers
    (``benchmarks/sampler_cost.py``): see BENCHMARKS.md, section "Samplers: per-step cost and
    Top-H kept sets".

    Differences from ``transformers.TopHLogitsWarper(top_h=alpha)``: transformers
    renormalises the top 100 before computing both ``tau`` and the cumulative sum (its
    ``p`` is ``softmax`` over the top-100 logits), fixes ``top_n=100``, applies no
    temperature and has no ``min_tokens_to_keep``. Its mask equals ours
    (``rule="reference"``, ``top_n=100``) when the top-100 mass is ~1; when the mass is
    well below 1 (flat distributions, large vocabularies) renormalising shifts every
    ``-p log p`` term by ``p log(mass)``, which shrinks the share of the likeliest tokens,
    so transformers keeps more tokens than the reference rule.

    Numerics: the mask is decided in float32 (fp16/bf16 input is upcast); a token whose
    probability is 0 (a ``-inf`` logit or one that underflows) contributes 0 to every sum
    and is never kept by the rule itself (``min_tokens_to_keep`` may still keep finite
    ones); the most likely token is always kept; fully masked rows come back unchanged.

    Args:
        alpha: entropy fraction in ``(0, 1]``; one number, or one per row (a 1-D tensor or
            sequence of length ``B``). Paper default 0.4.
        rule: ``"reference"`` or ``"bound"`` (see above).
        top_n: candidates considered, an int >= 1 (capped at ``V``), or ``None`` for the
            whole vocabulary. Reference default 100.
        temperature: > 0; divides the logits before the softmax that decides the mask.
        min_tokens_to_keep: keep at least this many of the most likely tokens (>= 1).

    Example:
        >>> from tokenwise.sampling.top_h import TopH
        >>> logits = torch.tensor([[2.0, 1.2, 1.1, 1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4]])
        >>> TopH(alpha=0.4)(logits).isfinite().tolist()
        [[True, True, True, False, False, False, False, False, False, False]]
        >>> TopH(alpha=0.4, rule="bound")(logits).isfinite().tolist()
        [[True, True, False, False, False, False, False, False, False, False]]
    """

    name = "top_h"

    def __init__(self, alpha: float | Tensor | Sequence[float] = 0.4, rule: str = "reference",
                 top_n: int | None = 100, temperature: float = 1.0,
                 min_tokens_to_keep: int = 1) -> None:
        if isinstance(alpha, numbers.Real) and not isinstance(alpha, bool):
            self.alpha: float | tuple[float, ...] = _check_alpha("alpha", alpha)
        elif isinstance(alpha, (Tensor, Sequence)) and not isinstance(alpha, (str, bytes)):
            if isinstance(alpha, Tensor) and alpha.dim() != 1:
                raise TokenwiseError(
                    f"alpha has shape {tuple(alpha.shape)}: allowed a number in (0, 1] or a "
                    "1-D tensor/sequence with one value per row")
            values = alpha.tolist() if isinstance(alpha, Tensor) else list(alpha)
            if not values:
                raise TokenwiseError("alpha=[]: allowed a number in (0, 1] or one per row")
            self.alpha = tuple(_check_alpha(f"alpha[{i}]", v) for i, v in enumerate(values))
        else:
            raise TokenwiseError(
                f"alpha={alpha!r}: allowed a number in (0, 1] or a sequence of them, one per row")
        if not isinstance(rule, str) or rule not in RULES:
            raise TokenwiseError(f"rule={rule!r}: allowed one of {', '.join(map(repr, RULES))}")
        self.rule = rule
        self.top_n = None if top_n is None else check_int("top_n", top_n, 1)
        self.temperature = check_float("temperature", temperature, 0.0, math.inf,
                                       high_open=True)
        self.min_tokens_to_keep = check_int("min_tokens_to_keep", min_tokens_to_keep, 1)

    def params(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "rule": self.rule, "top_n": self.top_n,
                "temperature": self.temperature, "min_tokens_to_keep": self.min_tokens_to_keep}

    def __call__(self, logits: Tensor) -> Tensor:
        """Fast path: work on the top n only, and write the output in one scatter.

        The generic path (``Sampler.__call__`` with :meth:`drop_mask`) makes a dozen passes
        over the vocabulary; here one ``topk`` and one normalising pass decide the mask and
        one fill and one scatter write the result. Inputs the fast path cannot take as they
        are (NaN, ``+inf``, rows with no finite logit: all make the normaliser non-finite)
        go through the generic path, which refuses or handles them. That check is read
        only after every kernel is queued, so on a GPU the host waits once, at the end,
        instead of stalling the queue half way.
        """
        if not isinstance(logits, Tensor) or logits.dim() != 2 or not logits.is_floating_point():
            return super().__call__(logits)  # the generic path names what is wrong
        batch, vocab = logits.shape
        if vocab == 0:
            return super().__call__(logits)
        z = logits.float()
        if self.temperature != 1.0:
            z = z / self.temperature
        n = vocab if self.top_n is None else min(self.top_n, vocab)
        width = min(max(n, self.min_tokens_to_keep), vocab)
        top_z, top_idx = z.topk(width, dim=-1, largest=True, sorted=True)  # (B, width)
        # The log-normaliser. On a CPU, for float32 input, from the row maximum topk just
        # found, and the (B, V) buffer that holds exp(z - max) is then reused as the output:
        # a fresh (B, V) allocation costs more than a pass there (page faults), and this
        # saves one. GPUs cache allocations, so there logsumexp does it; so it does for
        # logits that carry a gradient (exp_ keeps its result for backward, and the fill
        # below would overwrite it). NaN or +inf make lse non-finite: the generic path
        # refuses them. An all -inf row stays here (its lse is -inf or NaN, its top -inf) and
        # comes back all -inf, so one masked row never sends the batch down another path,
        # where ties at the top could be kept differently.
        reuse = (logits.dtype == torch.float32 and logits.device.type == "cpu"
                 and not (logits.requires_grad and torch.is_grad_enabled()))
        if reuse:
            buffer = torch.sub(z, top_z[:, :1])  # (B, V)
            lse = top_z[:, :1] + buffer.exp_().sum(dim=-1, keepdim=True).log()  # (B, 1)
        else:
            buffer = None
            lse = torch.logsumexp(z, dim=-1, keepdim=True)  # (B, 1)
        top_logp = top_z - lse  # (B, width)
        top_masked = top_z[:, :1] == float("-inf")  # (B, 1): an all -inf row
        usable = ((lse < float("inf")) | top_masked).all()  # 0-d; read at the end
        alpha: float | Tensor = (self.alpha if isinstance(self.alpha, float) else
                                 row_param("alpha", self.alpha, batch, logits.device,
                                           _check_alpha))
        keep_top = self._keep_top(top_logp[:, :n], alpha, z, lse)  # (B, n)
        if width > n:
            keep_top = torch.cat([keep_top, keep_top.new_zeros(batch, width - n)], dim=-1)
        if self.min_tokens_to_keep > 1:  # every finite one of the first k (the rule's are)
            k = self.min_tokens_to_keep
            keep_top[:, :k] = top_logp[:, :k] > float("-inf")
        kept = logits.gather(-1, top_idx)  # (B, width): the unscaled input values
        values = torch.where(keep_top, kept, float("-inf"))
        out = (buffer.fill_(float("-inf")) if buffer is not None
               else torch.full_like(logits, float("-inf"))).scatter_(-1, top_idx, values)
        if not bool(usable):
            return super().__call__(logits)
        return out

    def _keep_top(self, top_logp: Tensor, alpha: float | Tensor, z: Tensor, lse: Tensor) -> Tensor:
        """``(B, n)`` bool over the top n (sorted): which of them the rule keeps.

        Args:
            top_logp: the top n log-probabilities of each row, descending.
            alpha: one number, or a ``(B, 1)`` column.
            z: the full ``(B, V)`` scaled logits and ``lse`` their ``(B, 1)`` log-normaliser
                (the bound rule's ``H(p)``).
        """
        top_p = top_logp.exp()  # (B, n)
        positive = top_p > 0
        # p log p (<= 0), with 0 where p == 0 (0 · -inf would be NaN).
        plogp = torch.where(positive, top_p * top_logp, 0.0)
        cum = plogp.cumsum(dim=-1)  # (B, n): -(cumulative entropy contribution)
        if self.rule == "reference":
            # keep while Σ -p log p <= alpha · Σ_top-n -p log p (both sides negated)
            keep_top = cum >= cum[:, -1:] * alpha
        else:
            logp = z - lse  # (B, V)
            h_full = -torch.where(logp > float("-inf"), logp.exp() * logp, 0.0).sum(
                dim=-1, keepdim=True)  # (B, 1)
            mass = top_p.cumsum(dim=-1)  # > 0: the top token has p >= 1/V
            h_prefix = mass.log() - cum / mass  # H(q_k) = log S_k - A_k / S_k
            ok = h_prefix <= h_full * alpha
            ok[:, 0] = True
            n = top_logp.shape[-1]
            positions = torch.arange(1, n + 1, device=top_logp.device)
            longest = (ok * positions).amax(dim=-1, keepdim=True)  # longest satisfying prefix
            keep_top = positions <= longest
        keep_top &= positive
        keep_top[:, 0] = True
        return keep_top

    def drop_mask(self, logits32: Tensor) -> Tensor:
        batch, vocab = logits32.shape
        alpha = row_param("alpha", self.alpha, batch, logits32.device, _check_alpha)  # (B, 1)
        z = logits32 / self.temperature
        # +inf (or overflow from a small temperature) would make the softmax NaN.
        z = torch.nan_to_num(z, posinf=torch.finfo(torch.float32).max, neginf=float("-inf"))
        # All -inf rows: compute on zeros (no NaN); the caller drops every token anyway.
        dead = torch.isneginf(z).all(dim=-1, keepdim=True)
        z = z.masked_fill(dead, 0.0)
        lse = torch.logsumexp(z, dim=-1, keepdim=True)  # (B, 1)

        n = vocab if self.top_n is None else min(self.top_n, vocab)
        top_z, top_idx = z.topk(n, dim=-1, largest=True, sorted=True)  # (B, n)
        keep_top = self._keep_top(top_z - lse, alpha, z, lse)
        keep = torch.zeros((batch, vocab), dtype=torch.bool, device=z.device)
        keep = keep.scatter(-1, top_idx, keep_top)
        return ~keep

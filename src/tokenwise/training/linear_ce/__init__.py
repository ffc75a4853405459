"""Fused linear cross-entropy: the loss of ``e @ c.T`` without the ``[N, V]`` logits.

Cut Cross-Entropy (Wijmans et al., 2025; ref: apple/ml-cross-entropy, PyPI
``cut-cross-entropy``). The cross-entropy of a classifier ``c`` (``[V, D]``) on embeddings ``e``
(``[N, D]``) is ``lse(e·c^T) - e·c_y``. A plain implementation keeps the ``[N, V]`` logits, their
softmax and their gradient alive, which for a large vocabulary is the biggest tensor of a whole
training step. Here the logits only ever exist one block at a time:

* **Forward** walks vocabulary blocks (outer) and token blocks (inner), merging each block's
  log-sum-exp into a running one, and picks each token's target logit out of the block that holds
  it. Only ``lse`` (one value per token) is kept for backward.
* **Backward** recomputes each block's logits and turns them into ``d = dLoss/dlogit`` in
  place (``softmax - onehot`` times the per-token upstream gradient, plus the lse's upstream
  gradient and the z-loss term, times the softcap's chain rule), then adds ``d @ c_v`` to
  ``grad_e`` and ``d^T @ e_b`` to ``grad_c``. Filtering compares ``|d|`` with ``filter_eps``
  times each token's upstream scale ``u = max(|a|, |g|)`` (``g``: the loss's upstream gradient,
  ``a``: the softmax's coefficient, see :func:`_logits_to_grad`): for a mean/sum loss that is
  the reference's ``|softmax - onehot| < eps`` (with the softcap's factor included), and with
  per-token or lse gradients it is the same relative test on the actual gradient, so skipping is
  as safe as there. With an fp32/fp64 classifier the backward holds whole rows of a token block
  (like the single-pass mode below) and drops the vocabulary *columns* where the block's every
  entry is negligible, running the two gradient products over the gathered survivors (when the
  first two token blocks show nothing worth filtering, as on a near-uniform softmax, the rest of
  the tokens go through the tile loop, whose taller products are faster); with a low-precision
  classifier (which keeps a per-block fp32 ``grad_c``) it walks tiles and skips a tile where
  every entry is negligible. The logits recompute and the forward stay dense, so at most two of
  the path's four matrix products shrink.
* **Gradient in forward** (``grad_in_forward``): when the loss is a scalar (``"mean"``/``"sum"``)
  and no ``lse`` is returned, the upstream gradient is a single number, so the gradients can be
  computed in the forward pass itself from whole rows of logits (a few rows at a time) and only
  scaled in backward. That is three matrix products instead of four (no recomputation). The
  price: the gradients (``grad_e``, ``grad_c`` in fp32) live from forward to backward, and
  backward can run only once. Filtering here is per vocabulary *column* of each token block: the
  columns where every ``|softmax - onehot|`` is below ``filter_eps`` are dropped and the two
  gradient products run over the gathered survivors only (when few enough survive to pay for the
  gathers). On a trained model's sharp softmax most columns are negligible; on a freshly
  initialised model's near-uniform one nothing is, and the dense products run.

All accumulation is in fp32 (fp64 for fp64 inputs); gradients come back in the inputs' dtypes.
On CUDA with Triton installed, :mod:`tokenwise.training.linear_ce_triton` provides the block
loops as kernels (same arithmetic); elsewhere the loops run as torch operations.

The package is split by idea, as apple/ml-cross-entropy splits its kernels:

* :mod:`~tokenwise.training.linear_ce.api`: :func:`linear_cross_entropy` and its argument
  checks, valid tokens and ``shift``, the choice of implementation;
* :mod:`~tokenwise.training.linear_ce.forward`: the log-sum-exp forward;
* :mod:`~tokenwise.training.linear_ce.fused`: gradient in forward;
* :mod:`~tokenwise.training.linear_ce.tile_backward`: the tile backward;
* :mod:`~tokenwise.training.linear_ce.column_backward`: the column-filtered backward;
* :mod:`~tokenwise.training.linear_ce.autograd`: the autograd Function that picks among them;
* :mod:`~tokenwise.training.linear_ce.blocks`: the settings and block helpers they share;
* :mod:`tokenwise.training.linear_ce_triton`: the Triton kernels.

Example:
    >>> import torch
    >>> from tokenwise.training import linear_cross_entropy
    >>> _ = torch.manual_seed(0)
    >>> e = torch.randn(6, 8, requires_grad=True)
    >>> c = torch.randn(11, 8, requires_grad=True)
    >>> y = torch.tensor([1, 4, -100, 0, 10, 3])
    >>> loss = linear_cross_entropy(e, c, y)
    >>> plain = torch.nn.functional.cross_entropy(e @ c.T, y)
    >>> torch.allclose(loss, plain)
    True
    >>> loss.backward()
    >>> e.grad.shape, c.grad.shape
    (torch.Size([6, 8]), torch.Size([11, 8]))
"""

from tokenwise.training.linear_ce.api import IGNORE_INDEX, linear_cross_entropy, resolve_filter_eps
from tokenwise.training.linear_ce.blocks import _FILTER_STATS  # noqa: F401  (a debugging aid)

__all__ = ["IGNORE_INDEX", "linear_cross_entropy", "resolve_filter_eps"]

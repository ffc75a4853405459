"""Shared by the linear cross-entropy tests: the reference's data and its error rule.

The rule (apple/ml-cross-entropy's tests): for the loss and every gradient,
``|gt - ours| <= |gt - plain_in_native_dtype| + tol`` elementwise, where ``gt`` is plain torch in
fp64 and ``plain_in_native_dtype`` is plain torch on the inputs' own dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tokenwise.training import linear_cross_entropy

IGNORE = -100
N, V, D = 252, 507, 123
TOL = {torch.float32: 5e-4, torch.float16: 1e-3, torch.bfloat16: 1e-2}
BLOCKS = {"block_n": 40, "block_v": 96}  # partial blocks in both directions


def make_inputs(dtype: torch.dtype, *, bias: bool, invalid: bool, seed: int = 0,
                device: str = "cpu"):
    """The reference test's data: 252 x 507 x 123, e as (4, 63, D), some confident rows."""
    gen = torch.Generator().manual_seed(seed)
    e = torch.randn(N, D, generator=gen) / D**0.5
    c = torch.randn(V, D, generator=gen)
    c[: min(N, V) // 2] = e[: min(N, V) // 2]  # some confident rows, as in the reference
    targets = torch.randint(0, V, (N,), generator=gen)
    if invalid:
        targets[torch.randperm(N, generator=gen)[: int(0.2 * N)]] = IGNORE
    b = torch.randn(V, generator=gen) * 0.02 if bias else None
    e = e.view(4, N // 4, D).to(dtype)
    targets = targets.view(4, N // 4)
    c = c.to(dtype)
    b = None if b is None else b.to(dtype)
    if device != "cpu":
        e, c, targets = e.to(device), c.to(device), targets.to(device)
        b = None if b is None else b.to(device)
    return e, c, targets, b


def plain(e, c, targets, b, *, softcap, shift, reduction, z_loss, with_lse, with_entropy,
          upstream):
    """Plain torch on whatever dtype it is given; returns (outputs, grads)."""
    leaves = [t.detach().clone().requires_grad_() for t in (e, c) + ((b,) if b is not None else ())]
    ee, cc = leaves[0], leaves[1]
    bb = leaves[2] if b is not None else None
    tt = targets
    if shift:
        ee, tt = ee[:, :-shift], tt[:, shift:]
    logits = ee @ cc.T
    if bb is not None:
        logits = logits + bb
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    logits = logits.float() if logits.dtype != torch.float64 else logits
    valid = tt != IGNORE
    nll = F.cross_entropy(logits.flatten(0, 1), tt.flatten(), ignore_index=IGNORE,
                          reduction="none").view(tt.shape)
    lse = torch.logsumexp(logits, -1) * valid
    if z_loss:
        nll = nll + z_loss * lse.square() * valid
    count = valid.sum()
    loss = {"none": nll, "sum": nll.sum(), "mean": nll.sum() / count}[reduction]
    probs = logits.softmax(-1)
    entropy = -(probs * probs.clamp_min(1e-300).log()).sum(-1) * valid
    objective = (loss * upstream["loss"]).sum()
    if with_lse:
        objective = objective + (lse * upstream["lse"]).sum()
    objective.backward()
    outs = [loss.detach()]
    if with_lse:
        outs.append(lse.detach())
    if with_entropy:
        outs.append(entropy.detach())
    return outs, [leaf.grad for leaf in leaves]


def ours(e, c, targets, b, *, softcap, shift, reduction, z_loss, with_lse, with_entropy,
         upstream, **kwargs):
    leaves = [t.detach().clone().requires_grad_() for t in (e, c) + ((b,) if b is not None else ())]
    result = linear_cross_entropy(
        leaves[0], leaves[1], targets, bias=leaves[2] if b is not None else None,
        softcap=softcap, shift=shift, reduction=reduction, z_loss=z_loss,
        return_lse=with_lse, return_entropy=with_entropy, **kwargs)
    outs = list(result) if isinstance(result, tuple) else [result]
    objective = (outs[0] * upstream["loss"]).sum()
    if with_lse:
        objective = objective + (outs[1] * upstream["lse"]).sum()
    objective.backward()
    for leaf in leaves:
        assert leaf.grad is not None and leaf.grad.dtype == leaf.dtype
    return [o.detach() for o in outs], [leaf.grad for leaf in leaves]


def assert_reference_rule(gt, ref, got, tol, what):
    gt, ref, got = gt.double(), ref.double(), got.double()
    assert got.shape == gt.shape, what
    assert torch.isfinite(got).all(), what
    ours_err = (gt - got).abs()
    allowed = (gt - ref).abs() + tol
    worst = (ours_err - allowed).max()
    assert worst <= 0, f"{what}: error exceeds plain's by {float(worst):.3g} (tol {tol})"


def check_case(dtype, *, bias=False, softcap=None, shift=0, invalid=False, reduction="mean",
               z_loss=None, with_lse=False, with_entropy=False, seed=0, device="cpu", **kwargs):
    """Ours vs fp64 plain vs plain in ``dtype``, for every output and gradient."""
    e, c, targets, b = make_inputs(dtype, bias=bias, invalid=invalid, seed=seed, device=device)
    out_t = targets.shape[1] - shift
    gen = torch.Generator().manual_seed(seed + 1)
    upstream = {
        # per-token upstream gradients at the scale of a mean, as the reference's tests use
        "loss": torch.randn(4, out_t, generator=gen) / (4 * out_t) if reduction == "none"
        else torch.tensor(1.0 / (4 * out_t) if reduction == "sum" else 1.0),
        "lse": torch.randn(4, out_t, generator=gen) / (4 * out_t),
    }
    upstream = {k: v.to(device) for k, v in upstream.items()}
    options = dict(softcap=softcap, shift=shift, reduction=reduction, z_loss=z_loss,
                   with_lse=with_lse, with_entropy=with_entropy)
    gt_outs, gt_grads = plain(e.double(), c.double(), targets,
                              None if b is None else b.double(), upstream=upstream, **options)
    ref_outs, ref_grads = plain(e, c, targets, b, upstream=upstream, **options)
    got_outs, got_grads = ours(e, c, targets, b, upstream=upstream, **options, **kwargs)
    tol = TOL[dtype]
    names = ["loss", "lse", "entropy"] if with_lse else ["loss", "entropy"]
    for name, g, r, o in zip(names, gt_outs, ref_outs, got_outs, strict=False):
        assert_reference_rule(g, r, o, tol, name)
    for name, g, r, o in zip(["grad_e", "grad_c", "grad_bias"], gt_grads, ref_grads, got_grads,
                             strict=False):
        assert_reference_rule(g, r, o, tol, name)


def make_peaked_inputs(dtype: torch.dtype, *, n: int = N, v: int = V, d: int = D,
                       beta: float = 5.0, delta: float = -8.0, gamma: float = 1.0, seed: int = 0):
    """Trained-model-like data: a sharp softmax where most vocabulary entries are negligible.

    Logits are ``beta * log pi_j + gamma * noise`` off the target and about ``delta`` at it, with
    ``pi`` a Zipf(1) prior over the vocabulary in random order and targets drawn from ``pi``
    (the benchmark's ``--logits peaked`` construction, at test size). Returns (e, c, targets) with
    e flat ``(n, d)``.
    """
    gen = torch.Generator().manual_seed(seed)
    log_pi = -(torch.randperm(v, generator=gen).double() + 1.0).log()
    log_pi -= torch.logsumexp(log_pi, 0)  # (V,)
    targets = torch.multinomial(log_pi.exp(), n, replacement=True, generator=gen)  # (N,)
    x = torch.randn(v, d - 1, generator=gen, dtype=torch.float64)  # (V, D-1)
    c = torch.cat([log_pi[:, None], x], 1)  # (V, D)
    pull = (delta - beta * log_pi[targets])[:, None] / (d - 1)  # (N, 1)
    noise = torch.randn(n, d - 1, generator=gen, dtype=torch.float64) * (gamma / (d - 1) ** 0.5)
    e = torch.cat([torch.full((n, 1), beta, dtype=torch.float64), pull * x[targets] + noise], 1)
    return e.to(dtype), c.to(dtype), targets

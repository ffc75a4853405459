"""Gradient filtering in the recompute path of the fused linear cross-entropy.

The recompute path serves ``reduction="none"`` (a per-token upstream gradient) and
``return_lse=True`` (a gradient through the log-sum-exp). Its filter compares each entry of
``dLoss/dlogit`` (upstream gradient, lse gradient, z-loss and softcap derivative included) with
``filter_eps`` times the token's upstream scale ``max(|a|, |g|)``. Checked here: the reference's
error rule against fp64 plain torch on odd shapes (252 x 507 x 123) for peaked and uniform logits;
the exact meaning of the filter against a naive fp64 implementation of it, for the column filter
(fp32/fp64 classifier) and the tile filter (low-precision classifier); and that
``filter_eps=None`` leaves the dense path untouched.
"""

from __future__ import annotations

import pytest
import torch
from tests.training.linear_ce_reference import (
    IGNORE,
    TOL,
    D,
    N,
    assert_reference_rule,
    make_inputs,
    make_peaked_inputs,
    ours,
    plain,
)

from tokenwise.training import linear_cross_entropy
from tokenwise.training.linear_ce import autograd, blocks, column_backward


def _data(kind, dtype, *, bias, invalid, seed=0):
    """(e (4, 63, D), c, targets (4, 63), bias) of the peaked or the uniform-ish test data."""
    if kind == "uniform":
        return make_inputs(dtype, bias=bias, invalid=invalid, seed=seed)
    e, c, targets = make_peaked_inputs(dtype, seed=seed)
    e, targets = e.view(4, N // 4, D), targets.view(4, N // 4).clone()
    gen = torch.Generator().manual_seed(seed + 7)
    if invalid:
        targets.view(-1)[torch.randperm(N, generator=gen)[: N // 5]] = IGNORE
    b = (torch.randn(c.shape[0], generator=gen) * 0.02).to(dtype) if bias else None
    return e, c, targets, b


def _upstream(shape, reduction, seed):
    """Random per-token upstream gradients at a mean's scale, with a few tokens 1e9 times
    smaller and a few exactly 0 (their relative accuracy must not suffer from their size)."""
    gen = torch.Generator().manual_seed(seed + 1)
    count = shape[0] * shape[1]

    def per_token():
        up = torch.randn(shape, generator=gen) / count
        up.view(-1)[:5] *= 1e-9
        up.view(-1)[5:8] = 0.0
        return up

    loss = per_token() if reduction == "none" else torch.tensor(1.0)
    return {"loss": loss, "lse": per_token()}


CASES = [
    {"reduction": "none"},
    {"reduction": "none", "bias": True, "invalid": True, "shift": 1},
    {"reduction": "none", "softcap": 50.0},
    {"reduction": "none", "with_lse": True, "z_loss": 1e-3},
    {"reduction": "mean", "with_lse": True},
    {"reduction": "sum", "with_lse": True, "bias": True, "softcap": 50.0, "invalid": True},
]


@pytest.mark.parametrize("kind", ["peaked", "uniform"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_recompute_filter_keeps_the_rule(kind, dtype, case):
    # fp32: the column filter (token blocks of whole rows); bf16: the tile filter
    case = dict(case)
    bias, invalid = case.pop("bias", False), case.pop("invalid", False)
    options = {"softcap": None, "shift": 0, "z_loss": None, "with_lse": False,
               "with_entropy": False, **case}
    e, c, targets, b = _data(kind, dtype, bias=bias, invalid=invalid)
    upstream = _upstream((4, N // 4 - options["shift"]), options["reduction"], seed=3)
    gt_outs, gt_grads = plain(e.double(), c.double(), targets,
                              None if b is None else b.double(), upstream=upstream, **options)
    ref_outs, ref_grads = plain(e, c, targets, b, upstream=upstream, **options)
    blocks._FILTER_STATS.reset()
    got_outs, got_grads = ours(e, c, targets, b, upstream=upstream, grad_in_forward=False,
                               block_n=40, block_v=96, **options)
    kept = blocks._FILTER_STATS.kept / blocks._FILTER_STATS.total
    if kind == "peaked" and dtype == torch.float32:
        # the column filter really skipped most of the gradient work
        assert kept < 0.5, kept
    names = ["loss", "lse"] if options["with_lse"] else ["loss"]
    for name, g, r, o in zip(names, gt_outs, ref_outs, got_outs, strict=True):
        assert_reference_rule(g, r, o, TOL[dtype], name)
    for name, g, r, o in zip(["grad_e", "grad_c", "grad_bias"], gt_grads, ref_grads, got_grads,
                             strict=False):
        assert_reference_rule(g, r, o, TOL[dtype], name)
    # tokens with a tiny upstream gradient keep their own relative accuracy in grad_e
    if options["reduction"] == "none" and not options["with_lse"] and dtype == torch.float32:
        gt_e, got_e = gt_grads[0].view(-1, D)[:5], got_grads[0].view(-1, D)[:5].double()
        assert ((got_e - gt_e).norm(dim=1) <= 1e-4 * gt_e.norm(dim=1) + 1e-30).all()


def _filtered_reference(e, c, b, targets, g, h, *, softcap, z_loss, eps, block_n,
                        block_v=None, dense_rows=0):
    """Naive fp64 gradients of ``sum(g * nll + zc g lse^2) + sum(h * lse)`` over valid tokens,
    with every entry of ``d = dLoss/dlogit`` zeroed where the filter drops it: in each block of
    ``block_n`` valid tokens (and ``block_v`` vocabulary entries for the tile filter; None for
    the column filter) a column (a tile) is dropped when all its ``|d| < eps * max(|a|, |g|)``.
    The first ``dense_rows`` valid tokens are left unfiltered."""
    valid = targets != IGNORE
    ev, t, g, h = e[valid], targets[valid], g[valid], h[valid]
    raw = ev @ c.T + b
    z = raw if softcap is None else softcap * torch.tanh(raw / softcap)
    lse = torch.logsumexp(z, 1)
    a = g * (1 + 2 * z_loss * lse) + h
    d = (z - lse[:, None]).exp() * a[:, None]
    d[torch.arange(len(t)), t] -= g
    if softcap is not None:
        d *= 1 - (z / softcap).square()
    unfiltered = d.clone()
    u = torch.maximum(a.abs(), g.abs())
    small = d.abs() < eps * u[:, None]
    v_size = c.shape[0]
    for i0 in range(dense_rows, len(t), block_n):
        for v0 in range(0, v_size, block_v or v_size):
            v1 = v_size if block_v is None else min(v0 + block_v, v_size)
            blk = small[i0:i0 + block_n, v0:v1]
            if block_v is None:
                d[i0:i0 + block_n, v0:v1][:, blk.all(0)] = 0.0
            elif blk.all():
                d[i0:i0 + block_n, v0:v1] = 0.0
    grad_e = torch.zeros_like(e)
    grad_e[valid] = d @ c
    return (grad_e, d.T @ ev, d.sum(0)), (unfiltered.T @ ev)


@pytest.mark.parametrize("gather_columns", [2048, 64])
@pytest.mark.parametrize("c_dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("loss_used", [True, False])
def test_recompute_filter_semantics_exactly(monkeypatch, gather_columns, c_dtype, loss_used):
    """fp64 e: with an fp64 classifier the column filter runs, with an fp32 one the tile filter
    (low-precision classifiers take it); both against the naive meaning, to 1e-10."""
    monkeypatch.setattr(blocks, "_GATHER_COLUMNS", gather_columns)
    e, c, targets = make_peaked_inputs(torch.float64)
    c = c.to(c_dtype)
    gen = torch.Generator().manual_seed(5)
    targets = targets.clone()
    targets[torch.randperm(N, generator=gen)[:30]] = IGNORE
    b = torch.randn(c.shape[0], generator=gen, dtype=torch.float64) * 0.1
    g = torch.randn(N, generator=gen, dtype=torch.float64) * (1.0 if loss_used else 0.0)
    g[:4] *= 1e-7
    h = torch.randn(N, generator=gen, dtype=torch.float64) * 0.3
    column = c_dtype == torch.float64
    # a tile survives if any of its entries does: smaller tiles and a larger eps drop some
    eps, block_n, block_v = (1e-6, 40, 96) if column else (1e-5, 8, 32)
    softcap, zc = 30.0, 1e-3
    tile_v = None if column else block_v
    want, unfiltered_c = _filtered_reference(e, c.double(), b, targets, g, h, softcap=softcap,
                                             z_loss=zc, eps=eps, block_n=block_n, block_v=tile_v)
    # the filter drops something measurable at this threshold, so the check below can fail
    assert (want[1] - unfiltered_c).abs().max() > 1e-9
    ee, cc, bb = (t.clone().requires_grad_() for t in (e, c, b))
    blocks._FILTER_STATS.reset()
    loss, lse = linear_cross_entropy(ee, cc, targets, bias=bb, softcap=softcap, z_loss=zc,
                                     reduction="none", return_lse=True, filter_eps=eps,
                                     block_n=block_n, block_v=block_v)
    objective = (lse * h).sum()
    if loss_used:
        objective = objective + (loss * g).sum()
    objective.backward()
    kept = blocks._FILTER_STATS.kept / blocks._FILTER_STATS.total
    assert kept < (0.5 if column else 1.0), kept
    for got, expect in zip((ee.grad, cc.grad, bb.grad), want, strict=True):
        # grad_c comes back in c's dtype: fp32 for the tile case, so compare at its precision
        rtol, atol = (1e-10, 1e-14) if got.dtype == torch.float64 else (1e-6, 1e-12)
        torch.testing.assert_close(got.double(), expect, rtol=rtol, atol=atol)


def test_unfilterable_blocks_hand_the_rest_to_the_tile_loop(monkeypatch):
    """When the probed token blocks keep more columns than pay for gathering, they run dense and
    the remaining tokens go through the (tile-filtered) tile loop: check that exact meaning."""
    monkeypatch.setattr(blocks, "_GATHER_MAX_FRACTION", 0.0)  # every block "too dense"
    e, c, targets = make_peaked_inputs(torch.float64)
    gen = torch.Generator().manual_seed(6)
    g = torch.randn(N, generator=gen, dtype=torch.float64)
    h = torch.randn(N, generator=gen, dtype=torch.float64) * 0.3
    b = torch.zeros(c.shape[0], dtype=torch.float64)
    eps, block_n, block_v = 1e-5, 8, 32
    probed = column_backward._PROBE_BLOCKS * block_n
    want, _ = _filtered_reference(e, c, b, targets, g, h, softcap=None, z_loss=0.0, eps=eps,
                                  block_n=block_n, block_v=block_v, dense_rows=probed)
    unfiltered, _ = _filtered_reference(e, c, b, targets, g, h, softcap=None, z_loss=0.0,
                                        eps=0.0, block_n=block_n)
    assert (want[1] - unfiltered[1]).abs().max() > 1e-9
    ee, cc = e.clone().requires_grad_(), c.clone().requires_grad_()
    blocks._FILTER_STATS.reset()
    loss, lse = linear_cross_entropy(ee, cc, targets, reduction="none", return_lse=True,
                                     filter_eps=eps, block_n=block_n, block_v=block_v)
    ((loss * g).sum() + (lse * h).sum()).backward()
    stats = blocks._FILTER_STATS
    assert probed * c.shape[0] < stats.total and stats.kept < stats.total
    torch.testing.assert_close(ee.grad, want[0], rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(cc.grad, want[1], rtol=1e-10, atol=1e-14)


def test_lse_gradient_alone_is_filtered_on_its_own_scale():
    # only the lse is used (as a vocabulary-parallel loss does): the gradient is h * softmax,
    # with no onehot term; the loss's upstream gradient never arrives (None in backward)
    e, c, targets = make_peaked_inputs(torch.float32)
    h = torch.randn(N, generator=torch.Generator().manual_seed(2))
    ee, cc = e.clone().requires_grad_(), c.clone().requires_grad_()
    blocks._FILTER_STATS.reset()
    _, lse = linear_cross_entropy(ee, cc, targets, reduction="none", return_lse=True,
                                  block_n=40)
    (lse * h).sum().backward()
    assert blocks._FILTER_STATS.kept < 0.5 * blocks._FILTER_STATS.total
    e64, c64 = e.double().requires_grad_(), c.double().requires_grad_()
    (torch.logsumexp(e64 @ c64.T, 1) * h.double()).sum().backward()
    e32, c32 = e.clone().requires_grad_(), c.clone().requires_grad_()
    (torch.logsumexp(e32 @ c32.T, 1) * h).sum().backward()
    assert_reference_rule(e64.grad, e32.grad, ee.grad, TOL[torch.float32], "grad_e")
    assert_reference_rule(c64.grad, c32.grad, cc.grad, TOL[torch.float32], "grad_c")


def test_no_filter_is_the_dense_tile_path(monkeypatch):
    e, c, targets = make_peaked_inputs(torch.float64)
    g = torch.randn(N, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    zero = torch.zeros(N, dtype=torch.float64)
    want, _ = _filtered_reference(e, c, torch.zeros(c.shape[0], dtype=torch.float64), targets,
                                  g, zero, softcap=None, z_loss=0.0, eps=0.0, block_n=40)
    grads = {}
    for name, eps in (("none", None), ("zero", 0.0), ("tiny", 1e-300)):
        if name == "tiny":
            # every column survives 1e-300: take the gathering path anyway
            monkeypatch.setattr(blocks, "_GATHER_MAX_FRACTION", 1.0)
        else:
            # without a filter the column path is never entered
            def refuse(*args, **kwargs):
                raise AssertionError("column path used without a filter")
            monkeypatch.setattr(autograd, "_torch_backward_columns", refuse)
        ee, cc = e.clone().requires_grad_(), c.clone().requires_grad_()
        blocks._FILTER_STATS.reset()
        loss = linear_cross_entropy(ee, cc, targets, reduction="none", filter_eps=eps,
                                    block_n=40)
        (loss * g).sum().backward()
        assert blocks._FILTER_STATS.kept == blocks._FILTER_STATS.total > 0
        grads[name] = (ee.grad, cc.grad)
        monkeypatch.undo()
    assert torch.equal(grads["none"][0], grads["zero"][0])
    assert torch.equal(grads["none"][1], grads["zero"][1])
    for name in ("none", "tiny"):
        torch.testing.assert_close(grads[name][0], want[0], rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(grads[name][1], want[1], rtol=1e-12, atol=1e-15)


def test_filter_of_one_skips_everything_in_both_paths():
    # every normalised |d| is below 1 without a softcap or lse gradient: nothing is formed
    e, c, targets, _ = make_inputs(torch.float32, bias=False, invalid=True)
    for cc_dtype in (torch.float32, torch.bfloat16):
        ee, cc = e.clone().requires_grad_(), c.to(cc_dtype, copy=True).requires_grad_()
        loss = linear_cross_entropy(ee, cc, targets, reduction="none", filter_eps=1.0,
                                    block_n=40, block_v=96)
        (loss * torch.rand(loss.shape)).sum().backward()
        assert not ee.grad.any() and not cc.grad.any()

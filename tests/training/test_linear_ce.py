"""Fused linear cross-entropy against plain torch: fp64 ground truth, the reference's error rule.

The rule (apple/ml-cross-entropy's tests): for the loss and every gradient,
``|gt - ours| <= |gt - plain_in_native_dtype| + tol`` elementwise, where ``gt`` is plain torch in
fp64 and ``plain_in_native_dtype`` is plain torch on the inputs' own dtype. Shapes are not
multiples of any block size (252 tokens x 507 classes x 123 dims), and small explicit block sizes
make every loop run several partial blocks.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from tests.training.linear_ce_reference import (
    BLOCKS,
    IGNORE,
    TOL,
    D,
    N,
    assert_reference_rule,
    check_case,
    make_inputs,
    make_peaked_inputs,
    ours,
    plain,
)

from tokenwise.errors import TokenwiseError
from tokenwise.training import linear_cross_entropy
from tokenwise.training.linear_ce import blocks

# --- every option, fp32, both torch modes --------------------------------------------------

FP32_CASES = list(itertools.product([False, True], [None, 20.0], [0, 1], [False, True],
                                    ["mean", "sum", "none"]))


@pytest.mark.parametrize(("bias", "softcap", "shift", "invalid", "reduction"), FP32_CASES)
def test_fp32_every_option(bias, softcap, shift, invalid, reduction):
    # scalar losses exercise the single-pass mode by default; add the recompute mode once
    check_case(torch.float32, bias=bias, softcap=softcap, shift=shift, invalid=invalid,
               reduction=reduction, **BLOCKS)
    if reduction != "none":
        check_case(torch.float32, bias=bias, softcap=softcap, shift=shift, invalid=invalid,
                   reduction=reduction, grad_in_forward=False, **BLOCKS)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("bias", "softcap", "shift", "reduction"),
                         [(False, None, 0, "mean"), (True, 20.0, 1, "none"),
                          (True, None, 1, "sum"), (False, 20.0, 0, "mean")])
def test_half_precision(dtype, bias, softcap, shift, reduction):
    check_case(dtype, bias=bias, softcap=softcap, shift=shift, invalid=True, reduction=reduction,
               **BLOCKS)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_z_loss_lse_and_entropy(dtype, reduction):
    # the lse output gets its own random upstream gradient, so its backward path is checked
    check_case(dtype, bias=True, softcap=20.0, shift=1, invalid=True, reduction=reduction,
               z_loss=1e-2, with_lse=True, with_entropy=True, **BLOCKS)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_z_loss_single_pass(reduction):
    check_case(torch.float32, bias=True, invalid=True, reduction=reduction, z_loss=1e-2,
               with_entropy=True, grad_in_forward=True, **BLOCKS)


@pytest.mark.parametrize("filter_eps", [None, "auto", 1e-4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_filter_settings_keep_the_rule(filter_eps, dtype):
    check_case(dtype, invalid=True, reduction="mean", filter_eps=filter_eps, grad_in_forward=False,
               **BLOCKS)


def test_filter_skips_negligible_blocks():
    e, c, targets, _ = make_inputs(torch.float32, bias=False, invalid=False)
    # every |softmax - onehot| is below 1 (no probability is exactly 0), so all blocks are skipped
    for gif in (True, False):
        ee, cc = e.clone().requires_grad_(), c.clone().requires_grad_()
        linear_cross_entropy(ee, cc, targets, filter_eps=1.0, grad_in_forward=gif,
                             **BLOCKS).backward()
        assert not ee.grad.any() and not cc.grad.any()
        # a threshold of 0 skips nothing: identical to no filtering
        grads = []
        for eps in (0.0, None):
            ee, cc = e.clone().requires_grad_(), c.clone().requires_grad_()
            linear_cross_entropy(ee, cc, targets, filter_eps=eps, grad_in_forward=gif,
                                 **BLOCKS).backward()
            grads.append((ee.grad, cc.grad))
        assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


# --- column filtering on a peaked (trained-model-like) softmax -----------------------------

PEAKED_CASES = [
    {},
    {"bias": True},
    {"softcap": 50.0},  # a cap of 20 flattens this softmax until nothing can be filtered
    {"z_loss": 1e-3},
    {"shift": 1, "invalid": True, "reduction": "sum"},
]


def _peaked(dtype, *, bias=False, invalid=False, seed=0):
    e, c, targets = make_peaked_inputs(dtype, seed=seed)
    e, targets = e.view(4, N // 4, D), targets.view(4, N // 4)
    if invalid:
        gen = torch.Generator().manual_seed(seed + 7)
        targets = targets.clone()
        targets.view(-1)[torch.randperm(N, generator=gen)[: N // 5]] = IGNORE
    b = (torch.randn(c.shape[0], generator=torch.Generator().manual_seed(seed + 3)) * 0.02
         ).to(dtype) if bias else None
    return e, c, targets, b


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", PEAKED_CASES, ids=lambda o: ",".join(o) or "plain")
def test_peaked_column_filter_keeps_the_rule(dtype, case):
    case = dict(case)
    bias, invalid = case.pop("bias", False), case.pop("invalid", False)
    options = {"softcap": None, "shift": 0, "reduction": "mean", "z_loss": None,
               "with_lse": False, "with_entropy": False, **case}
    e, c, targets, b = _peaked(dtype, bias=bias, invalid=invalid)
    upstream = {"loss": torch.tensor(1.0)}
    gt_outs, gt_grads = plain(e.double(), c.double(), targets,
                              None if b is None else b.double(), upstream=upstream, **options)
    ref_outs, ref_grads = plain(e, c, targets, b, upstream=upstream, **options)
    blocks._FILTER_STATS.reset()
    got_outs, got_grads = ours(e, c, targets, b, upstream=upstream, grad_in_forward=True,
                               block_n=40, **options)
    # the filter really skipped most of the gradient work (the fp32 threshold is 3.7e-9)
    kept = blocks._FILTER_STATS.kept / blocks._FILTER_STATS.total
    assert kept < 0.5, kept
    assert_reference_rule(gt_outs[0], ref_outs[0], got_outs[0], TOL[dtype], "loss")
    for name, g, r, o in zip(["grad_e", "grad_c", "grad_bias"], gt_grads, ref_grads, got_grads,
                             strict=False):
        assert_reference_rule(g, r, o, TOL[dtype], name)


def _column_filtered_grads(e, c, targets, eps, block_n):
    """Naive fp64 gradients of the mean loss with the column filter: in each block of
    ``block_n`` tokens, a vocabulary column is zeroed when all its ``|p - onehot|`` < eps."""
    d = (e @ c.T).softmax(1)  # (N, V)
    d[torch.arange(len(targets)), targets] -= 1.0
    for i0 in range(0, len(targets), block_n):
        blk = d[i0:i0 + block_n]
        blk[:, (blk.abs() < eps).all(0)] = 0.0
    d /= len(targets)
    return d @ c, d.T @ e


@pytest.mark.parametrize("gather_columns", [2048, 64])
def test_column_filter_semantics_exactly(monkeypatch, gather_columns):
    # 64: the kept columns go through the gathered products in several pieces
    monkeypatch.setattr(blocks, "_GATHER_COLUMNS", gather_columns)
    e, c, targets = make_peaked_inputs(torch.float64)
    eps, block_n = 1e-6, 40
    want_e, want_c = _column_filtered_grads(e, c, targets, eps, block_n)
    _, full_c = _column_filtered_grads(e, c, targets, 0.0, block_n)
    # the filter drops something measurable at this threshold, so the check below can fail
    assert (want_c - full_c).abs().max() > 1e-9
    ee, cc = e.clone().requires_grad_(), c.clone().requires_grad_()
    blocks._FILTER_STATS.reset()
    linear_cross_entropy(ee, cc, targets, filter_eps=eps, grad_in_forward=True,
                         block_n=block_n).backward()
    assert blocks._FILTER_STATS.kept < 0.5 * blocks._FILTER_STATS.total
    torch.testing.assert_close(ee.grad, want_e, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(cc.grad, want_c, rtol=1e-10, atol=1e-14)


def test_no_filter_is_dense_and_gathering_everything_matches_it(monkeypatch):
    e, c, targets = make_peaked_inputs(torch.float64)
    grads = {}
    for name, eps in (("none", None), ("zero", 0.0), ("tiny", 1e-300)):
        if name == "tiny":
            # every column survives a threshold of 1e-300: take the gathering path anyway
            monkeypatch.setattr(blocks, "_GATHER_MAX_FRACTION", 1.0)
        ee, cc = e.clone().requires_grad_(), c.clone().requires_grad_()
        blocks._FILTER_STATS.reset()
        linear_cross_entropy(ee, cc, targets, filter_eps=eps, grad_in_forward=True,
                             block_n=40).backward()
        assert blocks._FILTER_STATS.kept == blocks._FILTER_STATS.total > 0
        grads[name] = (ee.grad, cc.grad)
    assert torch.equal(grads["none"][0], grads["zero"][0])
    assert torch.equal(grads["none"][1], grads["zero"][1])
    torch.testing.assert_close(grads["tiny"][0], grads["none"][0], rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(grads["tiny"][1], grads["none"][1], rtol=1e-12, atol=1e-15)


def test_default_blocks_and_flat_input():
    # no explicit blocks, 2-D e: one block in each direction
    e, c, targets, b = make_inputs(torch.float32, bias=True, invalid=True)
    e2, t2 = e.reshape(N, D), targets.reshape(N)
    got = linear_cross_entropy(e2, c, t2, bias=b, reduction="sum")
    want = F.cross_entropy((e2 @ c.T + b).double(), t2, reduction="sum")
    assert torch.allclose(got.double(), want, rtol=1e-5)


def test_fp64_gradcheck_through_loss_and_lse():
    gen = torch.Generator().manual_seed(3)
    e = torch.randn(2, 5, 6, dtype=torch.float64, generator=gen).requires_grad_()
    c = torch.randn(11, 6, dtype=torch.float64, generator=gen).requires_grad_()
    b = torch.randn(11, dtype=torch.float64, generator=gen).requires_grad_()
    t = torch.randint(0, 11, (2, 5), generator=gen)
    t[0, 2] = IGNORE

    def fn(e, c, b):
        return linear_cross_entropy(e, c, t, bias=b, softcap=3.0, shift=1, reduction="none",
                                    return_lse=True, z_loss=0.1, filter_eps=None, block_n=3,
                                    block_v=4)

    assert torch.autograd.gradcheck(fn, (e, c, b))


# --- reductions, scaling and edge cases ------------------------------------------------------


def test_gradient_accumulation_scaling():
    """Two half-batches summed give the full batch's sum, and dividing by the total count the
    full batch's mean: the loss and the gradients (what accumulation over micro-batches does)."""
    e, c, targets, _ = make_inputs(torch.float32, bias=False, invalid=True)
    count = int((targets[:, 1:] != IGNORE).sum())
    cc_full = c.clone().requires_grad_()
    full = linear_cross_entropy(e, cc_full, targets, shift=1, reduction="mean")
    full.backward()
    cc_acc = c.clone().requires_grad_()
    total = 0.0
    for half in (slice(0, 2), slice(2, 4)):
        part = linear_cross_entropy(e[half], cc_acc, targets[half], shift=1, reduction="sum")
        (part / count).backward()
        total += part.item()
    assert total / count == pytest.approx(float(full), rel=1e-5)
    torch.testing.assert_close(cc_acc.grad, cc_full.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("gif", [None, False])
def test_all_ignored_is_zero_not_nan(reduction, gif):
    e = torch.randn(2, 7, 5, requires_grad=True)
    c = torch.randn(9, 5, requires_grad=True)
    targets = torch.full((2, 7), IGNORE)
    if gif is False and reduction == "none":
        gif = None
    loss, lse, ent = linear_cross_entropy(e, c, targets, reduction=reduction, shift=1,
                                          return_lse=True, return_entropy=True,
                                          grad_in_forward=gif)
    assert not loss.isnan().any() and not loss.any()
    assert lse.shape == ent.shape == (2, 6) and not lse.any() and not ent.any()
    (loss.sum() + lse.sum()).backward()
    assert torch.equal(e.grad, torch.zeros_like(e)) and torch.equal(c.grad, torch.zeros_like(c))


def test_single_pass_backward_twice_is_refused():
    e = torch.randn(6, 4, requires_grad=True)
    c = torch.randn(5, 4, requires_grad=True)
    loss = linear_cross_entropy(e, c, torch.tensor([0, 1, 2, 3, 4, 0]), grad_in_forward=True)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="only once"):
        loss.backward()
    # the recompute mode supports it and accumulates
    e.grad = None
    loss = linear_cross_entropy(e, c, torch.tensor([0, 1, 2, 3, 4, 0]), grad_in_forward=False)
    loss.backward(retain_graph=True)
    first = e.grad.clone()
    loss.backward()
    torch.testing.assert_close(e.grad, 2 * first)


def test_upstream_scale_in_single_pass():
    e = torch.randn(8, 4, requires_grad=True)
    c = torch.randn(5, 4)
    t = torch.randint(0, 5, (8,))
    (linear_cross_entropy(e, c, t, grad_in_forward=True) * 2.5).backward()
    got = e.grad.clone()
    e.grad = None
    (F.cross_entropy(e @ c.T, t) * 2.5).backward()
    torch.testing.assert_close(got, e.grad)


def test_only_some_inputs_need_grad():
    e, c, targets, b = make_inputs(torch.float32, bias=True, invalid=True)
    for gif in (True, False):
        bb = b.clone().requires_grad_()
        linear_cross_entropy(e, c, targets, bias=bb, grad_in_forward=gif).backward()
        want = b.clone().requires_grad_()
        F.cross_entropy((e @ c.T + want).flatten(0, 1), targets.flatten()).backward()
        torch.testing.assert_close(bb.grad, want.grad, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        loss = linear_cross_entropy(e, c, targets)
    assert not loss.requires_grad


def test_entropy_matches_signals():
    from tokenwise.signals import entropy

    e, c, targets, _ = make_inputs(torch.float32, bias=False, invalid=False)
    _, ent = linear_cross_entropy(e, c, targets, return_entropy=True, softcap=20.0, **BLOCKS)
    want = entropy(torch.tanh((e @ c.T) / 20.0) * 20.0)
    torch.testing.assert_close(ent, want, rtol=1e-4, atol=1e-5)
    assert not ent.requires_grad


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"reduction": "avg"}, "reduction must be one of"),
    ({"shift": 5}, r"shift must be in \[0, T\)"),
    ({"shift": -1}, r"shift must be in \[0, T\)"),
    ({"softcap": 0.0}, "softcap must be"),
    ({"z_loss": -1.0}, "z_loss must be"),
    ({"filter_eps": "high"}, "filter_eps must be"),
    ({"block_n": 0}, "block_n must be"),
    ({"impl": "cuda"}, "impl must be one of"),
    ({"reduction": "none", "grad_in_forward": True}, "grad_in_forward=True needs"),
    ({"return_lse": True, "grad_in_forward": True}, "grad_in_forward=True needs"),
])
def test_bad_options(kwargs, match):
    e, c, t = torch.randn(2, 5, 4), torch.randn(7, 4), torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(TokenwiseError, match=match):
        linear_cross_entropy(e, c, t, **kwargs)


def test_bad_tensors():
    e, c, t = torch.randn(6, 4), torch.randn(7, 4), torch.zeros(6, dtype=torch.long)
    with pytest.raises(TokenwiseError, match=r"targets must have shape e.shape\[:-1\] = \(6,\)"):
        linear_cross_entropy(e, c, t[:5])
    with pytest.raises(TokenwiseError, match="e's last dimension must equal c's"):
        linear_cross_entropy(e, torch.randn(7, 3), t)
    with pytest.raises(TokenwiseError, match="bias must have shape"):
        linear_cross_entropy(e, c, t, bias=torch.zeros(6))
    with pytest.raises(TokenwiseError, match="e must be a float16"):
        linear_cross_entropy(e.long(), c, t)
    with pytest.raises(TokenwiseError, match="targets must have an integer dtype"):
        linear_cross_entropy(e, c, t.float())
    with pytest.raises(TokenwiseError, match="c must have 2 dimension"):
        linear_cross_entropy(e, c[None], t)
    with pytest.raises(TokenwiseError, match=r"\[0, 7\) or equal ignore_index=-100; got 7"):
        linear_cross_entropy(e, c, torch.tensor([0, 1, 7, 2, 3, 4]))
    with pytest.raises(TokenwiseError, match="got -3"):
        linear_cross_entropy(e, c, torch.tensor([0, 1, -3, 2, 3, 4]))
    with pytest.raises(TokenwiseError, match="impl='triton' needs an importable triton"):
        linear_cross_entropy(e, c, t, impl="triton")


# --- peers and a real model ------------------------------------------------------------------


@pytest.mark.slow
def test_agrees_with_cut_cross_entropy_torch_compile():
    cce = pytest.importorskip("cut_cross_entropy")
    e, c, targets, _ = make_inputs(torch.float32, bias=False, invalid=True)
    grads = []
    losses = []
    for fn in (lambda a, b: cce.linear_cross_entropy(a, b, targets, shift=True, softcap=20.0,
                                                     impl="torch_compile"),
               lambda a, b: linear_cross_entropy(a, b, targets, shift=1, softcap=20.0)):
        ee, cc = e.clone().requires_grad_(), c.clone().requires_grad_()
        try:
            loss = fn(ee, cc)
        except Exception as err:  # inductor needs a working C++ toolchain
            pytest.skip(f"cut_cross_entropy torch_compile does not run here: {err}")
        loss.backward()
        losses.append(float(loss))
        grads.append((ee.grad, cc.grad))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    for theirs, mine in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)


def test_training_tw_small_head_matches_plain(small):
    """Fine-tune tw-small's output layer for 20 steps with each loss: same loss curve."""
    model = small.hf_model
    tok = small.tokenizer
    texts = ["The capital of Veltria is Osk.", "Mira owns a red lantern and two kites.",
             "12 plus 30 is 42.", "Every Borran fox sleeps at noon."]
    batch = tok(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE)
    with torch.no_grad():
        hidden = model.model(input_ids=batch["input_ids"],
                             attention_mask=batch["attention_mask"]).last_hidden_state
    curves = []
    for fused in (True, False):
        weight = model.lm_head.weight.detach().clone().requires_grad_()
        opt = torch.optim.AdamW([weight], lr=1e-2)
        curve = []
        for _ in range(20):
            opt.zero_grad()
            if fused:
                loss = linear_cross_entropy(hidden, weight, labels, shift=1)
            else:
                logits = hidden[:, :-1] @ weight.T
                loss = F.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten())
            loss.backward()
            opt.step()
            curve.append(loss.item())
        curves.append(curve)
    assert curves[0][-1] < curves[0][0] - 0.1  # it trains
    assert curves[0] == pytest.approx(curves[1], rel=1e-4, abs=1e-4)

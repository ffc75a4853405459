"""The Triton kernels of the fused linear cross-entropy, against the same fp64 reference rule.

On a CUDA machine the cases run on the GPU (bf16 included). Elsewhere they run on CPU tensors
under Triton's interpreter, in a child pytest process started with ``TRITON_INTERPRET=1``
(Triton reads it when kernels are defined, so it cannot be switched on inside this process);
the interpreter has no bf16 dot products, so there the cases are fp32 and fp16.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tests.training.linear_ce_reference import (
    BLOCKS,
    IGNORE,
    check_case,
    make_inputs,
    make_peaked_inputs,
)

from tokenwise.training import linear_cross_entropy
from tokenwise.training.linear_ce import _FILTER_STATS

triton = pytest.importorskip("triton")

from tokenwise.training import linear_ce_triton  # noqa: E402

CUDA = torch.cuda.is_available()
INTERPRETING = linear_ce_triton.interpreting()
RUNS_HERE = CUDA or INTERPRETING
DEVICE = "cuda" if CUDA else "cpu"
needs_kernels = pytest.mark.skipif(
    not RUNS_HERE, reason="needs CUDA, or TRITON_INTERPRET=1 (run by test_kernels_interpreted)")
ROOT = Path(__file__).resolve().parents[2]

DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [])


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("bias", "softcap", "shift", "reduction"), [
    (False, None, 0, "mean"), (True, 20.0, 1, "none"), (True, None, 1, "sum"),
    (False, 20.0, 0, "mean")])
def test_triton_matches_reference(dtype, bias, softcap, shift, reduction):
    check_case(dtype, bias=bias, softcap=softcap, shift=shift, invalid=True,
               reduction=reduction, device=DEVICE, impl="triton")


@needs_kernels
@pytest.mark.parametrize("filter_eps", ["auto", None])
def test_triton_lse_entropy_z_loss(filter_eps):
    check_case(torch.float32, bias=True, softcap=20.0, shift=1, invalid=True, reduction="none",
               z_loss=1e-2, with_lse=True, with_entropy=True, filter_eps=filter_eps,
               device=DEVICE, impl="triton")


@needs_kernels
def test_triton_agrees_with_torch_loops_and_skips_filtered_tiles():
    e, c, targets, b = make_inputs(torch.float32, bias=True, invalid=True, device=DEVICE)
    results = []
    for impl, extra in (("triton", {}), ("torch", BLOCKS)):
        ee, cc, bb = (t.clone().requires_grad_() for t in (e, c, b))
        loss, lse = linear_cross_entropy(ee, cc, targets, bias=bb, shift=1, softcap=20.0,
                                         return_lse=True, impl=impl, **extra)
        (loss + lse.square().mean()).backward()
        results.append((loss.detach(), lse.detach(), ee.grad, cc.grad, bb.grad))
    for ours, theirs in zip(*results, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    # a threshold above every softmax term skips every tile; each target column's gradient,
    # (p_t - 1) / M for a mean loss, is applied outside the tiles, exactly
    ee, cc, bb = (t.clone().requires_grad_() for t in (e, c, b))
    linear_ce_triton.TILE_STATS.reset()
    linear_cross_entropy(ee, cc, targets, bias=bb, filter_eps=1.0, impl="triton").backward()
    assert linear_ce_triton.TILE_STATS.kept == 0 < linear_ce_triton.TILE_STATS.tiles
    flat_e, flat_t = e.reshape(-1, e.shape[-1]), targets.reshape(-1)
    valid = flat_t != IGNORE
    ev, tv = flat_e[valid], flat_t[valid]
    p_t = (ev @ c.T + b).softmax(1)[torch.arange(len(tv)), tv]
    w = (p_t - 1.0) / int(valid.sum())
    want_e = torch.zeros_like(flat_e)
    want_e[valid] = w[:, None] * c[tv]
    want_c = torch.zeros_like(c).index_add_(0, tv, w[:, None] * ev)
    want_b = torch.zeros_like(b).index_add_(0, tv, w)
    torch.testing.assert_close(ee.grad.reshape(-1, e.shape[-1]), want_e)
    torch.testing.assert_close(cc.grad, want_c)
    torch.testing.assert_close(bb.grad, want_b)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_filter_skips_tiles_on_a_peaked_softmax(dtype, monkeypatch):
    """On a trained-model-like softmax the filter skips most tiles and is counted; the
    gradients stay close to the unfiltered ones, whatever the slices of the fp32 buffers."""
    # the interpreter's tiles are 64: slices of 64 tokens / 128 columns there; on a GPU the
    # tuned tiles can be 256, so slices stay multiples of 256 (and there are more tokens)
    align = 64 if INTERPRETING else 256
    e, c, targets = make_peaked_inputs(torch.float64, n=200 if INTERPRETING else 600, v=4000,
                                       d=48)
    e, c, targets = e.to(dtype).to(DEVICE), c.to(dtype).to(DEVICE), targets.to(DEVICE)
    grads = {}
    for name, eps, e_bytes, c_bytes in (
            ("dense", None, None, None), ("filtered", 2.0**-12, None, None),
            ("sliced", 2.0**-12, align * 4 * 48, 2 * align * 4 * 48)):
        if e_bytes:
            monkeypatch.setattr(linear_ce_triton, "_ALIGN", align)
            monkeypatch.setattr(linear_ce_triton, "GRAD_E_SLICE_BYTES", e_bytes)
            monkeypatch.setattr(linear_ce_triton, "GRAD_C_SLICE_BYTES", c_bytes)
        ee, cc = e.clone().requires_grad_(), c.clone().requires_grad_()
        linear_ce_triton.TILE_STATS.reset()
        _FILTER_STATS.reset()
        linear_cross_entropy(ee, cc, targets, filter_eps=eps, impl="triton").backward()
        grads[name] = (ee.grad.float(), cc.grad.float())
        if eps:
            stats = linear_ce_triton.TILE_STATS
            assert 0 < stats.kept < stats.tiles, (stats.kept, stats.tiles)
            # the gradient entries of the kept tiles, as the torch paths count them
            assert 0 < _FILTER_STATS.kept < _FILTER_STATS.total == e.shape[0] * c.shape[0]
            if INTERPRETING:  # 64 x 64 tiles: most hold no target and no frequent column
                assert stats.kept < stats.tiles / 2, (stats.kept, stats.tiles)
    scale = max(g.abs().max() for g in grads["dense"])
    for name in ("filtered", "sliced"):
        for dense, got in zip(grads["dense"], grads[name], strict=True):
            assert (dense - got).abs().max() <= 1e-3 * scale, name
    for one, other in zip(grads["filtered"], grads["sliced"], strict=True):
        torch.testing.assert_close(one, other, rtol=1e-3, atol=1e-6 * scale)


@needs_kernels
def test_triton_column_order_changes_no_gradient():
    """Walking the columns in the forward's order of summed logits gives the gradients of the
    vocabulary order; only which tiles are skipped can differ, and with a tiny threshold none
    of the kept entries changes."""
    e, c, targets = make_peaked_inputs(torch.float32, n=130, v=700, d=40)
    e2, tgt = e.to(DEVICE), targets.to(DEVICE)
    c = c.to(DEVICE)
    out = linear_ce_triton.lse_forward(e2, c, None, None, tgt, None, False,
                                       want_column_sums=True)
    lse, target_logit, sums, off_lse = out.lse, out.target_logit, out.column_sums, \
        out.off_target_lse
    torch.testing.assert_close(sums, (e2 @ c.T).sum(0), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(lse, torch.logsumexp(e2 @ c.T, 1), rtol=1e-5, atol=1e-5)
    a = g = torch.full_like(lse, 1.0 / lse.numel())
    out = [linear_ce_triton.backward(e2, c, None, None, tgt, lse, a, g, None, 1e-30,
                                     (True, True, False), target_logit, column_sums=s,
                                     off_target_lse=off_lse)
           for s in (None, sums)]
    for one, other in zip(out[0][:2], out[1][:2], strict=True):
        torch.testing.assert_close(one, other, rtol=1e-4, atol=1e-7)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float16] + ([torch.bfloat16] if CUDA else []))
def test_triton_grad_c_in_vocabulary_slices(dtype, monkeypatch):
    """A bf16/fp16 classifier's gradient is accumulated in fp32 slice by slice (the buffer
    stays small) and comes back in the classifier's dtype; slicing changes no gradient."""
    e, c, targets, b = make_inputs(dtype, bias=True, invalid=True, device=DEVICE)
    results = []
    # 507 columns, 123 features: one slice (default budget), then slices of 64 and 128 rows
    for budget in (linear_ce_triton.GRAD_C_SLICE_BYTES, 64 * 4 * 123, 128 * 4 * 123 + 5):
        monkeypatch.setattr(linear_ce_triton, "GRAD_C_SLICE_BYTES", budget)
        monkeypatch.setattr(linear_ce_triton, "GRAD_E_SLICE_BYTES", budget)
        ee, cc, bb = (t.clone().requires_grad_() for t in (e, c, b))
        loss, lse = linear_cross_entropy(ee, cc, targets, bias=bb, shift=1, softcap=20.0,
                                         return_lse=True, impl="triton")
        (loss + lse.square().mean()).backward()
        assert cc.grad.dtype == dtype and ee.grad.dtype == dtype
        results.append((ee.grad.float(), cc.grad.float(), bb.grad.float()))
    for sliced in results[1:]:
        for one, other in zip(results[0], sliced, strict=True):
            torch.testing.assert_close(one, other, rtol=1e-3, atol=1e-5)
    assert results[0][1].abs().sum() > 0


@needs_kernels
def test_triton_strided_bias():
    """A bias that is a strided view (a column of a wider tensor) is read element by element."""
    e, c, targets, b = make_inputs(torch.float32, bias=True, invalid=True, device=DEVICE)
    wide = torch.stack([torch.zeros_like(b), b], dim=1)  # (V, 2): column 1 has stride 2
    results = []
    for bias in (b, wide[:, 1]):
        bb = bias.detach().clone() if bias.is_contiguous() else bias.detach()
        bb.requires_grad_(bias.is_contiguous())
        ee, cc = e.clone().requires_grad_(), c.clone().requires_grad_()
        loss = linear_cross_entropy(ee, cc, targets, bias=bb, impl="triton")
        loss.backward()
        results.append((loss.detach(), ee.grad, cc.grad))
    for one, other in zip(*results, strict=True):
        torch.testing.assert_close(one, other, rtol=1e-5, atol=1e-6)


@needs_kernels
def test_triton_all_ignored():
    e = torch.randn(2, 7, 16, device=DEVICE, requires_grad=True)
    c = torch.randn(33, 16, device=DEVICE, requires_grad=True)
    targets = torch.full((2, 7), IGNORE, device=DEVICE)
    loss = linear_cross_entropy(e, c, targets, impl="triton")
    loss.backward()
    assert float(loss) == 0.0 and not e.grad.any() and not c.grad.any()


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_auto_picks_triton_on_cuda(monkeypatch):
    calls = []
    original = linear_ce_triton.lse_forward
    monkeypatch.setattr(linear_ce_triton, "lse_forward",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    e = torch.randn(8, 16, device="cuda")
    c = torch.randn(40, 16, device="cuda")
    linear_cross_entropy(e, c, torch.randint(0, 40, (8,), device="cuda"))
    assert calls


@pytest.mark.slow
@pytest.mark.skipif(RUNS_HERE, reason="the kernels run directly in this process")
def test_kernels_interpreted():
    """No GPU: run this file's kernel tests on CPU under Triton's interpreter."""
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(Path(__file__)), "-q", "-x", "-p", "no:cacheprovider",
         "-k", "not interpreted"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
    assert proc.returncode == 0, tail
    assert " passed" in tail and " failed" not in tail, tail


@pytest.mark.skipif(not INTERPRETING, reason="on a GPU the real tuners run in every test")
def test_tuned_path_under_the_interpreter(monkeypatch):
    """The CUDA host path with tuners, run by the interpreter: the tuners time every
    candidate on the real buffers (each run accumulates into them) and must zero them before
    the real run; pass E must use the tiles pass C chose (128, not the map's 64), and the
    forward's grid the forward's. Timings are faked so the 128-wide tiles win."""
    from triton.runtime import autotuner

    specs = [(64, 64, 32, 4, 3), (128, 128, 64, 4, 3)]

    def fake_bench(self, *args, config, **meta):
        nargs = dict(zip(self.arg_names, args, strict=False))
        full = {**nargs, **meta, **config.all_kwargs()}
        self.pre_hook(full)  # what a timed run does to the buffers: zero, run, leave sums
        self.fn.run(*args, **meta, **config.all_kwargs())
        self.post_hook(full, exception=None)
        return [1.0 if config.kwargs["BLOCK_B"] == 128 else 2.0] * 3

    monkeypatch.setattr(autotuner.Autotuner, "_bench", fake_bench)
    tuners = {(kind, operands): linear_ce_triton._autotune(kernel, specs, *tune)
              for kind, (kernel, tune) in linear_ce_triton._KERNELS.items()
              for operands in ("16", "fp32", "mixed")}
    monkeypatch.setattr(linear_ce_triton, "_TUNERS", tuners)
    check_case(torch.float32, bias=True, softcap=20.0, shift=1, invalid=True, reduction="none",
               z_loss=1e-2, with_lse=True, device=DEVICE, impl="triton")
    assert tuners[("backward", "fp32")].best_config.kwargs["BLOCK_B"] == 128
    assert tuners[("forward", "fp32")].best_config.kwargs["BLOCK_V"] == 128
    # without a filter: the one fused pass, tuned, accumulating grad_e over every tile
    check_case(torch.float16, bias=False, shift=0, invalid=False, reduction="mean",
               filter_eps=None, device=DEVICE, impl="triton")


@needs_kernels
@pytest.mark.parametrize("which", ["e", "c", "bias"])
def test_triton_only_some_inputs_need_a_gradient(which):
    """A frozen classifier (or frozen embeddings, or only a bias to train) takes the same
    gradients as the torch loops, filtered and not."""
    e, c, targets, b = make_inputs(torch.float32, bias=True, invalid=True, device=DEVICE)
    for eps in ("auto", None):
        got = []
        for impl, extra in (("triton", {}), ("torch", BLOCKS)):
            leaves = {"e": e.clone(), "c": c.clone(), "bias": b.clone()}
            leaves[which].requires_grad_()
            loss = linear_cross_entropy(leaves["e"], leaves["c"], targets, bias=leaves["bias"],
                                        shift=1, softcap=20.0, filter_eps=eps, impl=impl,
                                        **extra)
            loss.backward()
            assert all(t.grad is None for k, t in leaves.items() if k != which)
            got.append(leaves[which].grad)
        torch.testing.assert_close(got[0], got[1], rtol=1e-4, atol=1e-6)


@needs_kernels
@pytest.mark.parametrize(("e_dtype", "c_dtype"), [(torch.float32, torch.float16),
                                                  (torch.float16, torch.float32)])
def test_triton_mixed_dtypes(e_dtype, c_dtype):
    """Mixed operands (fp32 activations with fp16 weights, or the reverse) take fp32 dots, each
    tile cast in the kernel (no fp32 copy of the classifier), and give the torch loops'
    gradients in each input's own dtype."""
    e, c, targets, _ = make_inputs(torch.float32, bias=False, invalid=True, device=DEVICE)
    e, c = e.to(e_dtype), c.to(c_dtype)
    got = []
    for impl, extra in (("triton", {}), ("torch", BLOCKS)):
        ee, cc = e.clone().requires_grad_(), c.clone().requires_grad_()
        loss = linear_cross_entropy(ee, cc, targets, shift=1, softcap=20.0, impl=impl, **extra)
        loss.backward()
        assert ee.grad.dtype == e_dtype and cc.grad.dtype == c_dtype
        got.append((loss.detach(), ee.grad.float(), cc.grad.float()))
    for ours, theirs in zip(*got, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=2e-3, atol=2e-5)


@needs_kernels
def test_triton_sure_tokens_keep_their_precision():
    """Tokens whose target logit stands far above the rest (p_t within 1e-13 of 1): their
    gradient, (p_t - 1) times the upstream weight, keeps its relative precision and their loss
    is never below 0 - the target column is summed apart in the forward and its gradient
    formed from the log-sum-exp off the target, not from two computations of one logit."""
    gen = torch.Generator().manual_seed(0)
    n, v, d = 64, 128, 4096
    c = torch.randn(v, d, generator=gen, dtype=torch.float64)
    t = torch.randint(0, v, (n,), generator=gen)
    e = 35.0 * c[t] / c[t].square().sum(1, keepdim=True)  # target logit 35, the rest ~N(0, 0.3)
    ref_e, ref_c = e.clone().requires_grad_(), c.clone().requires_grad_()
    F.cross_entropy(ref_e @ ref_c.T, t, reduction="sum").backward()
    ee, cc = e.float().to(DEVICE).requires_grad_(), c.float().to(DEVICE).requires_grad_()
    # no filter: every off-target entry here is below any threshold (the filter would drop
    # them all, within its bound); what is checked is the target term's own precision
    loss = linear_cross_entropy(ee, cc, t.to(DEVICE), reduction="none", filter_eps=None,
                                impl="triton")
    assert bool((loss >= 0).all()), loss.min()
    loss.sum().backward()
    # plain fp32 torch rounds p_t to 1 and loses the difference: ~100% error on grad_e here
    pe, pc = e.float().requires_grad_(), c.float().requires_grad_()
    F.cross_entropy(pe @ pc.T, t, reduction="sum").backward()
    for got, plain, want in ((ee.grad, pe.grad, ref_e.grad), (cc.grad, pc.grad, ref_c.grad)):
        err = float((got.double().cpu() - want).abs().max())
        plain_err = float((plain.double() - want).abs().max())
        assert err <= 2e-2 * float(want.abs().max()), (err, float(want.abs().max()))
        assert err <= 0.1 * plain_err, (err, plain_err)

"""Top-H: both rules against naive float64 code, transformers conformance, edge cases (the
contract every sampler keeps, per-row alpha included, is in test_contract.py)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from tokenwise.errors import TokenwiseError
from tokenwise.sampling.top_h import TopH

TOL = 1e-5  # decisions this close to the threshold may legitimately flip between fp32 and fp64


def naive_top_h(row, alpha, rule="reference", top_n=100, temperature=1.0):
    """Per-row float64 Top-H: (kept bool (V,), ambiguous: a decision within TOL of its bound)."""
    z = np.asarray(row, dtype=np.float64) / temperature
    vocab = z.size
    finite = np.isfinite(z)
    p = np.zeros(vocab)
    p[finite] = np.exp(z[finite] - z[finite].max())
    p /= p.sum()
    contrib = np.zeros(vocab)
    contrib[p > 0] = -p[p > 0] * np.log(p[p > 0])
    order = np.argsort(-z, kind="stable")
    n = vocab if top_n is None else min(top_n, vocab)
    top = order[:n]
    margins = []
    if rule == "reference":
        tau = threshold = alpha * sum(contrib[i] for i in top)
        cum, k = 0.0, 0
        for i in top:
            cum += contrib[i]
            margins.append(cum - tau)
            if cum <= tau and p[i] > 0:
                k += 1
            else:
                break
    else:
        bound = threshold = alpha * contrib.sum()
        mass, acc, k = 0.0, 0.0, 0
        for j, i in enumerate(top):
            mass += p[i]
            acc += contrib[i]
            h_q = math.log(mass) + acc / mass
            margins.append(h_q - bound)
            if h_q <= bound and p[i] > 0:
                k = j + 1  # longest satisfying prefix
    k = max(k, 1)
    kept = np.zeros(vocab, dtype=bool)
    kept[top[:k]] = True
    ambiguous = any(abs(m) < TOL * (1 + threshold) for m in margins)
    return kept, ambiguous


def kept(sampler, logits):
    return sampler(logits).isfinite()


def random_cases(seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(12):
        vocab = int(torch.randint(2, 400, (1,), generator=gen))
        scale = float(torch.empty(1).uniform_(0.2, 6.0, generator=gen))
        logits = torch.randn(4, vocab, generator=gen) * scale
        holes = torch.rand(4, vocab, generator=gen) < 0.2
        holes[:, 0] = False  # at least one finite token per row
        logits[1:3] = logits[1:3].masked_fill(holes[1:3], float("-inf"))
        yield logits


@pytest.mark.parametrize("rule", ["reference", "bound"])
@pytest.mark.parametrize(("alpha", "top_n", "temperature"),
                         [(0.4, 100, 1.0), (0.15, 10, 0.7), (0.8, None, 1.5), (0.97, 100, 1.0)])
def test_matches_naive_float64(rule, alpha, top_n, temperature):
    sampler = TopH(alpha, rule=rule, top_n=top_n, temperature=temperature)
    rows = ambiguous_rows = 0
    seed = int(alpha * 100) + (0 if top_n is None else top_n) + (7 if rule == "bound" else 0)
    for logits in random_cases(seed):
        ours = kept(sampler, logits)
        for b in range(logits.shape[0]):
            want, ambiguous = naive_top_h(logits[b].numpy(), alpha, rule, top_n, temperature)
            rows += 1
            if ambiguous:
                ambiguous_rows += 1
                continue
            assert ours[b].numpy().tolist() == want.tolist(), (rule, b, logits.shape)
    assert ambiguous_rows <= rows // 10


def hf_mask(alpha, logits):
    from transformers import TopHLogitsWarper

    return TopHLogitsWarper(top_h=alpha)(None, logits).isfinite()


@pytest.mark.parametrize("alpha", [0.1, 0.4, 0.7])
def test_same_as_transformers_when_top100_mass_is_one(alpha):
    logits = torch.randn(16, 500, generator=torch.Generator().manual_seed(1)) * 5
    mass = logits.softmax(-1).topk(100).values.sum(-1)
    assert (mass > 0.99).all()
    assert torch.equal(kept(TopH(alpha), logits), hf_mask(alpha, logits))


def test_differs_from_transformers_when_top100_mass_is_small():
    # A few likely tokens over a flat 5000-token tail: the top 100 hold ~12% of the mass.
    # transformers renormalises the top 100 before computing tau and the cumulative
    # -p log p; the reference code (and rule="reference") uses the full softmax.
    # Renormalising turns each term p·(-log p) into (p/m)·(-log p - log(1/m)): the shift
    # log(1/m) weighs most on the likeliest tokens (smallest -log p), so their share of tau
    # shrinks and transformers keeps more tokens. (On plain flat random logits the gap is
    # only ~1 token; on peaked ones, mass ~1, it vanishes.)
    logits = torch.randn(8, 5000, generator=torch.Generator().manual_seed(2)) * 0.5
    logits[:, :10] += 3 + torch.linspace(0, 1, 10)
    mass = logits.softmax(-1).topk(100).values.sum(-1)
    assert (mass < 0.2).all()
    ours, theirs = kept(TopH(0.4), logits), hf_mask(0.4, logits)
    assert not (ours & ~theirs).any()  # both are prefixes of the same ranking
    assert (theirs.sum(-1) > ours.sum(-1)).all()
    print("\n5000-vocab, top-100 mass ~0.12, alpha=0.4: reference keeps", ours.sum(-1).tolist(),
          "transformers keeps", theirs.sum(-1).tolist())
    # The whole difference is the renormalisation: restrict the softmax to the top 100
    # (everything else -inf) and the reference rule gives transformers' mask.
    top100 = torch.full_like(logits, float("-inf")).scatter(
        -1, logits.topk(100).indices, logits.topk(100).values)
    assert torch.equal(kept(TopH(0.4), top100), theirs)


def entropy_of_prefixes(p_sorted):
    mass = np.cumsum(p_sorted)
    safe = np.where(p_sorted > 0, p_sorted, 1.0)
    acc = np.cumsum(np.where(p_sorted > 0, -p_sorted * np.log(safe), 0.0))
    return np.log(mass) + acc / mass


@pytest.mark.parametrize("top_n", [100, None])
def test_bound_rule_satisfies_bound_and_is_maximal(top_n):
    gen = torch.Generator().manual_seed(3)
    for scale in (0.5, 1.0, 2.0, 4.0):
        logits = torch.randn(8, 300, generator=gen) * scale
        for alpha in (0.2, 0.5, 0.9):
            got = kept(TopH(alpha, rule="bound", top_n=top_n), logits)
            for b in range(logits.shape[0]):
                p = torch.softmax(logits[b].double(), -1).numpy()
                p_sorted = np.sort(p)[::-1]
                h_prefix = entropy_of_prefixes(p_sorted)
                bound = alpha * float(-(p * np.log(p)).sum())
                k = int(got[b].sum())
                n = len(p) if top_n is None else top_n
                assert h_prefix[k - 1] <= bound + TOL or k == 1
                if k < n:
                    assert h_prefix[k] > bound - TOL  # the next token breaks the bound
                # H(q_k) never decreases along the descending order: longest prefix
                # and "stop at the first violation" are the same set.
                assert (np.diff(h_prefix) >= -1e-12).all()


@pytest.mark.parametrize("rule", ["reference", "bound"])
def test_kept_set_grows_with_alpha(rule):
    logits = torch.randn(16, 1000, generator=torch.Generator().manual_seed(4)) * 2
    previous = None
    for alpha in (0.05, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0):
        current = kept(TopH(alpha, rule=rule), logits)
        if previous is not None:
            assert not (previous & ~current).any()
        previous = current
    # alpha=1 keeps the whole top n: for "reference" by construction, for "bound" because
    # H(q_k) grows with k up to H(q_V) = H(p).
    assert (previous.sum(-1) == 100).all()


def test_min_tokens_to_keep():
    logits = torch.randn(4, 200, generator=torch.Generator().manual_seed(5)) * 5
    assert (kept(TopH(0.05), logits).sum(-1) < 7).all()
    got = kept(TopH(0.05, min_tokens_to_keep=7), logits)
    assert (got.sum(-1) == 7).all()
    assert got.gather(-1, logits.topk(7).indices).all()
    assert kept(TopH(0.05, min_tokens_to_keep=500), logits).all()  # capped at V


@pytest.mark.parametrize("rule", ["reference", "bound"])
def test_underflow_and_overflow(rule):
    # One token takes all the mass, the others underflow to p = 0: the rule keeps it alone
    # (a p = 0 token is never kept by the rule), whether or not a fully masked row sends the
    # batch through the generic path.
    logits = torch.randn(2, 64, generator=torch.Generator().manual_seed(6))
    logits[0, 5] = 1e4
    logits[1] = float("-inf")
    for batch in (logits[:1], logits):
        out = TopH(0.4, rule=rule)(batch)
        assert out[0].isfinite().sum() == 1 and out[0, 5] == 1e4
    # tiny temperature: logits / T overflow float32, still no NaN, the top token kept
    hot = TopH(0.4, rule=rule, temperature=1e-38)(torch.tensor([[3e38, 1.0, -2.0]]))
    assert hot.isfinite().tolist() == [[True, False, False]]


@pytest.mark.parametrize("rule", ["reference", "bound"])
def test_top_n_at_least_vocab_and_none(rule):
    logits = torch.randn(3, 30, generator=torch.Generator().manual_seed(7))
    for alpha in (0.3, 0.9):
        full = kept(TopH(alpha, rule=rule, top_n=None), logits)
        assert torch.equal(kept(TopH(alpha, rule=rule, top_n=30), logits), full)
        assert torch.equal(kept(TopH(alpha, rule=rule, top_n=10_000), logits), full)
    assert (kept(TopH(1.0, rule=rule, top_n=5), logits).sum(-1) <= 5).all()
    assert (kept(TopH(0.5, rule=rule), torch.tensor([[0.7]])) == torch.tensor([[True]])).all()


@pytest.mark.parametrize(("kwargs", "shown"), [
    ({"alpha": 0.0}, "alpha=0.0"), ({"alpha": 1.5}, "alpha=1.5"), ({"alpha": -0.1}, "alpha=-0.1"),
    ({"alpha": float("nan")}, "alpha=nan"), ({"alpha": True}, "alpha=True"),
    ({"alpha": "0.4"}, "alpha='0.4'"), ({"alpha": [0.4, 2.0]}, "alpha[1]=2.0"),
    ({"alpha": []}, "alpha=[]"), ({"alpha": torch.ones(2, 2) * 0.5}, "alpha has shape (2, 2)"),
    ({"rule": "paper"}, "rule='paper'"), ({"rule": None}, "rule=None"),
    ({"top_n": 0}, "top_n=0"), ({"top_n": 2.5}, "top_n=2.5"), ({"top_n": True}, "top_n=True"),
    ({"temperature": 0.0}, "temperature=0.0"), ({"temperature": -1}, "temperature=-1"),
    ({"temperature": math.inf}, "temperature=inf"),
    ({"min_tokens_to_keep": 0}, "min_tokens_to_keep=0"),
])
def test_bad_arguments_raise_naming_the_value(kwargs, shown):
    with pytest.raises(TokenwiseError) as err:
        TopH(**kwargs)
    assert shown in str(err.value)
    assert "allowed" in str(err.value)


def test_params_repr_and_name():
    sampler = TopH(0.3, rule="bound", top_n=None, temperature=0.8, min_tokens_to_keep=2)
    assert TopH.name == "top_h"
    assert sampler.params() == {"alpha": 0.3, "rule": "bound", "top_n": None,
                                "temperature": 0.8, "min_tokens_to_keep": 2}
    assert TopH([0.2, 0.5]).params()["alpha"] == (0.2, 0.5)
    assert repr(sampler).startswith("TopH(alpha=0.3, rule='bound'")


def test_as_hf_processor():
    from transformers import LogitsProcessorList

    logits = torch.randn(2, 120, generator=torch.Generator().manual_seed(10))
    sampler = TopH(0.4, rule="bound", min_tokens_to_keep=3)
    processor = sampler.as_hf()
    input_ids = torch.zeros(2, 4, dtype=torch.long)
    assert torch.equal(processor(input_ids, logits), sampler(logits))
    assert torch.equal(LogitsProcessorList([processor])(input_ids, logits), sampler(logits))
    assert "TopH" in repr(processor)


@pytest.mark.parametrize("rule", ["reference", "bound"])
def test_kept_set_grows_with_top_n(rule):
    """``top_n`` caps the candidates and (reference rule) the sum tau is taken over: a larger
    ``top_n`` keeps a superset. The bound rule's ``H(p)`` does not depend on ``top_n``, so there
    the cap only truncates: ``top_n=n`` keeps the first ``min(n, K)`` of the ``K`` tokens that
    ``top_n=None`` keeps. (Kept-set sizes are measured by ``benchmarks/sampler_cost.py``.)"""
    gen = torch.Generator().manual_seed(11)
    scales = torch.tensor([0.5, 1.0, 2.0, 3.0] * 6)[:, None]
    logits = torch.randn(24, 3000, generator=gen) * scales
    for alpha in (0.2, 0.4, 0.8):
        sizes = [1, 10, 100, 1000, None]
        masks = [kept(TopH(alpha, rule=rule, top_n=n), logits) for n in sizes]
        for smaller, larger in itertools.pairwise(masks):
            assert not (smaller & ~larger).any()
        whole = masks[-1].sum(-1)
        if rule == "bound":
            for n, mask in zip(sizes[:-1], masks[:-1], strict=True):
                assert torch.equal(mask.sum(-1), whole.clamp(max=n)), (alpha, n)


def test_a_tied_row_does_not_depend_on_the_rest_of_the_batch():
    flat = torch.zeros(1, 7)  # alpha 0.25: the rule keeps one of seven equal tokens
    alone = kept(TopH(0.25), flat)
    assert alone.sum() == 1
    beside_a_masked_row = kept(TopH(0.25), torch.cat([flat, torch.full((1, 7), -math.inf)]))
    assert beside_a_masked_row[0].sum() == 1


@pytest.mark.parametrize("rule", ["reference", "bound"])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("min_keep", [1, 4, 150])
def test_fast_path_equals_the_generic_path(rule, temperature, min_keep):
    from tokenwise.sampling.base import Sampler

    gen = torch.Generator().manual_seed(min_keep)
    for scale, masked in ((1.0, 0.0), (3.0, 0.3), (8.0, 0.9)):
        logits = torch.randn(5, 700, generator=gen) * scale
        logits = logits.masked_fill(torch.rand(5, 700, generator=gen) < masked, float("-inf"))
        logits[:, 3] = 0.0  # a finite token in every row
        sampler = TopH(0.4, rule=rule, temperature=temperature, min_tokens_to_keep=min_keep)
        fast = sampler(logits)
        generic = Sampler.__call__(sampler, logits)
        assert torch.equal(fast.isneginf(), generic.isneginf())
        assert torch.equal(fast[~fast.isneginf()], logits[~fast.isneginf()])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("rule", ["reference", "bound"])
def test_on_cuda_equals_cpu(rule):
    """Same kept set on the GPU as on the CPU (batched, per-row alpha, masked tokens, bf16),
    and the GPU's fast path still refuses NaN and hands fully masked rows back unchanged."""
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(8, 32000, generator=gen) * torch.tensor([1.0, 2.0, 3.0, 5.0] * 2)[:, None]
    logits = logits.masked_fill(torch.rand(8, 32000, generator=gen) < 0.2, float("-inf"))
    alphas = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0]
    for dtype in (torch.float32, torch.bfloat16):
        x = logits.to(dtype)
        for sampler in (TopH(0.4, rule=rule), TopH(alphas, rule=rule, min_tokens_to_keep=3),
                        TopH(0.4, rule=rule, temperature=0.7, top_n=None)):
            cpu = sampler(x)
            gpu = sampler(x.cuda())
            assert gpu.dtype == dtype and gpu.device.type == "cuda"
            gpu = gpu.cpu()
            if dtype == torch.float32:  # no ties: the same tokens, up to rounding at a bound
                differ = (cpu.isneginf() != gpu.isneginf()).sum().item()
                assert differ <= 2, f"{differ} decisions differ between CPU and GPU ({sampler})"
            else:
                # bf16 has many tied logits, which topk orders differently on each device:
                # the kept *values* agree row by row (same count, same multiset)
                for row_cpu, row_gpu in zip(cpu, gpu, strict=True):
                    kept_cpu = row_cpu[row_cpu.isfinite()].float().sort().values
                    kept_gpu = row_gpu[row_gpu.isfinite()].float().sort().values
                    assert abs(len(kept_cpu) - len(kept_gpu)) <= 1, (sampler, dtype)
                    if len(kept_cpu) == len(kept_gpu):
                        assert torch.equal(kept_cpu, kept_gpu), (sampler, dtype)
    dead = torch.full((2, 50), float("-inf"), device="cuda")
    dead[1, :5] = torch.arange(5.0)
    out = TopH(0.4, rule=rule)(dead)
    assert out[0].isneginf().all() and out[1, 4].isfinite()
    with pytest.raises(TokenwiseError, match="NaN"):
        TopH(0.4, rule=rule)(torch.tensor([[0.0, float("nan")]], device="cuda"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradient_flows_to_kept_logits(dtype):
    """Logits that carry a gradient: the kept ones get d(out)/d(in) = 1, dropped ones 0."""
    x = (torch.randn(3, 40, generator=torch.Generator().manual_seed(0)) * 2).to(dtype)
    x.requires_grad_()
    out = TopH(0.4)(x)
    kept = out.isfinite()
    out[kept].sum().backward()
    assert torch.equal(x.grad, kept.to(dtype))

"""EMO loss: against a naive per-token sum and against the reference repository's formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenwise.errors import TokenwiseError
from tokenwise.training.emo import emo_distance, emo_loss, frozen_embedding


def naive_emo(logits: torch.Tensor, targets: torch.Tensor, embedding: torch.Tensor) -> list[float]:
    """Σ_i q_i (1 - cos(e_i, e_y)) token by token, cost of every vocabulary entry spelled out."""
    out = []
    for row, y in zip(logits.double(), targets.tolist(), strict=True):
        q = torch.softmax(row, -1)
        total = 0.0
        for i in range(row.shape[0]):
            cos = F.cosine_similarity(embedding[i].double(), embedding[y].double(), dim=0)
            total += float(q[i]) * (1.0 - float(cos))
        out.append(total)
    return out


def reference_formula(logits, labels, cost_embedding):
    """The DRSY/EMO recipe (one-hot target repr., normalised embedding, masked mean), fp64."""
    vocab = logits.shape[-1]
    mask = (labels != -100).double()
    mle = F.cross_entropy(logits, labels, reduction="none", ignore_index=-100)
    tmp = labels.clone()
    tmp[tmp == -100] = 0
    one_hot = F.one_hot(tmp, num_classes=vocab).double()
    stable = (one_hot + 1e-15) / torch.linalg.vector_norm(one_hot + 1e-15, ord=1, dim=-1,
                                                          keepdim=True)
    emb = cost_embedding / torch.linalg.vector_norm(cost_embedding, ord=2, dim=1, keepdim=True)
    p_repr = stable @ emb
    q_repr = torch.log_softmax(logits, dim=-1).exp() @ emb
    emo = 1 - torch.sum(p_repr * q_repr, dim=-1)
    loss = ((mle / (emo + 1e-10)).detach() * emo + mle) * 0.5
    return (loss * mask).sum() / (1e-15 + mask.sum())


@pytest.fixture
def case():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(7, 37, generator=gen, dtype=torch.float64) * 2
    targets = torch.randint(0, 37, (7,), generator=gen)
    targets[[1, 5]] = -100
    embedding = torch.randn(37, 11, generator=gen, dtype=torch.float64)
    return logits, targets, embedding


def test_distance_matches_naive_sum(case):
    logits, targets, embedding = case
    valid = targets != -100
    ours = emo_distance(logits, targets, embedding)
    expected = naive_emo(logits[valid], targets[valid], embedding)
    torch.testing.assert_close(ours[valid], torch.tensor(expected, dtype=torch.float64))
    assert ours[~valid].eq(0).all()
    pure = emo_loss(logits, targets, embedding, reduction="none", mix_mle=False)
    torch.testing.assert_close(pure, ours)


def test_mixed_loss_value_and_gradient_match_reference(case):
    logits, targets, embedding = case
    ours_in = logits.clone().requires_grad_(True)
    ref_in = logits.clone().requires_grad_(True)
    ours = emo_loss(ours_in, targets, embedding)
    ref = reference_formula(ref_in, targets, embedding)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(ours_in.grad, ref_in.grad, rtol=1e-9, atol=1e-12)


def test_gradient_is_half_mle_plus_scaled_emo(case):
    logits, targets, embedding = case
    x = logits.clone().requires_grad_(True)
    emo_loss(x, targets, embedding, reduction="sum").backward()
    valid = targets != -100
    y = logits.clone().requires_grad_(True)
    mle = F.cross_entropy(y, targets, reduction="none")
    emo = emo_distance(y, targets, embedding)
    ratio = (mle / emo).detach()
    (0.5 * (mle + ratio * emo))[valid].sum().backward()
    torch.testing.assert_close(x.grad, y.grad)


def test_reductions_and_embedding_gets_no_gradient(case):
    logits, targets, embedding = case
    embedding = embedding.clone().requires_grad_(True)
    per = emo_loss(logits, targets, embedding, reduction="none")
    assert per.shape == targets.shape and per[targets == -100].eq(0).all()
    torch.testing.assert_close(emo_loss(logits, targets, embedding, reduction="sum"), per.sum())
    mean = emo_loss(logits.requires_grad_(True), targets, embedding)
    torch.testing.assert_close(mean, per.sum() / (targets != -100).sum())
    mean.backward()
    assert embedding.grad is None


def test_all_ignored_mean_is_zero_and_differentiable():
    logits = torch.randn(3, 5, requires_grad=True)
    loss = emo_loss(logits, torch.full((3,), -100), torch.randn(5, 4))
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and logits.grad.eq(0).all()


def test_batched_shape_and_half_precision_computed_in_float32():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 19, generator=gen)
    targets = torch.randint(0, 19, (2, 3), generator=gen)
    embedding = torch.randn(19, 6, generator=gen)
    flat = emo_loss(logits.reshape(6, 19), targets.reshape(6), embedding, reduction="none")
    torch.testing.assert_close(emo_loss(logits, targets, embedding, reduction="none"),
                               flat.reshape(2, 3))
    half = emo_loss(logits.bfloat16(), targets, embedding)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, emo_loss(logits.bfloat16().float(), targets, embedding))


def test_never_builds_a_vocab_by_vocab_matrix():
    # A (V, V) float32 cost matrix here would need 160 GB; the q @ Ê form needs a few MB.
    vocab = 200_000
    gen = torch.Generator().manual_seed(1)
    embedding = torch.randn(vocab, 4, generator=gen)
    logits = torch.randn(2, vocab, generator=gen)
    targets = torch.tensor([0, vocab - 1])
    assert torch.isfinite(emo_loss(logits, targets, embedding))


@settings(max_examples=30, deadline=None)
@given(vocab=st.integers(2, 12), n=st.integers(1, 5), scale=st.floats(0.1, 20.0),
       seed=st.integers(0, 1000))
def test_distance_bounds(vocab, n, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, vocab, generator=gen) * scale
    targets = torch.randint(0, vocab, (n,), generator=gen)
    d = emo_distance(logits, targets, torch.randn(vocab, 3, generator=gen))
    assert torch.all(d >= -1e-5) and torch.all(d <= 2 + 1e-5)
    # all tokens at the same point: moving mass costs nothing
    same = emo_distance(logits, targets, torch.ones(vocab, 3))
    torch.testing.assert_close(same, torch.zeros(n), atol=1e-5, rtol=0)


def test_confident_correct_prediction_costs_nothing():
    logits = torch.full((1, 6), -50.0)
    logits[0, 4] = 50.0
    assert emo_distance(logits, torch.tensor([4]), torch.randn(6, 5)).abs().item() < 1e-6


def test_frozen_embedding_is_a_detached_copy(small):
    head = small.hf_model.get_output_embeddings().weight
    frozen = frozen_embedding(small.hf_model)
    assert torch.equal(frozen, head.detach().float())
    assert not frozen.requires_grad and frozen.data_ptr() != head.data_ptr()
    with pytest.raises(TokenwiseError, match="no output embedding"):
        frozen_embedding(torch.nn.Linear(2, 2))


@pytest.mark.parametrize(
    ("logits", "targets", "embedding", "kwargs", "match"),
    [
        (torch.randn(3, 5), torch.tensor([0, 1]), torch.randn(5, 2), {}, "disagree"),
        (torch.randn(3, 5), torch.tensor([0, 1, 5]), torch.randn(5, 2), {}, "out of range"),
        (torch.randn(3, 5), torch.tensor([0, -3, 1]), torch.randn(5, 2), {}, "target -3"),
        (torch.randn(3, 5), torch.tensor([0.0, 1.0, 2.0]), torch.randn(5, 2), {}, "integer"),
        (torch.ones(3, 5, dtype=torch.long), torch.tensor([0, 1, 2]), torch.randn(5, 2), {},
         "float tensor"),
        (torch.randn(3, 5), torch.tensor([0, 1, 2]), torch.randn(4, 2), {}, r"\(V, D\)"),
        (torch.randn(3, 5), torch.tensor([0, 1, 2]), torch.randn(5, 2),
         {"reduction": "avg"}, "reduction='avg'"),
    ],
)
def test_bad_input(logits, targets, embedding, kwargs, match):
    with pytest.raises(TokenwiseError, match=match):
        emo_loss(logits, targets, embedding, **kwargs)

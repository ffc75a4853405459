"""ssToken selection: against a per-sequence loop written from the reference's procedure."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from tokenwise.errors import TokenwiseError
from tokenwise.training.sstoken import select_tokens, sstoken_mask, token_losses


def naive_select(labels, cur, hist, attn, rho, gamma):
    """One unpadded sequence, prompt first: the reference's steps, one by one."""
    seq_len = labels.shape[0]
    prompt_len = int((labels == -100).sum())
    resp = list(range(max(prompt_len, 1), seq_len))
    if not resp:
        return set()
    diff = [float(hist[i] - cur[i]) for i in resp]
    lo, hi = min(diff), max(diff)
    norm = [(d - lo) / (hi - lo) if hi > lo else 0.0 for d in diff]
    to_prompt = [float(attn[i, :prompt_len].sum()) for i in resp]
    score = [gamma * a + (1 - gamma) * b for a, b in zip(norm, to_prompt, strict=True)]
    k = math.ceil(round(rho * len(resp), 9))
    best = sorted(range(len(resp)), key=lambda j: -score[j])[:k]
    return {resp[j] for j in best}


def random_case(gen, batch=3, length=12, heads=2):
    labels = torch.randint(3, 50, (batch, length), generator=gen)
    prompt_lens = torch.randint(1, length - 2, (batch,), generator=gen)
    for b, p in enumerate(prompt_lens.tolist()):
        labels[b, :p] = -100
    cur = torch.rand(batch, length, generator=gen) * 3
    hist = torch.rand(batch, length, generator=gen) * 3
    raw = torch.rand(batch, heads, length, length, generator=gen).tril()
    attn = raw / raw.sum(-1, keepdim=True)
    return labels, cur, hist, attn


@pytest.mark.parametrize(("rho", "gamma"), [(0.6, 0.5), (0.3, 0.0), (1.0, 1.0), (0.5, 0.8)])
def test_matches_per_sequence_reference_procedure(rho, gamma):
    gen = torch.Generator().manual_seed(int(rho * 10 + gamma * 100))
    for _ in range(5):
        labels, cur, hist, attn = random_case(gen)
        keep = sstoken_mask(labels, cur, hist, attn, rho=rho, gamma=gamma)
        mean_attn = attn.mean(1)
        for b in range(labels.shape[0]):
            expected = naive_select(labels[b], cur[b], hist[b], mean_attn[b], rho, gamma)
            assert set(torch.nonzero(keep[b]).flatten().tolist()) == expected


def test_token_losses_align_with_labels():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=gen)
    labels = torch.tensor([[1, 2, 3, -100, 4], [-100, -100, 6, 0, 1]])
    out = token_losses(logits, labels)
    assert out[:, 0].eq(0).all() and out[0, 3] == 0 and out[1, 1] == 0
    for b, i in [(0, 1), (0, 4), (1, 2), (1, 4)]:
        expected = F.cross_entropy(logits[b, i - 1][None], labels[b, i][None])
        torch.testing.assert_close(out[b, i], expected)


def test_loss_direction_history_minus_current():
    labels = torch.tensor([[-100, -100, 5, 6, 7, 8]])
    cur = torch.tensor([[0, 0, 2.0, 0.5, 1.0, 3.0]])
    hist = torch.tensor([[0, 0, 2.0, 3.0, 1.5, 3.0]])  # REL = 0, 2.5, 0.5, 0
    attn = torch.full((1, 6, 6), 1 / 6)
    keep = sstoken_mask(labels, cur, hist, attn, rho=0.25, gamma=1.0)
    assert keep[0].nonzero().flatten().tolist() == [3]


def test_attention_term_is_mass_on_the_prompt():
    labels = torch.tensor([[-100, -100, 5, 6, 7]])
    attn = torch.zeros(1, 5, 5)
    attn[0, 2] = torch.tensor([0.1, 0.1, 0.8, 0, 0])  # 0.2 on the prompt
    attn[0, 3] = torch.tensor([0.4, 0.5, 0.05, 0.05, 0])  # 0.9
    attn[0, 4] = torch.tensor([0.3, 0.0, 0.2, 0.2, 0.3])  # 0.3
    zeros = torch.zeros(1, 5)
    keep = sstoken_mask(labels, zeros, zeros, attn, rho=0.6, gamma=0.0)
    assert keep[0].nonzero().flatten().tolist() == [3, 4]


def test_padding_rows_equal_unpadded_rows():
    gen = torch.Generator().manual_seed(5)
    labels, cur, hist, attn = random_case(gen, batch=1, length=9)
    padded = torch.full((2, 12), -100)
    padded[0, :9], padded[1, :9] = labels[0], labels[0]
    mask = torch.zeros(2, 12, dtype=torch.long)
    mask[:, :9] = 1
    padded[1, 9:] = 7  # labelled padding must still not count as response
    big_attn = torch.zeros(2, 2, 12, 12)
    big_attn[:, :, :9, :9] = attn[0]
    pc, ph = torch.zeros(2, 12), torch.zeros(2, 12)
    pc[:, :9], ph[:, :9] = cur[0], hist[0]
    pc[:, 9:], ph[:, 9:] = -50.0, 50.0  # garbage on padding must not move the normalisation
    keep = sstoken_mask(padded, pc, ph, big_attn, attention_mask=mask)
    alone = sstoken_mask(labels, cur, hist, attn)
    assert torch.equal(keep[0, :9], alone[0]) and torch.equal(keep[1, :9], alone[0])
    assert not keep[:, 9:].any()


def test_keep_count_is_exact_ceil():
    labels = torch.tensor([[-100] + [4] * 10])
    n = 10
    for rho, k in [(0.7, 7), (0.6, 6), (0.05, 1), (0.11, 2), (1.0, 10)]:
        keep = sstoken_mask(labels, torch.rand(1, n + 1), torch.rand(1, n + 1),
                            torch.full((1, n + 1, n + 1), 0.1), rho=rho)
        assert int(keep.sum()) == k, rho


def test_no_response_tokens_keeps_nothing():
    labels = torch.full((2, 4), -100)
    z = torch.zeros(2, 4)
    assert not sstoken_mask(labels, z, z, torch.zeros(2, 4, 4)).any()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"rho": 0.0}, "rho=0.0"), ({"rho": 1.5}, "rho=1.5"), ({"gamma": -0.1}, "gamma=-0.1"),
     ({"rho": float("nan")}, "rho=nan")],
)
def test_bad_parameters(kwargs, match):
    z = torch.zeros(1, 3)
    with pytest.raises(TokenwiseError, match=match):
        sstoken_mask(torch.tensor([[-100, 1, 2]]), z, z, torch.zeros(1, 3, 3), **kwargs)


def test_bad_shapes():
    z = torch.zeros(1, 3)
    labels = torch.tensor([[-100, 1, 2]])
    with pytest.raises(TokenwiseError, match="current_loss"):
        sstoken_mask(labels, torch.zeros(1, 4), z, torch.zeros(1, 3, 3))
    with pytest.raises(TokenwiseError, match="attention must be"):
        sstoken_mask(labels, z, z, torch.zeros(1, 3, 4))
    with pytest.raises(TokenwiseError, match="out of range"):
        token_losses(torch.zeros(1, 3, 5), torch.tensor([[0, 9, 1]]))


def test_select_tokens_on_a_real_model(small):
    lm = small
    history = copy.deepcopy(lm.hf_model)
    with torch.no_grad():  # a different history model, so REL is not flat
        for p in history.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    prompts = ["Q: Where was Trather Shai born?\nA:", "Q: What is the job of Duzal?\nA:"]
    answers = [" the city of Duzal", " a doctor"]
    rows = [(lm.encode(p, add_bos=True), lm.encode(a)) for p, a in zip(prompts, answers,
                                                                       strict=True)]
    length = max(len(p) + len(a) for p, a in rows)
    ids = torch.zeros(2, length, dtype=torch.long)
    labels = torch.full((2, length), -100)
    mask = torch.zeros(2, length, dtype=torch.long)
    for b, (p, a) in enumerate(rows):
        ids[b, : len(p) + len(a)] = torch.tensor(p + a)
        labels[b, len(p) : len(p) + len(a)] = torch.tensor(a)
        mask[b, : len(p) + len(a)] = 1
    before = lm.hf_model.config._attn_implementation
    new = select_tokens(lm, history, ids, labels, mask, rho=0.5, gamma=0.5)
    assert lm.hf_model.config._attn_implementation == before  # switched back after the pass

    lm.hf_model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = lm.hf_model(input_ids=ids, attention_mask=mask, output_attentions=True)
    finally:
        lm.hf_model.set_attn_implementation(before)
    with torch.no_grad():
        hist_logits = history(input_ids=ids, attention_mask=mask).logits
    keep = sstoken_mask(labels, token_losses(out.logits, labels),
                        token_losses(hist_logits, labels), out.attentions[-1],
                        rho=0.5, gamma=0.5, attention_mask=mask)
    assert torch.equal(new, labels.masked_fill((labels != -100) & ~keep, -100))
    for b, (_, a) in enumerate(rows):
        assert int((new[b] != -100).sum()) == math.ceil(0.5 * len(a))
    assert torch.equal(new[new != -100], labels[new != -100])

"""Information surplus: the tree rollout against brute force, the probe against closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokenwise.analysis.surplus import (
    TwoStepData,
    information_surplus,
    two_step_data,
    two_step_rollout,
)
from tokenwise.errors import TokenwiseError


def test_tree_rollout_equals_one_forward_per_candidate(small):
    ids = small.encode("markov: ka lo mi nu pe", add_bos=True)
    k = 3
    logq, cover, hidden = two_step_rollout(small, ids, top_k=k)
    for t in range(len(ids)):
        x = torch.tensor([ids[:t + 1]])
        logp1 = torch.log_softmax(small.forward(x).logits[0, -1].float(), -1)
        top = logp1.topk(k)
        mix = torch.zeros_like(logp1)
        for lp, v in zip(top.values, top.indices, strict=True):
            x2 = torch.tensor([[*ids[:t + 1], int(v)]])
            mix += lp.exp() * torch.softmax(small.forward(x2).logits[0, -1].float(), -1)
        mix /= top.values.exp().sum()
        torch.testing.assert_close(logq[t].exp(), mix, atol=2e-5, rtol=1e-4)
        assert cover[t].item() == pytest.approx(top.values.exp().sum().item(), abs=1e-5)
    assert hidden.shape == (len(ids), small.config.hidden_size)


def test_two_step_data_lines_targets_up_two_tokens_after_their_hidden_state(small):
    text = "markov: ka lo mi nu pe ro si tu va"
    data = two_step_data(small, [text, text], top_k=2, chunk=64, min_count=2)
    ids = small.encode(text)
    np.testing.assert_array_equal(data.targets, ids[2:] * 2)
    np.testing.assert_array_equal(data.groups, [0] * (len(ids) - 2) + [1] * (len(ids) - 2))
    h = small.hidden_states([1, *ids])  # start id, then the text
    np.testing.assert_allclose(data.hidden[:len(ids) - 2], h[1:len(ids) - 1].numpy(), atol=1e-4)
    # every target appears twice, so each is a class; the last column is log q(target)
    assert list(data.classes) == sorted(set(ids[2:]))
    col = {int(t): i for i, t in enumerate(data.classes)}
    np.testing.assert_allclose(data.rollout_logq[np.arange(len(data)), [col[int(t)] for t in
                               data.targets]], data.rollout_logq[:, -1])


def _synthetic(n: int, k: int, informative: bool, seed: int = 0) -> TwoStepData:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    noise = rng.normal(size=(n, 4))
    hidden = noise + (np.eye(k)[y] @ rng.normal(size=(k, 4)) * 4 if informative else 0)
    logq = np.full((n, k + 1), np.log(1 / k))  # the rollout: uniform over k tokens
    return TwoStepData(hidden=hidden, targets=y, groups=np.arange(n) // 8,
                       classes=np.arange(k), rollout_logq=logq, coverage=np.ones(n))


def test_noise_hidden_states_carry_no_surplus_and_the_interval_covers_zero():
    s = information_surplus(_synthetic(800, 5, informative=False), bootstrap=300)
    assert s.ci_low <= 0.0 <= s.ci_high
    assert abs(s.surplus) < 0.05
    assert s.ce_rollout == pytest.approx(np.log(5))


def test_hidden_states_that_name_the_target_recover_its_whole_entropy():
    s = information_surplus(_synthetic(800, 5, informative=True), bootstrap=300)
    # the rollout pays log 5 nats per token; a probe that reads the target pays almost none
    assert s.surplus > 0.9 * np.log(5)
    assert s.ci_low > 0.5
    assert s.ce_probe == pytest.approx(s.ce_rollout - s.surplus)


def test_bad_folds_name_the_allowed_range():
    with pytest.raises(TokenwiseError, match=r"folds=1: allowed 2\.\.100"):
        information_surplus(_synthetic(800, 5, informative=False), folds=1)

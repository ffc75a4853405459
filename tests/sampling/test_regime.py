"""The entropy/varentropy regime sampler: regimes per row, the action of each, fresh draws."""

from __future__ import annotations

import pytest
import torch

import tokenwise as tw
from tokenwise.errors import TokenwiseError
from tokenwise.sampling import EntropyRegime

SHARP = [9.0] + [0.0] * 99  # confident: low entropy, low varentropy
FLAT = [0.0] * 100  # exploring: high entropy, zero varentropy
ONE_OF_A_CROWD = [6.0] + [0.0] * 99  # entropy 1.4, varentropy 5.7: one candidate, long tail


def _lost_row() -> list[float]:
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(100, generator=gen) * 1.5).tolist()  # entropy 2.9, varentropy 3.4


def test_each_row_gets_its_own_regime():
    s = EntropyRegime(h_low=0.5, h_high=2.5, v_low=1.0, v_high=4.0)
    logits = torch.tensor([SHARP, FLAT, ONE_OF_A_CROWD])
    h = tw.signals.entropy(logits)
    v = tw.signals.varentropy(logits)
    assert s.regimes(logits) == ["confident", "exploring", "branching"], (h, v)
    out = s(logits)
    kept = (~out.isneginf()).sum(-1).tolist()
    assert kept == [1, 40, 5]
    torch.testing.assert_close(out[1][~out[1].isneginf()], torch.zeros(40))  # flat / 1.3
    # A batch does not average decisions: each row alone gives the same result.
    assert [s.regimes(logits[i : i + 1])[0] for i in range(3)] == s.regimes(logits)


def test_lost_regime_flattens_and_cuts_by_min_p():
    s = EntropyRegime(h_low=0.5, h_high=2.0, v_low=0.5, v_high=3.0, lost_temperature=1.5,
                      lost_min_p=0.05)
    row = torch.tensor([_lost_row()])
    assert s.regimes(row) == ["lost"]
    out = s(row)
    probs = row.softmax(-1)
    expected_kept = probs >= 0.05 * probs.max()
    assert torch.equal(~out.isneginf(), expected_kept)
    torch.testing.assert_close(out[expected_kept], row[expected_kept] / 1.5)


def test_sampling_draws_fresh_randomness_each_step(large):
    gens = tw.generate(large, ["markov: ka ro"] * 3, EntropyRegime(), max_new_tokens=20,
                       seed=[1, 2, 3])
    assert len({g.text for g in gens}) > 1  # different seeds, different text
    again = tw.generate(large, "markov: ka ro", EntropyRegime(), max_new_tokens=20, seed=2)
    assert again.text == gens[1].text


def test_bad_thresholds():
    with pytest.raises(TokenwiseError, match=r"h_high=0\.1"):
        EntropyRegime(h_low=0.5, h_high=0.1)
    with pytest.raises(TokenwiseError, match="branch_k=0"):
        EntropyRegime(branch_k=0)

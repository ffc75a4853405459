"""tokenwise.signals.attention_entropy: closed forms, masking, bad input."""

import math

import pytest
import torch

from tokenwise.errors import TokenwiseError
from tokenwise.signals import attention_entropy


def _causal_uniform(t: int) -> torch.Tensor:
    w = torch.tril(torch.ones(t, t))
    return (w / w.sum(-1, keepdim=True))[None, None]  # (1, 1, T, T)


def test_uniform_causal_rows_have_log_of_keys_seen():
    h = attention_entropy(_causal_uniform(6))
    expected = torch.tensor([math.log(k) for k in range(1, 7)])
    assert torch.allclose(h[0, 0], expected, atol=1e-6)


def test_masked_keys_contribute_zero_not_nan():
    w = torch.tensor([[[[0.5, 0.0, 0.5]]]])
    h = attention_entropy(w)
    assert torch.isfinite(h).all() and h.item() == pytest.approx(math.log(2))


def test_from_logits_with_minus_inf_matches_probabilities():
    scores = torch.randn(2, 3, 5, 5)
    scores = scores.masked_fill(~torch.ones(5, 5, dtype=torch.bool).tril(), float("-inf"))
    probs = torch.softmax(scores, -1)
    assert torch.allclose(attention_entropy(scores, from_logits=True), attention_entropy(probs),
                          atol=1e-5)


def test_padding_mask_zeroes_padded_keys_and_query_rows():
    probs = torch.full((1, 1, 3, 3), 1 / 3)
    mask = torch.tensor([[0, 1, 1]])  # left padding
    h = attention_entropy(probs, attention_mask=mask)
    # the padded key's 1/3 is dropped: 2 x (1/3 ln 3); the padded query row is 0
    assert h[0, 0, 0].item() == 0.0
    assert h[0, 0, 1].item() == pytest.approx(2 / 3 * math.log(3), rel=1e-6)


def test_per_layer_tuple_is_stacked_and_bits_divide_by_ln2():
    layers = (_causal_uniform(4), _causal_uniform(4))
    h = attention_entropy(layers, base=2)
    assert h.shape == (2, 1, 1, 4)
    assert h[1, 0, 0, 3].item() == pytest.approx(2.0)


@pytest.mark.parametrize("bad", [float("nan"), -0.1, 1.5])
def test_bad_weights_are_refused_with_the_value(bad):
    w = torch.tensor([[[[bad, 0.5]]]])
    with pytest.raises(TokenwiseError, match="attention weight"):
        attention_entropy(w)


def test_mask_of_wrong_shape_is_refused():
    with pytest.raises(TokenwiseError, match="attention_mask"):
        attention_entropy(_causal_uniform(3), attention_mask=torch.ones(1, 4))

"""Temperature: scaling, greedy at 0, per-row values."""

from __future__ import annotations

import pytest
import torch
from tests.sampling.helpers import random_logits
from transformers import TemperatureLogitsWarper

from tokenwise.errors import TokenwiseError
from tokenwise.sampling import Temperature


@pytest.mark.parametrize("t", [0.3, 1.0, 2.5])
def test_equals_transformers(t):
    logits = random_logits(masked=0.3)
    ref = TemperatureLogitsWarper(t)(None, logits.clone())
    torch.testing.assert_close(Temperature(t)(logits), ref)


def test_zero_is_greedy_and_rows_can_differ():
    logits = random_logits(batch=2, vocab=20)
    out = Temperature([0, 2.0])(logits)
    assert (~out[0].isneginf()).sum() == 1 and out[0].argmax() == logits[0].argmax()
    torch.testing.assert_close(out[1], logits[1] / 2)


def test_bad_temperature():
    with pytest.raises(TokenwiseError, match=r"temperature=-1"):
        Temperature(-1)
    with pytest.raises(TokenwiseError, match=r"temperature\[1\]=-0.5"):
        Temperature([1.0, -0.5])(torch.zeros(2, 3))

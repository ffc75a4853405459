"""SEED-GRPO advantage scaling: closed forms, shapes, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from tokenwise.errors import TokenwiseError
from tokenwise.uncertainty import scale_advantages


def test_linear_and_exp_closed_form():
    a = torch.tensor([2.0, -1.0, 0.5])
    se = math.log(3) / 4
    torch.testing.assert_close(scale_advantages(a, se, 3, alpha=0.8), a * (1 - 0.8 / 4))
    torch.testing.assert_close(scale_advantages(a, se, 3, alpha=2.0, kind="exp"),
                               a * math.exp(-0.5))


def test_batch_of_prompts_and_extremes():
    a = torch.ones(3, 4, dtype=torch.float16)
    se = torch.tensor([0.0, math.log(4) / 2, math.log(4)])
    out = scale_advantages(a, se, 4)
    assert out.dtype == torch.float16 and out.shape == (3, 4)
    torch.testing.assert_close(out[:, 0].float(), torch.tensor([1.0, 0.5, 0.0]))
    assert a.eq(1).all()  # never in place


@pytest.mark.parametrize("kwargs, match", [
    ({"n_samples": 1}, "n_samples"),
    ({"alpha": 1.5}, "alpha"),
    ({"alpha": -0.1, "kind": "exp"}, "alpha"),
    ({"kind": "cubic"}, "kind"),
    ({"semantic_entropy": 5.0}, "semantic_entropy"),
    ({"semantic_entropy": torch.tensor([0.1, 0.2])}, "shape"),
])
def test_bad_input(kwargs, match):
    args = {"advantages": torch.ones(4), "semantic_entropy": 0.1, "n_samples": 4, **kwargs}
    with pytest.raises(TokenwiseError, match=match):
        scale_advantages(**args)

"""sampler_spec: the top-level fields' order and neutral values, the tokenwise chain, and
conflicts between them."""

from __future__ import annotations

import pytest
import torch

from tokenwise.sampling import Chain, MinP, Temperature, TopK, TopP, Typical
from tokenwise.serving.errors import APIError
from tokenwise.serving.sampler_spec import sampler_spec
from tokenwise.serving.schemas import CompletionRequest


def spec(**fields):
    return sampler_spec(CompletionRequest(model="m", prompt="x", **fields))


def test_filters_apply_before_temperature_in_llamacpp_order():
    s = spec(temperature=0.5, min_p=0.1, top_p=0.9, top_k=20, typical_p=0.95)
    assert [n for n, _ in s.steps] == ["top_k", "typical", "top_p", "min_p", "temperature"]
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    ref = Chain([TopK(20), Typical(0.95), TopP(0.9), MinP(0.1), Temperature(0.5)])(logits)
    assert torch.equal(s.build()(logits), ref)


@pytest.mark.parametrize("fields", [{}, {"temperature": 1.0}, {"top_p": 1.0, "top_k": 0},
                                    {"top_k": -1, "min_p": 0.0, "typical_p": 1.0}])
def test_neutral_values_leave_plain_sampling_at_temperature_one(fields):
    s = spec(**fields)
    assert not s.greedy
    assert s.describe() == [{"name": "temperature", "temperature": 1.0}]


def test_temperature_zero_is_greedy_alone_and_after_filters():
    assert spec(temperature=0.0).greedy and spec(temperature=0.0).build() is None
    s = spec(temperature=0.0, top_k=3)
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    assert torch.equal(s.build()(logits), torch.tensor([[-torch.inf, 3.0, -torch.inf,
                                                          -torch.inf]]))


def test_chain_and_top_level_fields_do_not_mix():
    with pytest.raises(APIError, match="top_p") as err:
        spec(top_p=0.9, tokenwise={"sampler": [{"name": "top_k", "top_k": 2}]})
    assert err.value.status == 400 and err.value.param == "top_p"


def test_chain_steps_are_checked_and_hashable():
    s = spec(tokenwise={"sampler": [{"name": "top_h", "alpha": 0.3},
                                    {"name": "temperature", "temperature": 0.7}]})
    assert s == spec(tokenwise={"sampler": [{"name": "top_h", "alpha": 0.3},
                                            {"name": "temperature", "temperature": 0.7}]})
    assert len({s, spec(temperature=0.7)}) == 2
    with pytest.raises(APIError, match=r"tokenwise\.sampler\.0\.alpha"):
        spec(tokenwise={"sampler": [{"name": "top_h", "alpha": [0.1, 0.2]}]})
    assert spec(tokenwise={"sampler": []}).greedy

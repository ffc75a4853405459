"""LogitBias: each named token's logit plus its bias, against a naive loop; its checks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tests.sampling.helpers import INF, SETTINGS, make_logits

from tokenwise.errors import TokenwiseError
from tokenwise.sampling import get
from tokenwise.sampling.logit_bias import LogitBias


def naive(logits: torch.Tensor, bias: dict[int, float]) -> torch.Tensor:
    out = logits.double().clone()
    for row in range(out.shape[0]):
        for token, value in bias.items():
            out[row, token] = out[row, token] + value
    return out


@SETTINGS
@given(seed=st.integers(0, 10_000), masked=st.sampled_from([0.0, 0.5]),
       bias=st.dictionaries(st.integers(0, 63), st.floats(-100, 100), max_size=10))
def test_adds_each_bias_to_its_token_in_every_row(seed, masked, bias):
    x = make_logits(seed, vocab=64, masked=masked)
    out = LogitBias(bias)(x)
    assert torch.allclose(out.double(), naive(x, bias), atol=1e-5)
    assert torch.equal(out.isneginf(), x.isneginf())  # nothing dropped, masked stays masked


def test_minus_100_makes_a_token_practically_impossible_but_leaves_it_finite():
    x = torch.tensor([[5.0, 1.0, 0.0]])
    out = LogitBias({0: -100})(x)
    assert out.isfinite().all() and out.softmax(-1)[0, 0] < 1e-40
    assert LogitBias({2: 100})(x).argmax().item() == 2


def test_pairs_and_mapping_are_the_same_and_an_empty_bias_is_the_identity():
    x = make_logits(3, vocab=10)
    assert torch.equal(LogitBias([(3, 2.0), (1, -1.0)])(x), LogitBias({1: -1.0, 3: 2.0})(x))
    assert torch.equal(get("logit_bias", bias={})(x), x)
    assert LogitBias({3: 2, 1: -1}).params() == {"bias": {1: -1.0, 3: 2.0}}


def test_half_precision_adds_in_float32():
    x = make_logits(4, vocab=32).to(torch.bfloat16)
    bias = {0: 0.3, 7: -2.7}
    out = LogitBias(bias)(x)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, LogitBias(bias)(x.float()).to(torch.bfloat16))


@pytest.mark.parametrize("bias, message", [
    ({0: 100.5}, r"bias\[0\]=100.5: allowed a number in \[-100, 100\]"),
    ({0: -101}, r"bias\[0\]=-101: allowed a number in \[-100, 100\]"),
    ({0: float("nan")}, r"bias\[0\]=nan"),
    ({-1: 1.0}, r"logit_bias id=-1: allowed an integer >= 0"),
    ({"5": 1.0}, r"logit_bias id='5': allowed an integer >= 0"),
    ({True: 1.0}, r"logit_bias id=True"),
    ([(1, 1.0), (1, 2.0)], "token id 1 twice"),
    ([(1, 1.0, 3)], "pairs"),
    ("5", "allowed a mapping"),
])
def test_bad_biases_are_refused_naming_the_value(bias, message):
    with pytest.raises(TokenwiseError, match=message):
        LogitBias(bias)


def test_an_id_outside_the_vocabulary_is_refused_at_the_call():
    with pytest.raises(TokenwiseError, match=r"logit_bias id 10 .* 10 tokens: allowed ids 0 to 9"):
        LogitBias({10: 1.0})(torch.zeros(1, 10))


def test_biased_greedy_generation_equals_a_naive_loop(small):
    import tokenwise as tw
    from tokenwise.sampling import Chain, Temperature

    prompt, bias = "markov: ka", {small.encode(" tu")[0]: -100.0, small.encode(" fe")[0]: 5.0}
    got = tw.generate(small, prompt, Chain([LogitBias(bias), Temperature(0)]),
                      max_new_tokens=6, seed=0)
    ids = small.encode(prompt, add_bos=True)
    want = []
    with torch.no_grad():
        for _ in range(6):
            logits = small.hf_model(torch.tensor([ids])).logits[:, -1].float()
            tok = int(naive(logits, bias).argmax())
            want.append(tok)
            ids.append(tok)
    assert [t.id for t in got.tokens] == want
    assert small.encode(" tu")[0] not in want
    # the records keep the model's own distribution: the banned token's logprob is its own
    plain = tw.generate(small, prompt, max_new_tokens=1)
    assert got.tokens[0].entropy == pytest.approx(plain.tokens[0].entropy, abs=1e-6)
    assert -INF < got.tokens[0].logprob < plain.tokens[0].logprob

"""Tests for tokenwise.routing.features: one layer's hidden state at the prompt's last token."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokenwise.errors import TokenwiseError
from tokenwise.models import load
from tokenwise.routing.features import check_layer, feature_flops, prompt_features

PROMPTS = ["2+2=", "Q: hi", "markov: ka ro", "13+8="]


@pytest.fixture(scope="module")
def lm():
    return load("tw-small")


def test_shape_and_dtype(lm):
    x = prompt_features(lm, PROMPTS)
    assert x.shape == (len(PROMPTS), lm.config.hidden_size)
    assert x.dtype == np.float32
    empty = prompt_features(lm, [])
    assert empty.shape == (0, lm.config.hidden_size)


def test_layer_zero_is_the_last_tokens_embedding_row(lm):
    table = lm.hf_model.get_input_embeddings().weight.detach().float().numpy()
    x = prompt_features(lm, PROMPTS, layer=0)
    for row, prompt in zip(x, PROMPTS, strict=True):
        last = lm.encode(prompt, add_bos=True)[-1]
        np.testing.assert_allclose(row, table[last], rtol=0, atol=1e-6)
    # -(L+1) is the embeddings too
    np.testing.assert_array_equal(
        prompt_features(lm, PROMPTS, layer=-(lm.config.num_hidden_layers + 1)), x)


def test_last_layer_equals_hidden_states_of_the_last_token(lm):
    x = prompt_features(lm, PROMPTS, layer=-1)
    for row, prompt in zip(x, PROMPTS, strict=True):
        want = lm.hidden_states(prompt)[-1].float().numpy()
        np.testing.assert_allclose(row, want, rtol=1e-5, atol=1e-5)
    top = lm.config.num_hidden_layers
    np.testing.assert_array_equal(prompt_features(lm, PROMPTS, layer=top), x)


@pytest.mark.parametrize("layer", [1, 2, -2])
def test_middle_layers_equal_hidden_states(lm, layer):
    x = prompt_features(lm, PROMPTS[:2], layer=layer)
    for row, prompt in zip(x, PROMPTS[:2], strict=True):
        want = lm.hidden_states(prompt, layer=layer)[-1].float().numpy()
        np.testing.assert_allclose(row, want, rtol=1e-5, atol=1e-5)


def test_layers_differ(lm):
    a = prompt_features(lm, ["7+5="], layer=0)
    b = prompt_features(lm, ["7+5="], layer=-1)
    assert not np.allclose(a, b)


def test_a_prompt_alone_or_in_a_list_gives_the_same_row(lm):
    batch = prompt_features(lm, PROMPTS)
    for i, prompt in enumerate(PROMPTS):
        alone = prompt_features(lm, [prompt])
        np.testing.assert_array_equal(alone[0], batch[i])
    again = prompt_features(lm, list(reversed(PROMPTS)))
    np.testing.assert_array_equal(again[::-1], batch)


def test_overlong_prompts_keep_their_last_tokens(lm):
    prompt = "1+1=2\n" * 80
    ids = lm.encode(prompt, add_bos=True)
    assert len(ids) > lm.context_length
    row = prompt_features(lm, [prompt])[0]
    tail = ids[-lm.context_length:]
    want = lm.hidden_states(tail)[-1].float().numpy()
    np.testing.assert_allclose(row, want, rtol=1e-5, atol=1e-5)
    assert feature_flops(lm, prompt) == 2.0 * lm.num_parameters() * lm.context_length


@pytest.mark.parametrize("layer", [4, -5, 100, True, 1.0, "1", None])
def test_bad_layer_names_the_allowed_range(lm, layer):
    assert lm.config.num_hidden_layers == 3  # so the range is -4 .. 3
    with pytest.raises(TokenwiseError, match=r"layer must be an integer from -4 to 3") as err:
        prompt_features(lm, ["2+2="], layer=layer)
    assert repr(layer) in str(err.value)


def test_check_layer_accepts_the_whole_range(lm):
    assert [check_layer(lm, i) for i in range(-4, 4)] == list(range(-4, 4))


@pytest.mark.parametrize("prompts", [[""], ["2+2=", ""], ["ok", None], ["ok", 3]])
def test_empty_or_non_string_prompt_is_an_error(lm, prompts):
    bad = len(prompts) - 1
    with pytest.raises(TokenwiseError, match=f"prompt {bad} must be a non-empty string"):
        prompt_features(lm, prompts)


def test_a_bare_string_is_not_a_list_of_prompts(lm):
    with pytest.raises(TokenwiseError, match="list of strings"):
        prompt_features(lm, "2+2=")


def test_feature_flops_by_hand(lm):
    for prompt in PROMPTS:
        n = len(lm.encode(prompt, add_bos=True))
        assert feature_flops(lm, prompt) == 2.0 * lm.num_parameters() * n


def test_features_need_no_gradients(lm):
    # inference mode: nothing is recorded for autograd and the weights are untouched
    before = lm.hf_model.get_input_embeddings().weight.detach().clone()
    prompt_features(lm, PROMPTS)
    assert torch.equal(before, lm.hf_model.get_input_embeddings().weight.detach())

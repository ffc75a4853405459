"""Penalties: presence and frequency over the generated tokens, repetition over prompt and
generated ones, against a naive per-token loop, transformers' repetition penalty, and the
decode loop (which tells the sampler the prompt and each chosen token)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tests.sampling.helpers import SETTINGS, make_logits

import tokenwise as tw
from tokenwise.errors import TokenwiseError
from tokenwise.sampling import Chain, Temperature, TopK
from tokenwise.sampling.penalties import Penalties


def naive(logits, prompts, generated, presence, frequency, repetition):
    """OpenAI's formula and vLLM's repetition penalty, one token at a time (float64)."""
    out = logits.double().clone()
    for r in range(out.shape[0]):
        for t in range(out.shape[1]):
            count = generated[r].count(t)
            x = float(out[r, t])
            if t in prompts[r] or count:
                x = x / repetition if x > 0 else x * repetition
            out[r, t] = x - frequency * count - presence * (count > 0)
    return out


def replay(sampler, logits, prompts, generated):
    """Tell the sampler the prompts and the generated columns, then apply it to ``logits``."""
    sampler.reset()
    sampler.observe_prompt(prompts)
    for step in range(len(generated[0])):
        sampler(logits)
        sampler.observe(torch.tensor([row[step] for row in generated]))
    return sampler(logits)


@st.composite
def histories(draw, rows=6, vocab=20):
    steps = draw(st.integers(0, 8))
    prompts = [draw(st.lists(st.integers(0, vocab - 1), max_size=6)) for _ in range(rows)]
    generated = [draw(st.lists(st.integers(0, vocab - 1), min_size=steps, max_size=steps))
                 for _ in range(rows)]
    return prompts, generated


@SETTINGS
@given(seed=st.integers(0, 10_000), history=histories(), masked=st.sampled_from([0.0, 0.5]),
       presence=st.floats(-2, 2), frequency=st.floats(-2, 2),
       repetition=st.floats(0.1, 3.0))
def test_matches_the_naive_formula_per_row(seed, history, masked, presence, frequency,
                                          repetition):
    prompts, generated = history
    x = make_logits(seed, vocab=20, masked=masked)
    sampler = Penalties(presence, frequency, repetition)
    out = replay(sampler, x, prompts, generated)
    want = naive(x, prompts, generated, presence, frequency, repetition)
    assert torch.allclose(out.double(), want, rtol=1e-5, atol=1e-5)
    assert torch.equal(out.isneginf(), x.isneginf())  # nothing dropped, masked stays masked
    # each row alone gives the same
    for r in range(x.shape[0]):
        alone = replay(Penalties(presence, frequency, repetition), x[r:r + 1], [prompts[r]],
                       [generated[r]])
        assert torch.equal(alone, out[r:r + 1])


@SETTINGS
@given(seed=st.integers(0, 10_000), history=histories(),
       dtype=st.sampled_from([torch.float16, torch.bfloat16]))
def test_half_precision_gives_the_float32_copys_result(seed, history, dtype):
    prompts, generated = history
    x = make_logits(seed, vocab=20).to(dtype)
    out = replay(Penalties(0.3, 0.7, 1.3), x, prompts, generated)
    ref = replay(Penalties(0.3, 0.7, 1.3), x.float(), prompts, generated)
    assert out.dtype == dtype and torch.equal(out, ref.to(dtype))


def test_the_prompt_counts_for_repetition_only():
    x = torch.tensor([[2.0, -2.0, 1.0]])
    sampler = Penalties(presence_penalty=1.0, frequency_penalty=1.0, repetition_penalty=2.0)
    sampler.observe_prompt([[0, 1]])
    assert sampler(x).tolist() == [[1.0, -4.0, 1.0]]  # no presence/frequency for the prompt


def test_repetition_equals_transformers_over_prompt_and_generated_tokens():
    from transformers import RepetitionPenaltyLogitsProcessor

    x = make_logits(7, vocab=30)
    prompts = [[1, 2], [4, 4], [0, 3], [29, 5], [6, 6], [7, 8]]
    generated = [[9, 1], [4, 10], [11, 12], [5, 5], [13, 6], [8, 14]]
    out = replay(Penalties(repetition_penalty=1.7), x, prompts, generated)
    input_ids = torch.tensor([p + g for p, g in zip(prompts, generated, strict=True)])
    ref = RepetitionPenaltyLogitsProcessor(1.7)(input_ids, x.clone())
    assert torch.allclose(out, ref)


def test_as_hf_reads_the_prompt_from_input_ids_and_equals_generate(small):
    prompt = "markov: ka"
    ids = torch.tensor([small.encode(prompt, add_bos=True)])
    sampler = Penalties(presence_penalty=1.5, frequency_penalty=0.5, repetition_penalty=1.5)
    out = small.hf_model.generate(ids, max_new_tokens=12, do_sample=False,
                                  logits_processor=[sampler.as_hf()],
                                  pad_token_id=small.tokenizer.pad_token_id)
    ours = tw.generate(small, prompt, Chain([sampler, Temperature(0)]), max_new_tokens=12,
                       seed=0)
    assert out[0, ids.shape[1]:].tolist()[:len(ours.tokens)] == [t.id for t in ours.tokens]
    # inside a chain the adapter passes the prompt on to the step that reads it
    in_chain = small.hf_model.generate(ids, max_new_tokens=12, do_sample=False,
                                       logits_processor=[Chain([TopK(50), sampler]).as_hf()],
                                       pad_token_id=small.tokenizer.pad_token_id)
    assert in_chain.tolist() == out.tolist()


def test_generate_penalises_repeats_and_matches_a_naive_loop(small):
    prompt = "markov: ka"
    plain = tw.generate(small, prompt, max_new_tokens=16)
    chain = Chain([Penalties(presence_penalty=1.0, frequency_penalty=1.0,
                             repetition_penalty=1.3), Temperature(0)])
    got = tw.generate(small, [prompt, "7+2="], chain, max_new_tokens=16, seed=[0, 1])[0]
    prompt_ids = small.encode(prompt, add_bos=True)
    ids, want = list(prompt_ids), []
    with torch.no_grad():
        for _ in range(16):
            logits = small.hf_model(torch.tensor([ids])).logits[:, -1].float()
            tok = int(naive(logits, [prompt_ids], [want], 1.0, 1.0, 1.3).argmax())
            if tok in small.end_token_ids:
                break
            want.append(tok)
            ids.append(tok)
    assert [t.id for t in got.tokens] == want
    # the greedy text repeats its tokens; the penalised one repeats fewer
    assert len(set(want)) > len({t.id for t in plain.tokens})
    # records carry the model's own distribution, not the penalised one
    assert got.tokens[0].entropy == pytest.approx(plain.tokens[0].entropy, abs=1e-6)


def test_state_errors_name_what_to_do():
    sampler = Penalties(frequency_penalty=1.0)
    with pytest.raises(TokenwiseError, match="before the sampler saw any logits"):
        sampler.observe(torch.tensor([0]))
    sampler(torch.zeros(2, 5))
    with pytest.raises(TokenwiseError, match="1 chosen tokens for a batch of 2 rows"):
        sampler.observe(torch.tensor([0]))
    sampler.observe(torch.tensor([0, 1]))
    with pytest.raises(TokenwiseError, match=r"call reset\(\) before another batch"):
        sampler(torch.zeros(3, 5))
    with pytest.raises(TokenwiseError, match=r"observe_prompt\(\) after generated tokens"):
        sampler.observe_prompt([[1], [2]])
    sampler.reset()
    sampler.observe_prompt([[1], [2]])
    with pytest.raises(TokenwiseError, match="2 prompt"):
        sampler(torch.zeros(3, 5))
    sampler.reset()
    sampler.observe_prompt([[7]])
    with pytest.raises(TokenwiseError, match="prompt token id 7 of row 0"):
        sampler(torch.zeros(1, 5))
    with pytest.raises(TokenwiseError, match=r"prompt_ids\[0\]\[1\]=-1"):
        sampler.observe_prompt([[1, -1]])


def test_without_history_it_is_a_pure_map_that_keeps_every_token():
    x = make_logits(1, vocab=12)
    sampler = Penalties(2.0, 2.0, 3.0)
    assert torch.equal(sampler(x), x) and sampler(x) is not x
    assert torch.equal(sampler(x), x)  # calls alone add no history


@pytest.mark.parametrize("kwargs, message", [
    ({"presence_penalty": 2.5}, r"presence_penalty=2.5: allowed a number in \[-2, 2\]"),
    ({"frequency_penalty": -2.01}, r"frequency_penalty=-2.01: allowed a number in \[-2, 2\]"),
    ({"repetition_penalty": 0.0}, r"repetition_penalty=0.0: allowed a number in \[1e-06, 1e\+06\]"),
    ({"repetition_penalty": float("inf")}, r"repetition_penalty=inf"),
    ({"presence_penalty": "1"}, r"presence_penalty='1'"),
])
def test_bad_settings_are_refused_naming_the_range(kwargs, message):
    with pytest.raises(TokenwiseError, match=message):
        Penalties(**kwargs)


def test_observe_prompt_reaches_steps_inside_chains():
    inner = Penalties(repetition_penalty=2.0)
    chain = Chain([TopK(3), Chain([inner])])
    chain.observe_prompt([[0]])
    assert chain(torch.tensor([[4.0, 3.0, 1.0, 0.0]])).tolist() == [[2.0, 3.0, 1.0, -torch.inf]]


class _Recording(Penalties):
    """Penalties that remember the history each decode loop tells them."""

    def reset(self) -> None:
        super().reset()
        self.prompts: list = []
        self.chosen: list = []

    def observe_prompt(self, prompt_ids) -> None:
        self.prompts.append([list(p) for p in prompt_ids])
        super().observe_prompt(prompt_ids)

    def observe(self, chosen) -> None:
        self.chosen.append(chosen.tolist())
        super().observe(chosen)


def test_both_decode_loops_tell_the_prompt_then_each_chosen_token(small, large):
    from tokenwise.generation.ead import generate_ead

    prompts = ["markov: ka", "7+2="]
    encoded = [small.encode(p, add_bos=True) for p in prompts]
    spy = _Recording(repetition_penalty=1.2)
    gens = tw.generate(small, prompts, Chain([spy, Temperature(0)]), max_new_tokens=3, seed=0)
    assert spy.prompts == [encoded]  # unpadded, one list per row, once
    assert [row[0] for row in spy.chosen] == [t.id for t in gens[0].tokens][:len(spy.chosen)]
    spy = _Recording(repetition_penalty=1.2)
    ead = generate_ead(small, large, prompts[0], Chain([spy, Temperature(0)]), up=0.5,
                       max_new_tokens=3, seed=0)
    assert spy.prompts == [[encoded[0]]]
    assert [row[0] for row in spy.chosen][:len(ead.tokens)] == [t.id for t in ead.tokens]

"""The sampler contract, checked once for every sampler in the registry.

What :mod:`tokenwise.sampling.base` promises of every sampler: the input is never modified;
the output is a new tensor of the input's shape and dtype with no NaN; masked (``-inf``)
tokens stay masked; at least ``min_tokens_to_keep`` tokens are kept (the most likely ones,
except for Typical, whose rule keeps the most *typical*); kept tokens keep their value
(unless the sampler rescales); fp16/bf16 logits give the same result as their float32 copy;
a row whose logits are all ``-inf`` comes back unchanged; each row is decided alone, so a
batch with one value of a per-row parameter per row equals its rows run one by one.

A sampler added to the registry without a line in :data:`CASES` fails
:func:`test_every_registered_sampler_has_a_case`. Each sampler's own file tests its rule.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tests.sampling.helpers import INF, SETTINGS, make_logits

from tokenwise.errors import TokenwiseError
from tokenwise.sampling import SAMPLERS, Sampler, get, sampler_class
from tokenwise.sampling.semantic_control import LogisticProbe
from tokenwise.sampling.top_h import RULES

KEEP = st.integers(1, 8)


@dataclass(frozen=True)
class Case:
    """How to draw one sampler's settings."""

    #: each parameter's values (``min_tokens_to_keep`` included where the sampler takes it)
    params: dict[str, st.SearchStrategy]
    #: the parameter that also takes one value per row, or None
    per_row: str | None = None
    #: kept tokens may change value (temperature scaling)
    rescales: bool = False


def _eps() -> st.SearchStrategy[float]:
    return st.floats(1e-5, 0.99)


def _ends_embedder(dists: torch.Tensor) -> torch.Tensor:
    """A 2-d "sentence embedding" for any vocabulary: shares of the first and last token."""
    return torch.stack([dists[..., 0].mean(1), dists[..., -1].mean(1)], -1)


#: SemanticControl's verifier and embedder for the contract (no model: no rollout, so the
#: rule is deterministic); test_semantic_control.py covers the rollout
_CONTROL = {"verifier": LogisticProbe([3.0, -2.0], 0.5), "embedder": _ends_embedder}


CASES: dict[str, Case] = {
    # Besides 0, T >= 0.3: 1e4 / T of the edge rows must stay finite in fp16 (its range ends
    # at 65504), a limit of the format rather than a decision of the sampler.
    "temperature": Case({"temperature": st.sampled_from([0.0, 0.3, 0.7, 1.0, 2.5])},
                        per_row="temperature", rescales=True),
    "top_k": Case({"top_k": st.integers(1, 70), "min_tokens_to_keep": KEEP}),
    "top_p": Case({"top_p": st.floats(0.01, 1.0), "min_tokens_to_keep": KEEP}, per_row="top_p"),
    "min_p": Case({"min_p": st.floats(0.0, 1.0), "min_tokens_to_keep": KEEP}, per_row="min_p"),
    "typical": Case({"mass": st.floats(0.01, 1.0), "min_tokens_to_keep": KEEP}, per_row="mass"),
    "epsilon": Case({"epsilon": _eps(), "min_tokens_to_keep": KEEP}, per_row="epsilon"),
    "eta": Case({"epsilon": _eps(), "min_tokens_to_keep": KEEP}, per_row="epsilon"),
    "top_h": Case({"alpha": st.floats(0.01, 1.0), "rule": st.sampled_from(RULES),
                   "top_n": st.sampled_from([None, 1, 5, 100]),
                   "temperature": st.sampled_from([0.5, 1.0, 2.0]), "min_tokens_to_keep": KEEP},
                  per_row="alpha"),
    "mirostat_v2": Case({"tau": st.floats(0.1, 8.0), "eta": st.floats(0.01, 1.0)}),
    "entropy_regime": Case({"h_low": st.floats(0.1, 1.0), "h_high": st.floats(1.0, 4.0),
                            "v_low": st.floats(0.1, 2.0), "v_high": st.floats(2.0, 6.0)},
                           rescales=True),
    # Ids must exist in every drawn vocabulary (V >= 1): only token 0 can be biased here;
    # test_logit_bias.py covers wider vocabularies.
    "logit_bias": Case({"bias": st.dictionaries(st.just(0), st.floats(-100, 100), max_size=1)},
                       rescales=True),
    # Called without history (nothing observed) the penalties change nothing; their rule
    # with a history, per row and in fp16/bf16, is tested in test_penalties.py.
    "penalties": Case({"presence_penalty": st.floats(-2, 2),
                       "frequency_penalty": st.floats(-2, 2),
                       "repetition_penalty": st.floats(0.1, 3.0)}, rescales=True),
    "semantic_control": Case({**{k: st.just(v) for k, v in _CONTROL.items()},
                              "strength": st.floats(0.0, 4.0), "top_k": st.integers(1, 70)},
                             rescales=True),
}
NAMES = sorted(SAMPLERS)
#: the arguments a sampler cannot do without, for the tests that need any valid one
REQUIRED = {"top_k": {"top_k": 3}, "epsilon": {"epsilon": 0.01}, "eta": {"epsilon": 0.01},
            "logit_bias": {"bias": {0: 1.0}}, "semantic_control": _CONTROL}


def edge_rows(vocab: int) -> torch.Tensor:
    """Rows every sampler must take: all masked, one finite token, one token holding all the
    mass (the others underflow to p = 0), and all tied."""
    dead = torch.full((vocab,), -INF)
    single = dead.clone()
    single[-1] = 2.0
    spike = torch.zeros(vocab)
    spike[vocab // 2] = 1e4
    return torch.stack([dead, single, spike, torch.zeros(vocab)])


@st.composite
def batches(draw: st.DrawFn) -> torch.Tensor:
    """Six seeded rows (flat to peaked, maybe masked, maybe tied) and the edge rows."""
    vocab = draw(st.sampled_from([1, 2, 7, 40, 64]))
    x = make_logits(draw(st.integers(0, 10_000)), vocab=vocab,
                    masked=draw(st.sampled_from([0.0, 0.5, 0.95])), ties=draw(st.booleans()))
    return torch.cat([x, edge_rows(vocab)])


def settings_of(data: st.DataObject, name: str) -> dict:
    return data.draw(st.fixed_dictionaries(CASES[name].params), label="params")


def build(name: str, params: dict) -> Sampler:
    return get(name, **params)


# ---------------------------------------------------------------------------------- contract


def test_every_registered_sampler_has_a_case():
    assert set(CASES) == set(SAMPLERS)
    for name in NAMES:
        accepted = set(inspect.signature(sampler_class(name).__init__).parameters) - {"self"}
        assert set(CASES[name].params) <= accepted, name
        assert sampler_class(name).name == name


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(data=st.data())
def test_a_pure_map_that_keeps_enough_tokens(name, data):
    x = data.draw(batches(), label="logits")
    sampler = build(name, settings_of(data, name))
    before = x.clone()
    out = sampler(x)
    assert torch.equal(x, before)  # input never modified
    assert out is not x and out.shape == x.shape and out.dtype == x.dtype
    assert not out.isnan().any()
    kept = ~out.isneginf()
    assert not (kept & x.isneginf()).any()  # masked tokens stay masked
    finite = (~x.isneginf()).sum(-1)
    k = min(sampler.min_tokens_to_keep, x.shape[-1])
    assert (kept.sum(-1) >= finite.clamp(max=k)).all()
    if sampler.keeps_most_likely:
        # the k most likely tokens are kept (which of equal logits, the sampler's choice)
        kth = x.topk(k, dim=-1).values[:, -1:]
        assert not (~kept & (x > kth)).any()
        assert ((kept & (x >= kth)).sum(-1) >= finite.clamp(max=k)).all()
    if not CASES[name].rescales:
        assert torch.equal(out[kept], x[kept])  # kept values unchanged
    dead = x.isneginf().all(-1)
    assert dead.any() and torch.equal(out[dead], x[dead])  # all-masked rows unchanged


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(data=st.data())
def test_half_precision_gives_the_float32_copys_result(name, dtype, data):
    # Masks are decided in float32, so a low-precision input and its float32 copy (the same
    # values, the same ties) keep the same tokens, with the same values, in the input's dtype.
    low = data.draw(batches(), label="logits").to(dtype)
    params = settings_of(data, name)
    before = low.clone()
    out = build(name, params)(low)
    ref = build(name, params)(low.float())
    assert torch.equal(low, before)
    assert out.dtype == dtype and not out.isnan().any()
    assert torch.equal(out.isneginf(), ref.isneginf())
    assert torch.equal(out, ref.to(dtype))


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(data=st.data())
def test_each_row_is_decided_alone(name, data):
    """A batch equals its rows one at a time; with one value per row of a per-row parameter
    (a list, a tuple or a 1-D tensor alike), each row gets its own."""
    x = data.draw(batches(), label="logits")
    params = settings_of(data, name)
    rows = x.shape[0]
    per_row = CASES[name].per_row
    if per_row is None:
        together = build(name, params)(x)
        alone = [build(name, params)(x[i : i + 1]) for i in range(rows)]
        assert torch.equal(together, torch.cat(alone))
        return
    values = data.draw(st.lists(CASES[name].params[per_row], min_size=rows, max_size=rows),
                       label=per_row)
    together = build(name, {**params, per_row: values})(x)
    for form in (tuple(values), torch.tensor(values, dtype=torch.float64)):
        assert torch.equal(build(name, {**params, per_row: form})(x), together)
    alone = [build(name, {**params, per_row: v})(x[i : i + 1]) for i, v in enumerate(values)]
    assert torch.equal(together, torch.cat(alone))
    with pytest.raises(TokenwiseError, match=f"{rows - 1} values for a batch of {rows} rows"):
        build(name, {**params, per_row: values[:-1]})(x)


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(data=st.data())
def test_only_the_per_row_parameter_takes_one_value_per_row(name, data):
    # Keeps CASES honest: a parameter it does not list as per-row refuses a list.
    params = settings_of(data, name)
    for key, value in params.items():
        if key != CASES[name].per_row:
            with pytest.raises(TokenwiseError, match=key):
                build(name, {**params, key: [value, value]})


@pytest.mark.parametrize("name", NAMES)
def test_a_one_token_vocabulary_keeps_its_token(name):
    # Drawn by the properties above too (vocab 1); here on every run.
    x = torch.tensor([[1.5], [-INF]])
    out = build(name, REQUIRED.get(name, {}))(x)
    assert out.isfinite().tolist() == [[True], [False]]
    if not CASES[name].rescales:
        assert torch.equal(out, x)


@pytest.mark.parametrize("name", NAMES)
def test_bad_logits_are_refused(name):
    sampler = build(name, REQUIRED.get(name, {}))
    with pytest.raises(TokenwiseError, match="NaN"):
        sampler(torch.tensor([[0.0, float("nan"), 1.0]]))
    for beside in (INF, -INF):  # a NaN beside an infinity, in another row, in half precision
        with pytest.raises(TokenwiseError, match="NaN"):
            sampler(torch.tensor([[0.0, 1.0], [beside, float("nan")]], dtype=torch.float16))
    with pytest.raises(TokenwiseError, match=r"shape \(B, V\)"):
        sampler(torch.zeros(3))
    with pytest.raises(TokenwiseError, match="floating point"):
        sampler(torch.zeros(2, 3, dtype=torch.long))


@pytest.mark.parametrize("name", [n for n in NAMES if "min_tokens_to_keep" in CASES[n].params])
@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_bad_min_tokens_to_keep(name, bad):
    with pytest.raises(TokenwiseError,
                       match=rf"min_tokens_to_keep={bad!r}: allowed an integer >= 1"):
        build(name, {**REQUIRED.get(name, {}), "min_tokens_to_keep": bad})

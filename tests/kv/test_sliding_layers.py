"""Presses on hybrid models (Gemma-3): sliding-window layers keep the model's own window,
only full-attention layers are pressed, and masks and positions come out as the model's
own cache gives them."""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import DynamicCache, Gemma3ForCausalLM, Gemma3TextConfig

from tokenwise import kv
from tokenwise.errors import TokenwiseError
from tokenwise.kv.cache import SlidingLayer, cache_keyword

WINDOW = 8
KINDS = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]


def _gemma(layer_types: list[str] | None = None, attn: str = "sdpa") -> Gemma3ForCausalLM:
    torch.manual_seed(0)
    types = layer_types or KINDS
    config = Gemma3TextConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=len(types),
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=WINDOW,
        layer_types=types, max_position_embeddings=256, query_pre_attn_scalar=8,
        pad_token_id=0, bos_token_id=1, eos_token_id=2)
    config._attn_implementation = attn
    model = Gemma3ForCausalLM(config).eval()
    with torch.no_grad():  # random init gives near-uniform logits; sharpen them
        for p in model.parameters():
            p.mul_(3.0)
    return model


@pytest.fixture(scope="module")
def gemma() -> Gemma3ForCausalLM:
    return _gemma()


def _ids(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 64, (1, n), generator=g)


def _plain(model, ids: torch.Tensor, cache=None) -> tuple[torch.Tensor, DynamicCache]:
    """The model with its own cache (DynamicCache built from the config: sliding layers)."""
    cache = cache if cache is not None else DynamicCache(config=model.config)
    out = model(input_ids=ids, use_cache=True, **{cache_keyword(model): cache})
    return out.logits[:, -1], cache


def _step(model, cache, token: torch.Tensor, pos: int) -> torch.Tensor:
    out = model(input_ids=token, position_ids=torch.tensor([[pos]]), use_cache=True,
                **{cache_keyword(model): cache})
    return out.logits[:, -1]


@pytest.mark.parametrize("chunk", [None, 5])
def test_no_op_budget_equals_the_model_in_prefill_and_decoding(gemma, chunk):
    ids = _ids(29)  # > 3 windows
    ref_logits, ref = _plain(gemma, ids)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cache, logits = kv.prefill(gemma, ids, kv.SnapKV(1.0, window=4, chunk_size=chunk))
    torch.testing.assert_close(logits, ref_logits)
    # sliding layers hold what HF's own sliding layer holds: the last window - 1 tokens
    for i, kind in enumerate(KINDS):
        held = cache.layers[i].get_seq_length()
        assert held == (WINDOW - 1 if kind == "sliding_attention" else ids.shape[1])
        assert cache.layers[i].is_sliding == (kind == "sliding_attention")
    for i in (0, 2):
        torch.testing.assert_close(cache.layers[i].keys, ref.layers[i].keys)
        assert cache.layers[i].positions[0, 0].tolist() == list(range(22, 29))
    token = logits.argmax(-1, keepdim=True)
    for step in range(6):
        pos = ids.shape[1] + step
        ours, theirs = _step(gemma, cache, token, pos), _step(gemma, ref, token, pos)
        torch.testing.assert_close(ours, theirs)
        token = theirs.argmax(-1, keepdim=True)
    assert cache.held_by_kind() == {"sliding_attention": WINDOW - 1, "full_attention": 35}


def test_masks_are_the_models_own_when_the_sliding_window_is_crossed_inside_a_pass(gemma):
    """A 6-token pass after 5 tokens: the first queries see older tokens, the last ones
    not (the window boundary falls inside the pass)."""
    ids = _ids(11, seed=2)
    ref_logits, _ = _plain(gemma, ids)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, logits = kv.prefill(gemma, ids, kv.StreamingLLM(1.0, chunk_size=5))
    torch.testing.assert_close(logits, ref_logits)
    # all 11 logits, not only the last: read 5, then 6 at once, against the plain model
    full = gemma(input_ids=ids).logits
    c2 = kv.CompressedCache(gemma, kv.StreamingLLM(1.0), prompt_tokens=11)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gemma(input_ids=ids[:, :5], position_ids=torch.arange(5)[None], use_cache=True,
              **{cache_keyword(gemma): c2})
        out = gemma(input_ids=ids[:, 5:], position_ids=torch.arange(5, 11)[None],
                    use_cache=True, **{cache_keyword(gemma): c2}).logits
    torch.testing.assert_close(out, full[:, 5:])
    c2.close()


def test_real_budget_holds_the_budget_in_full_layers_and_the_window_in_sliding_ones(gemma):
    ids = _ids(40, seed=3)
    cache, _ = kv.prefill(gemma, ids, kv.SnapKV(12, window=4, chunk_size=10))
    assert [layer.get_seq_length() for layer in cache.layers] == [7, 12, 7, 12]
    assert cache.peak_by_kind == {"sliding_attention": WINDOW - 1 + 10,
                                  "full_attention": 12 + 10}
    assert {r["layer"] for r in cache.report if "layer" in r} == {1, 3}
    assert cache.get_seq_length() == 12  # the first full-attention layer's
    # layer 0 (before any pressed layer) is the model's own; layer 2 reads the pressed
    # layer 1's output, so only its positions can be compared
    _, ref = _plain(gemma, ids)
    torch.testing.assert_close(cache.layers[0].keys, ref.layers[0].keys)
    torch.testing.assert_close(cache.layers[0].values, ref.layers[0].values)
    assert cache.layers[2].positions[0, 1].tolist() == list(range(33, 40))
    by = cache.bytes_by_kind()
    assert sum(by.values()) == cache.nbytes() and by["sliding_attention"] > 0
    # decoding with `every` presses the full layers back to the budget, sliding layers slide
    cache2, logits = kv.prefill(gemma, ids, kv.SnapKV(12, window=4, every=3))
    token = logits.argmax(-1, keepdim=True)
    for step in range(5):
        token = _step(gemma, cache2, token, 40 + step).argmax(-1, keepdim=True)
    assert [layer.get_seq_length() for layer in cache2.layers] == [7, 14, 7, 14]
    assert cache2.layers[0].positions[0, 0].tolist() == list(range(38, 45))


def test_question_aware_chunks_leave_sliding_layers_as_a_plain_read():
    """Sliding layers 0 and 1 come before any pressed layer, so their K/V must be exactly a
    plain read of context + question's (each probe dropped, the window restored); layer 3
    reads pressed layers' output, so its positions are compared."""
    model = _gemma(["sliding_attention", "sliding_attention", "full_attention",
                    "sliding_attention"])
    ctx, question = _ids(37, seed=4), _ids(5, seed=5)
    both = torch.cat([ctx, question], 1)
    press = kv.SnapKV(10, window=5, chunk_size=9)
    cache, _ = kv.prefill(model, ctx, press, question=question)
    assert sum(r.get("probe") == 5 for r in cache.report) >= 3  # probes ran and were dropped
    _, ref = _plain(model, both)
    for i in (0, 1):
        torch.testing.assert_close(cache.layers[i].keys, ref.layers[i].keys)
        torch.testing.assert_close(cache.layers[i].values, ref.layers[i].values)
    for i in (0, 1, 3):
        assert cache.layers[i].positions[0, 0].tolist() == list(range(35, 42))
        assert cache.layers[i].seen == 42
    assert cache.layers[2].get_seq_length() == 10 + 5
    assert cache.peak_by_kind["sliding_attention"] <= WINDOW - 1 + 9 + 5
    # no eviction at all: the question-aware chunked read is the model's own read, every
    # layer's K/V and the logits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cache, logits = kv.prefill(model, ctx, kv.SnapKV(100, window=5, chunk_size=9),
                                   question=question)
    ref_logits, ref = _plain(model, both)
    torch.testing.assert_close(logits, ref_logits)
    for i in (0, 1, 3):
        torch.testing.assert_close(cache.layers[i].keys, ref.layers[i].keys)


def test_drop_last_needs_the_history_of_a_probe(gemma):
    ids = _ids(20, seed=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cache, _ = kv.prefill(gemma, ids, kv.StreamingLLM(1.0))
    with pytest.raises(TokenwiseError, match="sliding-window layer holding 7 tokens"):
        cache.drop_last(3)
    assert cache.layers[0].seen == 20  # nothing changed


def test_per_layer_budget_is_one_per_full_attention_layer(gemma):
    with pytest.raises(TokenwiseError, match="2 full-attention layers"):
        kv.CompressedCache(gemma, kv.KeyNorm([8, 8, 8, 8]))
    cache, _ = kv.prefill(gemma, _ids(30), kv.KeyNorm([6, 0.5]))
    assert [layer.get_seq_length() for layer in cache.layers] == [7, 6, 7, 15]


def test_layer_types_other_than_full_and_sliding_are_refused():
    model = _gemma()
    model.config.layer_types = ["sliding_attention", "chunked_attention",
                                "full_attention", "full_attention"]
    with pytest.raises(TokenwiseError, match=r"\['chunked_attention'\].*'full_attention' "
                                             r"and 'sliding_attention'"):
        kv.CompressedCache(model, kv.SnapKV(8))


def test_all_full_and_all_sliding_models():
    full = _gemma(["full_attention"] * 2)
    cache = kv.CompressedCache(full, kv.SnapKV(8))
    assert not any(isinstance(layer, SlidingLayer) for layer in cache.layers)
    cache.close()
    sliding = _gemma(["sliding_attention"] * 2)
    ids = _ids(20, seed=7)
    ref_logits, _ = _plain(sliding, ids)
    cache, logits = kv.prefill(sliding, ids, kv.SnapKV(4, window=2, chunk_size=6))
    torch.testing.assert_close(logits, ref_logits)  # nothing to press: the model's own
    assert cache.held_by_kind() == {"sliding_attention": WINDOW - 1}


def test_quantised_cache_runs_on_a_hybrid_model(gemma):
    """Nothing quantised yet (residual over the prompt): exactly the model's logits."""
    ids = _ids(20, seed=8)
    ref_logits, _ = _plain(gemma, ids)
    _, logits = kv.prefill(gemma, ids, kv.KIVI(8, group=8, residual=32))
    torch.testing.assert_close(logits, ref_logits)


def test_cache_report_on_a_hybrid_model_reports_pressed_and_sliding_layers_apart(gemma):
    from tokenwise.generation.kv_report import cache_report

    ids = _ids(30)
    cache, _ = kv.prefill(gemma, ids, kv.SnapKV(12, window=4))
    report = cache_report(cache, ids.shape[1])
    assert report["kept_tokens"] == 12  # the pressed (full-attention) layers
    assert report["sliding_window_tokens"] == WINDOW - 1
    # a plain cache: every token on full layers, the window on sliding ones
    expected = sum(2 * lay.keys.shape[1] * lay.keys.shape[3] * lay.keys.element_size()
                   * (WINDOW - 1 if lay.is_sliding else ids.shape[1]) for lay in cache.layers)
    assert report["full_bytes"] == expected
    assert report["cache_bytes"] < expected


def test_quantised_cache_keeps_only_the_window_on_sliding_layers(gemma):
    """Sliding layers hold the model's window in full precision (never the whole history,
    never quantised); full layers are quantised; decoding past the window stays exact on an
    all-sliding model, and the byte counts add the windows."""
    from transformers.cache_utils import DynamicSlidingWindowLayer

    from tokenwise.generation.kv_report import cache_report
    from tokenwise.kv.quantized import QuantizedLayer

    ids = _ids(40, seed=9)
    cache, _ = kv.prefill(gemma, ids, kv.KIVI(2, group=8, residual=8))
    kinds = [type(layer) for layer in cache.layers]
    assert kinds == [DynamicSlidingWindowLayer if k == "sliding_attention" else QuantizedLayer
                     for k in KINDS]
    windows = [layer for layer in cache.layers if layer.is_sliding]
    assert all(layer.keys.shape[2] == WINDOW - 1 for layer in windows)
    window_bytes = sum(2 * layer.keys.numel() * layer.keys.element_size() for layer in windows)
    packed = sum(layer.nbytes() for layer in cache.layers if isinstance(layer, QuantizedLayer))
    assert cache.nbytes() == packed + window_bytes
    report = cache_report(cache, ids.shape[1])
    assert report["sliding_window_tokens"] == WINDOW - 1 and report["seen_tokens"] == 40

    sliding = _gemma(["sliding_attention"] * 2)
    ref_logits, ref_cache = _plain(sliding, ids)
    cache, logits = kv.prefill(sliding, ids, kv.KIVI(2, group=8, residual=8))
    torch.testing.assert_close(logits, ref_logits)  # nothing is quantised on such a model
    token = logits.argmax(-1, keepdim=True)
    for pos in range(40, 44):
        ref = _step(sliding, ref_cache, token, pos)
        got = _step(sliding, cache, token, pos)
        torch.testing.assert_close(got, ref)
        token = ref.argmax(-1, keepdim=True)

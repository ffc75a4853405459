"""Presses, budgets and the compressed cache: it really shrinks, positions stay true."""

from __future__ import annotations

import random
import warnings

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from tokenwise import kv
from tokenwise.errors import TokenwiseError
from tokenwise.testbed.needle import NeedleWorld


@pytest.fixture(scope="module")
def reader():
    from tokenwise.models import load

    return load("tw-reader")


@pytest.fixture(scope="module")
def needle_ids(reader):
    item = NeedleWorld(0).item(random.Random(5), 7)
    return reader.encode(item.prompt, add_bos=True)


def _gqa_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, attn_implementation="sdpa")
    return LlamaForCausalLM(config).eval()


ALL = ["streaming", "h2o", "snapkv", "expected_attention", "key_norm", "critic", "random",
       "oracle"]


@pytest.mark.parametrize("name", ALL)
def test_every_press_shrinks_the_tensors_per_head(reader, needle_ids, name):
    press = kv.get(name, budget=0.25)
    cache, logits = kv.prefill(reader, needle_ids, press)
    k = -(-len(needle_ids) // 4)
    for layer in cache.layers:
        assert layer.keys.shape[-2] == k and layer.values.shape[-2] == k
        assert layer.positions.shape == layer.keys.shape[:3]
        # kept tokens stay in position order, every head holds distinct positions
        assert (layer.positions.diff(dim=-1) > 0).all()
    assert cache.nbytes() < cache.peak_bytes
    assert torch.isfinite(logits).all()


def test_heads_keep_different_tokens(reader, needle_ids):
    cache, _ = kv.prefill(reader, needle_ids, kv.SnapKV(0.25, window=8))
    pos = cache.layers[0].positions[0]  # (H, k)
    assert any(not torch.equal(pos[0], pos[h]) for h in range(1, pos.shape[0]))


@pytest.mark.parametrize("bad", [0, -3, 1.5, 0.0, float("nan"), True, "half", []])
def test_bad_budgets_name_the_setting(bad):
    with pytest.raises(TokenwiseError, match="budget="):
        kv.SnapKV(bad)


def test_bad_schedule_and_unknown_settings():
    with pytest.raises(TokenwiseError, match="every=0"):
        kv.StreamingLLM(8, every=0)
    with pytest.raises(TokenwiseError, match="chunk_size=-1"):
        kv.StreamingLLM(8, chunk_size=-1)
    with pytest.raises(TokenwiseError, match="window=0"):
        kv.SnapKV(8, window=0)
    with pytest.raises(TokenwiseError, match="no setting"):
        kv.get("snapkv", budget=8, windw=3)
    with pytest.raises(TokenwiseError, match="unknown press"):
        kv.get("adakv")


def test_per_layer_budget_needs_one_entry_per_layer(reader, needle_ids):
    with pytest.raises(TokenwiseError, match="2 layers"):
        kv.CompressedCache(reader, kv.KeyNorm([8, 8, 8]))
    cache, _ = kv.prefill(reader, needle_ids, kv.KeyNorm([8, 0.5]))
    assert [layer.keys.shape[-2] for layer in cache.layers] == [8, -(-len(needle_ids) // 2)]


def test_per_layer_budget_refuses_chunking_and_eager(reader):
    with pytest.raises(TokenwiseError, match="chunk_size"):
        kv.CompressedCache(reader, kv.KeyNorm([8, 16], chunk_size=8))
    model = _gqa_model()
    model.config._attn_implementation = "eager"
    with pytest.raises(TokenwiseError, match="attn_implementation='sdpa'"):
        kv.CompressedCache(model, kv.KeyNorm([8, 16]))


def test_budget_over_the_prompt_is_a_reported_noop(reader, needle_ids):
    with pytest.warns(UserWarning, match="nothing evicted"):
        cache, _ = kv.prefill(reader, needle_ids, kv.SnapKV(10_000))
    assert cache.get_seq_length() == len(needle_ids)
    assert any("noop" in r for r in cache.report)


def test_keeping_everything_changes_nothing(reader, needle_ids):
    """A scoring press whose budget is exactly the prompt gathers every token: the next
    step's logits equal the full cache's bit for bit."""
    ids = torch.tensor([needle_ids])
    full = reader.forward(ids, use_cache=True, logits_to_keep=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cache, last = kv.prefill(reader, needle_ids, kv.SnapKV(len(needle_ids), window=4))
    assert torch.equal(last, full.logits[:, -1])
    nxt = last.argmax(-1, keepdim=True)
    pos = torch.tensor([[len(needle_ids)]])
    a = reader.forward(nxt, cache=full.cache, position_ids=pos, use_cache=True).logits
    b = reader.forward(nxt, cache=cache, position_ids=pos, use_cache=True).logits
    assert torch.equal(a, b)


def _gathered(full, cache) -> DynamicCache:
    ref = DynamicCache()
    for i, layer in enumerate(cache.layers):
        idx = layer.positions
        expand = idx[..., None].expand(*idx.shape, layer.keys.shape[-1])
        ref.update(full.layers[i].keys.gather(2, expand), full.layers[i].values.gather(2, expand),
                   i)
    return ref


def test_decoding_after_eviction_continues_from_the_true_position(reader, needle_ids):
    """Reference: the full cache gathered to the same kept tokens, decoded at the true
    position. Decoding at the shrunken length instead gives other logits (the test sees it)."""
    ids = torch.tensor([needle_ids])
    cache, last = kv.prefill(reader, needle_ids, kv.StreamingLLM(24, sinks=2))
    full = reader.forward(ids, use_cache=True, logits_to_keep=1).cache
    ref, ref_shrunk = _gathered(full, cache), _gathered(full, cache)
    nxt = last.argmax(-1, keepdim=True)
    true_pos = torch.tensor([[len(needle_ids)]])
    ours = reader.forward(nxt, cache=cache, position_ids=true_pos, use_cache=True).logits
    theirs = reader.forward(nxt, cache=ref, position_ids=true_pos, use_cache=True).logits
    torch.testing.assert_close(ours, theirs)
    shrunk = reader.forward(nxt, cache=ref_shrunk, position_ids=torch.tensor([[24]]),
                            use_cache=True).logits
    assert not torch.allclose(shrunk, theirs)


def test_chunked_prefill_bounds_the_peak(reader, needle_ids):
    press = kv.SnapKV(16, window=4, chunk_size=8)
    cache, _ = kv.prefill(reader, needle_ids, press)
    assert cache.get_seq_length() == 16
    assert cache.peak_tokens <= 16 + 8
    one_pass, _ = kv.prefill(reader, needle_ids, kv.SnapKV(16, window=4))
    assert one_pass.peak_tokens == len(needle_ids)
    assert cache.peak_bytes < one_pass.peak_bytes


def test_chunked_prefill_without_eviction_matches_one_pass(reader, needle_ids):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, chunked = kv.prefill(reader, needle_ids, kv.KeyNorm(1.0, chunk_size=16))
        _, whole = kv.prefill(reader, needle_ids, kv.KeyNorm(1.0))
    torch.testing.assert_close(chunked, whole, rtol=1e-4, atol=1e-4)


def test_compression_every_n_decoded_tokens(reader, needle_ids):
    press = kv.H2O(12, recent=4, every=4)
    cache, last = kv.prefill(reader, needle_ids, press)
    assert cache.get_seq_length() == 12 and cache.layers[0].state is not None
    nxt, lengths = last.argmax(-1, keepdim=True), []
    for step in range(9):
        pos = torch.tensor([[len(needle_ids) + step]])
        out = reader.forward(nxt, cache=cache, position_ids=pos, use_cache=True)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        lengths.append(cache.get_seq_length())
    assert lengths == [13, 14, 15, 12, 13, 14, 15, 12, 13]
    assert int(cache.layers[0].positions.max()) == len(needle_ids) + 8


def test_oracle_keeps_the_given_positions(reader, needle_ids):
    keep = [3, 4, 5, 6]
    cache, _ = kv.prefill(reader, needle_ids, kv.Oracle(10, keep=keep))
    pos = cache.layers[0].positions[0, 0].tolist()
    assert set(keep) <= set(pos) and pos[-1] == len(needle_ids) - 1


def test_question_agnostic_compresses_before_the_question(reader):
    item = NeedleWorld(0).item(random.Random(2), 7)
    ctx = reader.encode(item.context, add_bos=True)
    question = reader.encode(item.prompt[len(item.context):], add_bos=False)
    aware, _ = kv.prefill(reader, ctx, kv.SnapKV(20, window=4), question=question)
    agnostic, _ = kv.prefill(reader, ctx, kv.SnapKV(20, window=4, question_aware=False),
                             question=question)
    assert aware.get_seq_length() == 20
    assert agnostic.get_seq_length() == 20 + len(question)
    assert int(agnostic.layers[0].positions.max()) == len(ctx) + len(question) - 1


def test_gqa_attention_is_averaged_per_kv_head():
    model = _gqa_model()
    ids = torch.randint(0, 64, (1, 40), generator=torch.Generator().manual_seed(1))
    cache, _ = kv.prefill(model, ids, kv.SnapKV(10, window=4))
    assert cache.layers[0].keys.shape == (1, 2, 10, 8)


def test_model_generate_accepts_the_cache(reader, needle_ids):
    ids = torch.tensor([needle_ids])
    press = kv.SnapKV(0.5, window=8)
    cache = kv.CompressedCache(reader, press)
    out = reader.hf_model.generate(ids, attention_mask=torch.ones_like(ids),
                                   cache=cache, max_new_tokens=4, do_sample=False,
                                   pad_token_id=0)
    assert cache.layers[0].seen == len(needle_ids) + 3
    assert cache.get_seq_length() == -(-len(needle_ids) // 2) + 3
    # the same tokens as our own loop over the same press
    pcache, last = kv.prefill(reader, needle_ids, press)
    toks = [int(last.argmax())]
    for step in range(3):
        pos = torch.tensor([[len(needle_ids) + step]])
        logits = reader.forward(torch.tensor([[toks[-1]]]), cache=pcache, position_ids=pos,
                                use_cache=True).logits
        toks.append(int(logits[0, -1].argmax()))
    assert out[0, len(needle_ids):].tolist() == toks
    cache.close()
    pcache.close()


def test_hooks_ignore_other_caches(reader, needle_ids):
    cache = kv.CompressedCache(reader, kv.SnapKV(8, window=4))
    reader.forward(torch.tensor([needle_ids]), use_cache=True)  # a plain pass on the model
    assert cache._pending == {} and cache.layers[0].queries is None
    cache.close()
    assert not reader.hf_model.model.layers[0].self_attn._forward_pre_hooks


@pytest.mark.parametrize("press", [kv.SnapKV(0.25, window=8), kv.H2O(0.25, recent=4),
                                   kv.ExpectedAttention(20, window=8), kv.StreamingLLM(0.1)])
def test_compressed_copy_equals_reading_the_prompt_with_the_press(reader, needle_ids, press):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source, _ = kv.prefill(reader, needle_ids, kv.H2O(1.0))  # keeps all, every query
    copy = source.compressed_copy(press)
    direct, _ = kv.prefill(reader, needle_ids, press)
    for a, b in zip(copy.layers, direct.layers, strict=True):
        assert torch.equal(a.positions, b.positions)
        assert torch.equal(a.keys, b.keys)
    assert source.get_seq_length() == len(needle_ids)


def test_compressed_copy_needs_enough_queries(reader, needle_ids):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source, _ = kv.prefill(reader, needle_ids, kv.SnapKV(1.0, window=4))
    with pytest.raises(TokenwiseError, match="captured 4"):
        source.compressed_copy(kv.SnapKV(8, window=16))


def test_compressed_copy_upto_equals_agnostic_prefill(reader):
    item = NeedleWorld(0).item(random.Random(4), 7)
    ctx = reader.encode(item.context, add_bos=True)
    question = reader.encode(item.prompt[len(item.context):], add_bos=False)
    press = kv.SnapKV(16, window=4, question_aware=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source, _ = kv.prefill(reader, ctx + question, kv.H2O(1.0))
    copy = source.compressed_copy(press, upto=len(ctx))
    direct, _ = kv.prefill(reader, ctx, press, question=question)
    for a, b in zip(copy.layers, direct.layers, strict=True):
        assert torch.equal(a.positions, b.positions[:, :, :16])


def test_recomputed_queries_give_the_models_own_attention(reader, needle_ids):
    """The press's attention (queries rebuilt from the layer input with q_proj and RoPE)
    equals the eager attention weights the model itself returns."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source, _ = kv.prefill(reader, needle_ids, kv.H2O(1.0))
    model = reader.hf_model
    model.config._attn_implementation = "eager"
    try:
        ref = model(input_ids=torch.tensor([needle_ids]), output_attentions=True).attentions
    finally:
        model.config._attn_implementation = "sdpa"
    for i, layer in enumerate(source.layers):
        inp = kv.ScoreInputs(layer.keys, layer.values, layer.positions, layer.queries,
                             layer.query_positions, source._scaling[i], i)
        torch.testing.assert_close(inp.attention(), ref[i], atol=1e-5, rtol=1e-4)

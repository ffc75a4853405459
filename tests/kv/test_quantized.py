"""Quantised caches: packed codes, true bytes, KIVI's layouts and the SAQ staircase."""

from __future__ import annotations

import pytest
import torch

from tokenwise import kv
from tokenwise.errors import TokenwiseError
from tokenwise.kv.quantized import dequantize, pack, quantize, unpack


@pytest.fixture(scope="module")
def reader():
    from tokenwise.models import load

    return load("tw-reader")


@pytest.fixture(scope="module")
def long_ids(reader):
    text = "Memo:\n" + "".join(f"The code of Avo{i} is {100 + 7 * i}.\n" for i in range(8))
    return reader.encode(text, add_bos=True)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_pack_round_trips_and_really_packs(bits):
    codes = torch.randint(0, 2**bits, (3, 5, 16), dtype=torch.uint8)
    packed = pack(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape[-1] == 16 * bits // 8
    assert torch.equal(unpack(packed, bits), codes)


def test_keys_per_channel_values_per_token():
    x = torch.randn(1, 2, 32, 64)
    x[..., 5] *= 50  # an outlier channel, as keys have
    qk = quantize(x, 4, per_channel=True)
    qv = quantize(x, 4, per_channel=False, group=32)
    assert qk.low.shape == (1, 2, 1, 64)  # one min per channel over the tokens
    assert qv.low.shape == (1, 2, 32, 2, 1)  # one min per token and channel group
    err_k = (dequantize(qk) - x)[..., torch.arange(64) != 5].abs().mean()
    err_v = (dequantize(qv) - x)[..., torch.arange(64) != 5].abs().mean()
    assert err_k < err_v  # per channel, the outlier does not flatten the other channels


def test_kivi_bytes_are_true_and_small(reader, long_ids):
    ids = torch.tensor([long_ids])
    cache = kv.QuantizedKVCache(kv.KIVI(2, group=16, residual=16), reader)
    reader.forward(ids, cache=cache, use_cache=True)
    layer = cache.layers[0]
    n_q = sum(k.shape[-2] for k, _, _ in layer.blocks)
    assert 16 <= layer.keys.shape[-2] < 32 and n_q + layer.keys.shape[-2] == len(long_ids)
    expected = 0
    for k, v, _ in layer.blocks:
        expected += k.packed.numel() + v.packed.numel()  # uint8 codes
        expected += 2 * (k.low.numel() + k.scale.numel() + v.low.numel() + v.scale.numel())
    expected += 2 * layer.keys.numel() * layer.keys.element_size()
    assert layer.nbytes() == expected
    assert cache.nbytes() < cache.fp16_bytes()
    b, h, _, d = layer.keys.shape
    block_bytes = sum(k.nbytes() + v.nbytes() for k, v, _ in layer.blocks)
    assert block_bytes <= 0.25 * (2 * 2 * b * h * d * n_q)  # 2-bit codes + fp16 min/scale


def test_one_token_at_a_time_still_quantises(reader):
    """Per-channel keys need a group of tokens; a cache fed one token per pass must still
    quantise once a group has gathered (flushing each token would quantise nothing)."""
    cache = kv.QuantizedKVCache(kv.KIVI(2, group=8, residual=8), reader)
    ids = reader.encode("Memo:\nThe code of Avo is 123.\nThe code of Bel is", add_bos=True)
    for i, tok in enumerate(ids):
        reader.forward(torch.tensor([[tok]]), cache=cache, position_ids=torch.tensor([[i]]),
                       use_cache=True)
    layer = cache.layers[0]
    assert layer.blocks and all(k.shape[-2] == 8 for k, _, _ in layer.blocks)
    assert 8 <= layer.keys.shape[-2] < 16


def test_eight_bit_is_close_to_the_full_cache(reader, long_ids):
    ids = torch.tensor([long_ids])
    full = reader.forward(ids, use_cache=True).cache
    cache = kv.QuantizedKVCache(kv.KIVI(8, group=16, residual=16), reader)
    reader.forward(ids, cache=cache, use_cache=True)
    nxt = torch.tensor([[5]])
    pos = torch.tensor([[len(long_ids)]])
    a = reader.forward(nxt, cache=full, position_ids=pos, use_cache=True).logits.softmax(-1)
    b = reader.forward(nxt, cache=cache, position_ids=pos, use_cache=True).logits.softmax(-1)
    assert (a - b).abs().max() < 0.02


def test_saq_staircase_narrows_with_age(reader, long_ids):
    ids = torch.tensor([long_ids])
    spec = kv.SAQ(bits=(8, 4, 2), ages=(16, 48), group=8, residual=8)
    cache = kv.QuantizedKVCache(spec, reader)
    reader.forward(ids, cache=cache, use_cache=True)
    widths = [k.bits for k, _, _ in cache.layers[0].blocks]
    assert widths == sorted(widths)  # oldest blocks narrowest
    assert widths[0] == 2 and widths[-1] == 8 and 4 in widths
    hist = cache.bits_histogram()
    assert sum(hist.values()) == 2 * len(long_ids)


@pytest.mark.parametrize("kwargs, match", [
    ({"bits": (3,)}, "bits=3"), ({"bits": (2, 4), "ages": (8,)}, "wide to narrow"),
    ({"bits": (8, 4), "ages": ()}, "give 1 age"), ({"bits": (8, 4, 2), "ages": (9, 3)},
                                                   "must increase"),
    ({"group": 0}, "group=0"), ({"residual": -1}, "residual=-1"),
])
def test_bad_quant_settings_name_the_setting(kwargs, match):
    with pytest.raises(TokenwiseError, match=match):
        kv.QuantSpec(**kwargs)


def test_model_generate_with_a_quantised_cache(reader, long_ids):
    ids = torch.tensor([long_ids])
    cache = kv.QuantizedKVCache(kv.KIVI(8, group=16, residual=16), reader)
    out = reader.hf_model.generate(ids, attention_mask=torch.ones_like(ids),
                                   cache=cache, max_new_tokens=3, do_sample=False,
                                   pad_token_id=0)
    plain = reader.hf_model.generate(ids, attention_mask=torch.ones_like(ids),
                                     max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert cache.get_seq_length() == len(long_ids) + 2
    assert out.tolist() == plain.tolist()


def test_a_cache_built_without_the_model_adds_quantised_layers_as_they_come(reader, long_ids):
    """transformers (5.25) refuses an empty layer list beside a class to replicate: the
    model-less cache must still build, and hold what the model-built one holds."""
    ids = torch.tensor([long_ids])
    spec = kv.KIVI(2, group=16, residual=16)
    alone, built = kv.QuantizedKVCache(spec), kv.QuantizedKVCache(spec, reader)
    out_alone = reader.forward(ids, cache=alone, use_cache=True)
    out_built = reader.forward(ids, cache=built, use_cache=True)
    assert len(alone.layers) == len(built.layers)
    assert alone.nbytes() == built.nbytes() and alone.get_seq_length() == len(long_ids)
    torch.testing.assert_close(out_alone.logits, out_built.logits)

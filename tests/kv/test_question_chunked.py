"""Question-aware chunked prefill: each chunk is scored by a probe of the question read right
after it, the probe is removed, and the question is read for real at the end."""

from __future__ import annotations

import random
import warnings

import pytest
import torch

import tokenwise as tw
from tokenwise import kv
from tokenwise.errors import TokenwiseError
from tokenwise.generation.ead import generate_ead
from tokenwise.kv.cache import cache_keyword
from tokenwise.testbed.needle import NeedleWorld


@pytest.fixture(scope="module")
def reader():
    from tokenwise.models import load

    return load("tw-reader")


def _item(reader, seed: int, distractors: int = 10):
    """``(context ids, question ids, needle line positions, the needle key's first token)``."""
    it = NeedleWorld(0).item(random.Random(seed), distractors)
    start = it.context.index(it.needle)
    before = reader.encode(it.context[:start], add_bos=True)
    line = reader.encode(it.needle, add_bos=False)
    after = reader.encode(it.context[start + len(it.needle):], add_bos=False)
    question = reader.encode(it.prompt[len(it.context):], add_bos=False)
    needle = list(range(len(before), len(before) + len(line)))
    return before + line + after, question, needle, needle[3]  # "The code of <key>"


def _hits(cache, positions: list[int]) -> int:
    """(layer, head, position) triples of ``positions`` the cache keeps."""
    want = torch.tensor(positions)
    return sum(int(torch.isin(want, layer.positions[0, h]).sum())
               for layer in cache.layers for h in range(layer.positions.shape[1]))


class _Recording(kv.SnapKV):
    """SnapKV that records every score it returns."""

    def score(self, inputs):
        out = super().score(inputs)
        self.log.append((inputs.layer, out.clone()))
        return out


@pytest.mark.parametrize("seed", [3, 4, 9])
def test_question_aware_chunks_keep_the_needle_the_agnostic_ones_lose(reader, seed):
    ctx, question, needle, key = _item(reader, seed)
    settings = {"window": 8, "kernel": 1, "chunk_size": 16}
    aware, _ = kv.prefill(reader, ctx, kv.SnapKV(24, **settings), question=question)
    agnostic, _ = kv.prefill(reader, ctx, kv.SnapKV(24, question_aware=False, **settings),
                             question=question)
    # the chunk holding the needle is compressed by the question's attention only when aware
    assert _hits(aware, needle) >= 2 * _hits(agnostic, needle) + 4
    assert _hits(aware, [key]) >= 5 > 2 >= _hits(agnostic, [key])


def _reference(reader, ctx, question, k, chunk, window):
    """The algorithm by hand: a cache that never evicts by itself, the model's own eager
    attention weights of the question's last ``window`` rows over [kept + chunk + question],
    the top ``k`` of the context part kept per head (the window's own tokens first), the
    question's entries cut; at the end the question read once. Returns the per-compression
    scores (context part), the cache and the last logits."""
    model = reader.hf_model
    ref = kv.CompressedCache(reader, kv.StreamingLLM(1.0))
    ref.hold = True
    n_q, scores = len(question), []
    model.config._attn_implementation = "eager"
    try:
        for start in range(0, len(ctx), chunk):
            piece = ctx[start:start + chunk]
            end = start + len(piece)
            if ref.get_seq_length() + len(piece) <= k:
                model(input_ids=torch.tensor([piece]), position_ids=torch.arange(start, end)[None],
                      use_cache=True, **{cache_keyword(model): ref})
                continue
            out = model(input_ids=torch.tensor([piece + question]),
                        position_ids=torch.arange(start, end + n_q)[None], use_cache=True,
                        output_attentions=True, **{cache_keyword(model): ref})
            for i, layer in enumerate(ref.layers):
                attn = out.attentions[i][0, :, -window:, :]  # (H_q, W, S) the model's own
                h_kv, s = layer.keys.shape[1], attn.shape[-1]
                sc = attn.mean(1).view(h_kv, -1, s).mean(1)[:, :s - n_q]  # (H_kv, S - n_q)
                pos = layer.positions[0, :, :s - n_q]
                sc = torch.where(pos >= end + n_q - window, float("inf"), sc)
                scores.append((i, sc))
                idx = sc.topk(k, -1).indices.sort(-1).values[None]  # (1, H_kv, k)
                d = layer.keys.shape[-1]
                layer.keys = layer.keys.gather(2, idx[..., None].expand(-1, -1, -1, d))
                layer.values = layer.values.gather(2, idx[..., None].expand(-1, -1, -1, d))
                layer.positions = layer.positions.gather(2, idx)
                layer.seen = end
    finally:
        model.config._attn_implementation = "sdpa"
    out = model(input_ids=torch.tensor([question]),
                position_ids=torch.arange(len(ctx), len(ctx) + n_q)[None], use_cache=True,
                **{cache_keyword(model): ref})
    return scores, ref, out.logits[:, -1]


def test_each_chunk_is_scored_by_the_questions_attention_as_a_by_hand_reference(reader):
    ctx, question, _, _ = _item(reader, 6)
    k, chunk, window = 24, 16, 8
    press = _Recording(k, window=window, kernel=1, chunk_size=chunk)
    press.log = []
    cache, logits = kv.prefill(reader, ctx, press, question=question)
    ref_scores, ref, ref_logits = _reference(reader, ctx, question, k, chunk, window)
    assert len(press.log) == len(ref_scores) > 2 * len(cache.layers)  # several chunks probed
    for (layer, got), (ref_layer, want) in zip(press.log, ref_scores, strict=True):
        assert layer == ref_layer
        ctx_part = got[0, :, :want.shape[-1]]  # the probe's own entries are not candidates
        assert torch.equal(torch.isinf(ctx_part), torch.isinf(want))
        finite = ~torch.isinf(want)
        torch.testing.assert_close(ctx_part[finite], want[finite], atol=1e-5, rtol=1e-4)
    for ours, theirs in zip(cache.layers, ref.layers, strict=True):
        assert torch.equal(ours.positions, theirs.positions)
        torch.testing.assert_close(ours.keys, theirs.keys, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)


def test_no_probe_is_left_and_the_peak_is_bounded(reader):
    ctx, question, _, _ = _item(reader, 2)
    k, chunk, n_q = 30, 20, len(question)
    cache, _ = kv.prefill(reader, ctx, kv.SnapKV(k, window=8, chunk_size=chunk),
                          question=question)
    question_pos = torch.arange(len(ctx), len(ctx) + n_q)
    for layer in cache.layers:
        assert layer.keys.shape[-2] == layer.positions.shape[-1] == k + n_q
        pos = layer.positions[0]  # (H, k + n_q)
        assert (pos.diff(dim=-1) > 0).all()
        assert (pos[:, :k] < len(ctx)).all()  # k context tokens, then the question, once
        assert torch.equal(pos[:, k:], question_pos.expand(pos.shape[0], -1))
        assert layer.seen == len(ctx) + n_q
    assert cache.peak_tokens == k + chunk + n_q  # a full chunk probed on top of the budget
    probes = [r for r in cache.report if "probe" in r]
    assert probes and all(r["probe"] == n_q and r["after"] == k for r in probes)
    n_chunks = -(-len(ctx) // chunk)
    assert cache.prefill_passes == n_chunks + 1
    assert cache.prefill_tokens == len(ctx) + n_q * (1 + len(probes) // len(cache.layers))


def test_one_chunk_equals_one_pass_snapkv_keeping_the_question(reader):
    """Chunk >= context: the probe is the whole prompt, so the context kept equals one-pass
    SnapKV whose window is the question (budget k + question, the question kept whole)."""
    ctx, question, _, _ = _item(reader, 5)
    n_q = len(question)
    ours, _ = kv.prefill(reader, ctx, kv.SnapKV(20, window=n_q, chunk_size=len(ctx)),
                         question=question)
    one_pass, _ = kv.prefill(reader, ctx + question, kv.SnapKV(20 + n_q, window=n_q))
    for a, b in zip(ours.layers, one_pass.layers, strict=True):
        assert torch.equal(a.positions, b.positions)


def test_question_tokens_splits_the_prompt_like_the_question_argument(reader):
    ctx, question, _, _ = _item(reader, 1)
    settings = {"window": 4, "chunk_size": 16}
    split, logits = kv.prefill(reader, ctx + question,
                               kv.SnapKV(20, question_tokens=len(question), **settings))
    apart, ref = kv.prefill(reader, ctx, kv.SnapKV(20, **settings), question=question)
    assert torch.equal(logits, ref)
    for a, b in zip(split.layers, apart.layers, strict=True):
        assert torch.equal(a.positions, b.positions)


def test_generate_and_ead_take_question_tokens(reader, small, large):
    prompt = ("Memo:\nThe code of Avo is 123.\nThe code of Ela is 456.\n"
              "Q: What is the code of Avo?\nA:")
    n = len(reader.encode(prompt, add_bos=True))
    # built from settings, as the server's "tokenwise": {"kv": {...}} builds it
    press = kv.get("snapkv", budget=8, window=4, chunk_size=6, question_tokens=10)
    g = tw.generate(reader, prompt, kv=press, max_new_tokens=2)
    assert g.kv["kept_tokens"] == 8 + 10 + len(g.tokens) - 1
    assert g.kv["seen_tokens"] == n + len(g.tokens) - 1  # no probe counted as read
    plain = generate_ead(small, large, prompt, up=1e9, max_new_tokens=2,
                         kv=kv.SnapKV(8, window=4, chunk_size=6))
    probed = generate_ead(small, large, prompt, up=1e9, max_new_tokens=2, kv=press)
    # the probes are passes and tokens the model really ran
    assert probed.tokens_processed["tw-small"] > plain.tokens_processed["tw-small"]
    n = len(small.encode(prompt, add_bos=True))
    passes = -(-(n - 10) // 6) + 1  # the context's chunks, then the question
    assert (probed.forward_passes["tw-small"] - plain.forward_passes["tw-small"]
            == passes - -(-n // 6))


def test_presses_without_queries_skip_the_probe(reader):
    ctx, question, _, _ = _item(reader, 2)
    chunk = 20
    cache, _ = kv.prefill(reader, ctx, kv.StreamingLLM(30, chunk_size=chunk), question=question)
    agnostic, _ = kv.prefill(reader, ctx, kv.StreamingLLM(30, chunk_size=chunk),
                             question=question[:0])
    assert cache.prefill_passes == -(-len(ctx) // chunk) + 1
    assert cache.prefill_tokens == len(ctx) + len(question)
    assert cache.peak_tokens <= 30 + chunk
    for a, b in zip(cache.layers, agnostic.layers, strict=True):
        assert torch.equal(a.positions[..., :30], b.positions)


def test_settings_are_checked(reader):
    with pytest.raises(TokenwiseError, match="question_tokens=8 needs chunk_size"):
        kv.SnapKV(0.25, question_tokens=8)
    for bad in (0, -2, True, 1.5):
        with pytest.raises(TokenwiseError, match=f"question_tokens={bad!r}: allowed"):
            kv.SnapKV(0.25, chunk_size=8, question_tokens=bad)
    ids = reader.encode("Memo:\nThe code of Avo is 123.\nQ:", add_bos=True)
    with pytest.raises(TokenwiseError, match=f"question_tokens={len(ids)} for a prompt of "
                                             f"{len(ids)} tokens: allowed fewer"):
        kv.prefill(reader, ids, kv.SnapKV(4, chunk_size=4, question_tokens=len(ids)))
    with pytest.raises(TokenwiseError, match="give the question one way"):
        kv.prefill(reader, ids, kv.SnapKV(4, chunk_size=4, question_tokens=2), question=ids[:2])


def test_drop_last_rewinds_every_layer(reader):
    ids = reader.encode("Memo:\nThe code of Avo is 123.\nQ: What is", add_bos=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cache, _ = kv.prefill(reader, ids, kv.H2O(1.0))  # keeps all, state and every query
    for layer in cache.layers:
        layer.state = torch.arange(len(ids), dtype=torch.float).expand(1, 8, -1).clone()
    cache.drop_last(4)
    keep = len(ids) - 4
    for layer in cache.layers:
        assert layer.keys.shape[-2] == layer.values.shape[-2] == keep
        assert torch.equal(layer.positions[0, 0], torch.arange(keep))
        assert torch.equal(layer.state[0, 0], torch.arange(keep, dtype=torch.float))
        assert torch.equal(layer.query_positions, torch.arange(keep))
        assert layer.seen == keep
    # the next token continues at the first dropped position: equal to a prefill of the rest
    out = reader.forward(torch.tensor([ids[keep:keep + 1]]), cache=cache,
                         position_ids=torch.tensor([[keep]]), use_cache=True)
    ref = reader.forward(torch.tensor([ids[:keep + 1]]), use_cache=False)
    torch.testing.assert_close(out.logits[0, -1], ref.logits[0, -1], atol=1e-5, rtol=1e-4)
    cache.drop_last(0)
    with pytest.raises(TokenwiseError, match=r"n=-1: allowed a whole number >= 0"):
        cache.drop_last(-1)
    with pytest.raises(TokenwiseError, match="holds"):
        cache.drop_last(keep + 2)


def test_drop_last_refuses_what_is_not_a_pass_kept_whole(reader):
    ids = reader.encode("Memo:\nThe code of Avo is 123.\nThe code of Ela is 456.\n",
                        add_bos=True)
    cache, _ = kv.prefill(reader, ids, kv.RandomPress(10, seed=0))
    before = [layer.positions.clone() for layer in cache.layers]
    with pytest.raises(TokenwiseError, match="different positions in different heads"):
        cache.drop_last(9)
    assert all(torch.equal(a, layer.positions) for a, layer in zip(before, cache.layers,
                                                                   strict=True))
    cache, _ = kv.prefill(reader, ids, kv.Oracle(5, keep=[0, 1, 2, 3, 4]))  # newest evicted
    with pytest.raises(TokenwiseError, match=f"no longer holds its newest token read "
                                             rf"\(position {len(ids) - 1}\)"):
        cache.drop_last(2)

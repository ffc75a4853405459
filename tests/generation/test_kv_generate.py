"""tokenwise.generate(..., kv=...): compressed and quantised caches in the decode loop."""

from __future__ import annotations

import random
import warnings

import pytest

import tokenwise as tw
from tokenwise import kv
from tokenwise.errors import TokenwiseError
from tokenwise.testbed.needle import NeedleWorld


@pytest.fixture(scope="module")
def reader():
    from tokenwise.models import load

    return load("tw-reader")


@pytest.fixture(scope="module")
def prompts():
    world = NeedleWorld(0)
    rng = random.Random(11)
    return [world.item(rng, n).prompt for n in (3, 7, 15)]


def test_noop_budget_is_bit_identical_to_the_full_cache(reader, prompts):
    full = tw.generate(reader, prompts[1], max_new_tokens=5, top_logprobs=3)
    with pytest.warns(UserWarning, match="nothing evicted"):
        ours = tw.generate(reader, prompts[1], max_new_tokens=5, top_logprobs=3,
                           kv=kv.SnapKV(10_000))
    assert [r.id for r in ours.tokens] == [r.id for r in full.tokens]
    assert [r.logprob for r in ours.tokens] == [r.logprob for r in full.tokens]
    assert [r.top_logprobs for r in ours.tokens] == [r.top_logprobs for r in full.tokens]


def test_quantised_cache_in_generate(reader, prompts):
    full = tw.generate(reader, prompts[2], max_new_tokens=4, stop="\n")
    ours = tw.generate(reader, prompts[2], max_new_tokens=4, stop="\n",
                       kv=kv.KIVI(8, group=16, residual=16))
    assert ours.text == full.text


def test_batch_rows_are_decoded_one_by_one(reader, prompts):
    press = kv.SnapKV(0.5, window=8)
    batch = tw.generate(reader, prompts, max_new_tokens=4, kv=press)
    alone = [tw.generate(reader, p, max_new_tokens=4, kv=press) for p in prompts]
    assert [g.text for g in batch] == [g.text for g in alone]
    assert [{r.row for r in g.tokens} for g in batch if g.tokens] == \
        [{i} for i, g in enumerate(batch) if g.tokens]


def test_streaming_with_kv_keeps_row_indices(reader, prompts):
    records = list(tw.generate(reader, prompts[:2], max_new_tokens=3, stream=True,
                               kv=kv.StreamingLLM(32, sinks=2)))
    assert {r.row for r in records} <= {0, 1} and records[-1].row == 1


def test_seeded_sampling_with_kv_is_reproducible(reader, prompts):
    a = tw.generate(reader, prompts[0], "temperature", max_new_tokens=4, seed=3,
                    kv=kv.KeyNorm(0.5))
    b = tw.generate(reader, prompts[0], "temperature", max_new_tokens=4, seed=3,
                    kv=kv.KeyNorm(0.5))
    assert a.text == b.text


def test_chunked_press_in_generate(reader, prompts):
    g = tw.generate(reader, prompts[2], max_new_tokens=3, kv=kv.SnapKV(0.5, chunk_size=32))
    assert g.finish_reason in ("length", "eos", "stop")


@pytest.mark.parametrize("bad, match", [
    ("snapkv", "kv='snapkv'"), (0.25, "kv=0.25"),
])
def test_bad_kv_is_refused(reader, bad, match):
    with pytest.raises(TokenwiseError, match=match):
        tw.generate(reader, "Memo:", kv=bad)


def test_question_agnostic_press_needs_the_split(reader):
    with pytest.raises(TokenwiseError, match="question_aware=False"):
        tw.generate(reader, "Memo:", kv=kv.SnapKV(8, question_aware=False))


def test_without_kv_nothing_changes(reader, prompts):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no no-op warning without kv
        g = tw.generate(reader, prompts[0], max_new_tokens=2)
    assert g.prompt_tokens > 0

"""token_stats' unchecked fast path gives what the checked path gives, row for row."""

from __future__ import annotations

import math

import pytest
import torch

from tokenwise.errors import TokenwiseError
from tokenwise.signals import _chunk_stats, token_stats

INF = math.inf
FIELDS = ("logprobs", "entropies", "varentropies", "top_ids", "top_logprobs")


def _checked(logits: torch.Tensor, ids: torch.Tensor, top_k: int) -> tuple[torch.Tensor, ...]:
    """Every row through the checked path alone (one row per chunk)."""
    n = logits.shape[0]
    outs = (torch.empty(n), torch.empty(n), torch.empty(n),
            torch.empty(n, top_k, dtype=torch.int64), torch.empty(n, top_k))
    for row in range(n):
        _chunk_stats(logits[row:row + 1], ids[row:row + 1], top_k, outs, row, checked=True)
    return outs


def _rows(v: int, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(7, v, generator=gen) * 4
    ids = torch.randint(0, v, (7,), generator=gen)
    logits[1, ::2] -= 400.0  # half the row underflows to p == 0 but stays finite
    logits[3, v // 3:] = -INF  # partly masked
    logits[4] = -INF  # fully masked
    logits[6, 5] = -INF
    ids[6] = 5  # a masked chosen token
    return logits, ids


@pytest.mark.parametrize("chunk_size", [None, 1, 3, 7])
def test_fast_path_equals_checked_path_bit_for_bit(chunk_size):
    logits, ids = _rows(v=300)
    got = token_stats(logits, ids, top_k=4, chunk_size=chunk_size)
    for field, ref in zip(FIELDS, _checked(logits, ids, 4), strict=True):
        value = getattr(got, field)
        if field == "top_ids":  # ties among -inf entries are arbitrary
            finite = torch.isfinite(got.top_logprobs)
            assert torch.equal(value[finite], ref[finite])
        else:
            assert torch.equal(value, ref), field
    assert got.entropies[4].item() == 0.0 and got.logprobs[6].item() == -INF


def test_auto_chunks_split_a_large_vocabulary():
    # 2**19 logits a row: the CPU default takes 2 rows a chunk, so rows 3 and 4 (masked) are
    # redone on the checked path inside a chunk that also holds an unmasked row. Sums over
    # 2**19 entries may round differently in a 2-row chunk than in a 1-row one, hence close.
    logits, ids = _rows(v=2**19)
    got = token_stats(logits, ids, top_k=2)
    ref = token_stats(logits, ids, top_k=2, chunk_size=1)
    for field in ("logprobs", "entropies", "varentropies", "top_logprobs"):
        torch.testing.assert_close(getattr(got, field), getattr(ref, field), rtol=1e-6,
                                   atol=1e-6)
    assert torch.equal(got.top_ids[:4], ref.top_ids[:4])
    assert got.entropies[4].item() == 0.0 and got.logprobs[6].item() == -INF


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_fast_path_other_dtypes(dtype):
    logits, ids = _rows(v=64)
    logits = logits.clamp_min(-60.0).to(dtype)  # half types: no -400 offsets, -inf kept
    logits[4] = -INF
    got = token_stats(logits, ids, top_k=3)
    for field, ref in zip(FIELDS[:3], _checked(logits, ids, 3)[:3], strict=True):
        assert torch.equal(getattr(got, field), ref), field
    assert got.entropies.dtype == torch.float32


def test_integer_logits():
    logits = torch.tensor([[0, 0, 0, 0], [5, 1, 1, 1]])
    got = token_stats(logits, torch.tensor([0, 0]), top_k=1)
    assert got.entropies[0].item() == pytest.approx(math.log(4))
    assert got.logprobs[0].item() == pytest.approx(-math.log(4))
    assert got.top_ids[1, 0].item() == 0


@pytest.mark.parametrize(("bad", "kind"), [(math.nan, "NaN"), (INF, r"\+inf")])
def test_first_bad_row_named_after_masked_rows(bad, kind):
    logits, ids = _rows(v=50)
    logits[5, 7] = bad  # after the masked rows 3, 4 (redone first, without raising)
    for chunk_size in (None, 1, 2, 4):
        with pytest.raises(TokenwiseError, match=rf"{kind} in the row at index \(5,\)"):
            token_stats(logits, ids, chunk_size=chunk_size)


@pytest.mark.parametrize("vocab", [5120, 5121, 2**15 + 77])
def test_block_topk_equals_torch_topk(vocab):
    from tokenwise.signals import _topk_rows

    gen = torch.Generator().manual_seed(vocab)
    values = torch.randn(6, vocab, generator=gen)
    values[1, :-3] = -INF  # three finite entries, at the end of the row
    values[2] = -INF
    values[3, 200:] = -INF  # top-5 inside the first two blocks
    values[4, -1] = 50.0  # the largest entry is the last one
    got_values, got_ids = _topk_rows(values, 5)
    ref_values, ref_ids = values.topk(5, dim=1)
    assert torch.equal(got_values, ref_values)
    finite = torch.isfinite(ref_values)
    assert torch.equal(got_ids[finite], ref_ids[finite])
    assert torch.equal(values.gather(1, got_ids), got_values)  # the ids hold those values

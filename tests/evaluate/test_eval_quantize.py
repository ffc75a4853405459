"""tokenwise.evaluate.quantize: round-to-nearest, its bit budget, and the peer library."""

from __future__ import annotations

import itertools

import pytest
import torch

from tokenwise.errors import TokenwiseError
from tokenwise.evaluate import quantize, storage_bits
from tokenwise.evaluate.compressed import linear_layers
from tokenwise.evaluate.quantize import rtn


def _naive_rtn(w: torch.Tensor, bits: int, g: int, symmetric: bool) -> torch.Tensor:
    out = torch.empty_like(w)
    for r, c in itertools.product(range(w.shape[0]), range(0, w.shape[1], g)):
        x = w[r, c:c + g]
        if symmetric:
            qmax = 2 ** (bits - 1) - 1
            s = float(x.abs().max()) / qmax or 1.0
            out[r, c:c + g] = torch.clamp(torch.round(x / s), -qmax - 1, qmax) * s
        else:
            lo, hi = float(x.min()), float(x.max())
            s = (hi - lo) / (2**bits - 1) or 1.0
            z = round(-lo / s)
            out[r, c:c + g] = (torch.clamp(torch.round(x / s) + z, 0, 2**bits - 1) - z) * s
    return out


@pytest.mark.parametrize("bits", [8, 4, 3, 2])
@pytest.mark.parametrize("symmetric", [False, True])
def test_rtn_matches_a_naive_loop(bits, symmetric):
    w = torch.randn(6, 24, generator=torch.Generator().manual_seed(bits))
    got = rtn(w, bits, 8, symmetric)
    assert torch.allclose(got, _naive_rtn(w, bits, 8, symmetric), atol=1e-6)
    for group in got.reshape(6, 3, 8).reshape(-1, 8):
        assert len(torch.unique(group)) <= 2**bits


def test_rtn_error_is_within_half_a_step():
    w = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    for bits in (8, 4, 3):
        step = (w.reshape(4, 2, 32).amax(-1) - w.reshape(4, 2, 32).amin(-1)) / (2**bits - 1)
        err = (rtn(w, bits, 32) - w).abs().reshape(4, 2, 32).amax(-1)
        assert (err <= step / 2 + 1e-6).all()


def test_quantize_model_and_true_bit_budget(small):
    out = quantize(small, bits=4, group_size=32)
    layers = linear_layers(out.model.hf_model)
    originals = dict(linear_layers(small.hf_model))
    for name, mod in layers:
        assert torch.equal(mod.weight, rtn(originals[name].weight, 4, 32))
    assert out.info["bits_per_compressed_weight"] == 4 + (16 + 4) / 32
    n = sum(m.weight.numel() for _, m in layers)
    assert out.info["storage_bits"] == storage_bits(n, bits=4, groups=n // 32, symmetric=False) \
        + (small.num_parameters() - n) * 16
    assert "not smaller" in out.info["storage_note"]
    # the tied head / embeddings stay as they were
    assert torch.equal(out.model.hf_model.get_input_embeddings().weight,
                       small.hf_model.get_input_embeddings().weight)


@pytest.mark.parametrize("kwargs, needle", [
    ({"bits": 5}, "bits=5: allowed 2, 3, 4, 8"),
    ({"bits": 4, "group_size": 7}, "group_size=7 does not divide"),
    ({"bits": 4, "group_size": 0}, "group_size=0"),
    ({"bits": True}, "bits=True"),
])
def test_bad_settings_are_refused(small, kwargs, needle):
    with pytest.raises(TokenwiseError, match=needle):
        quantize(small, **kwargs)


def test_per_row_groups():
    w = torch.randn(3, 10, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(rtn(w, 4, None), _naive_rtn(w, 4, 10, False), atol=1e-6)


def test_peer_qint8_agrees_with_our_per_row_symmetric_rtn(small):
    pytest.importorskip("optimum.quanto")
    from tokenwise.evaluate import quanto_quantize

    peer = dict(linear_layers(quanto_quantize(small, bits=8).model.hf_model))
    ours = dict(linear_layers(quantize(small, bits=8, group_size=None,
                                       symmetric=True).model.hf_model))
    for name, mod in peer.items():
        # same grid (absmax / 127 per row); rounding of exact ties may differ
        same = torch.isclose(mod.weight, ours[name].weight, rtol=1e-5, atol=1e-7)
        assert same.float().mean() > 0.999, name
    with pytest.raises(TokenwiseError, match="bits=3"):
        quanto_quantize(small, bits=3)

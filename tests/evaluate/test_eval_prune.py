"""tokenwise.evaluate.prune: magnitude and Wanda, unstructured and N:M, saved directories."""

from __future__ import annotations

import json

import pytest
import torch

import tokenwise as tw
from tokenwise.errors import TokenwiseError
from tokenwise.evaluate import RECORD_NAME, prune
from tokenwise.evaluate.compressed import linear_layers
from tokenwise.evaluate.prune import parse_pattern, prune_mask

CALIBRATION = ["Q: Where was Ada born?\nA: the city of Velmora\n", "12+30=42\n7+5=12\n"]


def _weights(lm):
    return dict(linear_layers(lm.hf_model))


def test_magnitude_unstructured_drops_the_smallest_share_of_each_layer(small):
    snapshot = {n: m.weight.clone() for n, m in _weights(small).items()}
    out = prune(small, method="magnitude", sparsity=0.3)
    before, after = _weights(small), _weights(out.model)
    for name, mod in after.items():
        w0, w = before[name].weight, mod.weight
        zero = w == 0
        assert int(zero.sum()) == round(0.3 * w.numel())
        # every dropped weight is no larger than every kept one
        assert w0[zero].abs().max() <= w0[~zero].abs().min()
        assert torch.equal(w[~zero], w0[~zero])
    assert out.info["sparsity"] == 0.3 and out.info["pattern"] == "unstructured"
    # the original model is untouched, and so are the embeddings and the tied head
    assert all(torch.equal(m.weight, snapshot[n]) for n, m in before.items())
    assert torch.equal(out.model.hf_model.get_input_embeddings().weight,
                       small.hf_model.get_input_embeddings().weight)


def test_two_four_keeps_the_two_largest_of_every_four(small):
    out = prune(small, method="magnitude", pattern="2:4")
    for name, mod in _weights(out.model).items():
        w0 = _weights(small)[name].weight.reshape(-1, 4)
        kept = (mod.weight != 0).reshape(-1, 4)
        assert (kept.sum(-1) == 2).all()
        top2 = w0.abs().topk(2, dim=-1).indices
        assert torch.equal(kept, torch.zeros_like(kept).scatter_(-1, top2, True))
    assert out.info["sparsity"] == 0.5 and out.info["bits_per_compressed_weight"] == 9.0


def test_wanda_matches_a_reference_on_the_first_block(small):
    out = prune(small, method="wanda", sparsity=0.5, calibration=CALIBRATION)
    # reference: |W| * ||X_j|| of the dense model's inputs (the first block sees no pruning)
    name = "model.layers.0.mlp.down_proj"
    dense = dict(small.hf_model.named_modules())[name]
    sq = torch.zeros(dense.in_features)

    def hook(_m, args, _o):
        sq.add_(args[0].reshape(-1, args[0].shape[-1]).pow(2).sum(0))
    handle = dense.register_forward_hook(hook)
    with torch.no_grad():
        for text in CALIBRATION:
            small.hf_model(torch.tensor([list(small.start_ids) + small.encode(text)]))
    handle.remove()
    score = dense.weight.abs() * sq.sqrt()[None, :]
    drop = round(0.5 * dense.in_features)
    expected = torch.ones_like(score, dtype=torch.bool)
    for r in range(score.shape[0]):
        expected[r, score[r].argsort()[:drop]] = False
    got = dict(out.model.hf_model.named_modules())[name].weight != 0
    assert (got == expected).float().mean() > 0.999  # ties may order differently
    assert (got.sum(-1) == dense.in_features - drop).all()  # per row, as Wanda compares
    assert out.info["calibration_texts"] == 2


def test_prune_mask_per_row_and_whole_matrix():
    scores = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]])
    assert prune_mask(scores, 0.5, None, per_row=True).tolist() == [
        [False, False, True, True], [False, False, True, True]]
    assert prune_mask(scores, 0.5, None, per_row=False).tolist() == [
        [False, False, False, False], [True, True, True, True]]


def test_saved_directory_loads_with_its_record(small, tmp_path):
    out = prune(small, method="magnitude", sparsity=0.5)
    path = out.save(tmp_path / "pruned")
    again = tw.load(str(path))
    for name, mod in _weights(again).items():
        assert torch.equal(mod.weight, _weights(out.model)[name].weight)
    record = json.loads((path / RECORD_NAME).read_text())
    assert record["method"] == "prune-magnitude" and record["sparsity"] == 0.5
    assert "not smaller" in record["storage_note"]
    with pytest.raises(TokenwiseError, match="not empty"):
        out.save(path)


@pytest.mark.parametrize("kwargs, needle", [
    ({"sparsity": 1.0}, "sparsity=1.0: allowed a number with 0 <= s < 1"),
    ({"sparsity": -0.1}, "sparsity=-0.1"),
    ({"sparsity": "0.5"}, "sparsity='0.5'"),
    ({}, "give a sparsity"),
    ({"pattern": "2-4"}, "pattern='2-4': allowed 'N:M'"),
    ({"pattern": "4:2"}, "0 < N < M"),
    ({"pattern": "2:4", "sparsity": 0.3}, "does not match pattern 2:4"),
    ({"pattern": "3:7"}, "divisible by 7"),
    ({"method": "random", "sparsity": 0.5}, "method='random'"),
    ({"method": "wanda", "sparsity": 0.5}, "wanda needs calibration texts"),
])
def test_bad_settings_are_refused(small, kwargs, needle):
    with pytest.raises(TokenwiseError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        prune(small, **kwargs)


def test_parse_pattern():
    assert parse_pattern(" 4:8 ") == (4, 8) and parse_pattern(None) is None

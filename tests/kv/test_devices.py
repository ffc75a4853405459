"""What keeps the kv code device-clean: no tensor left to the default device, no tie that a
GPU's topk would break differently, one host read of the positions per pass (not per layer)."""

from __future__ import annotations

import warnings

import torch
from torch.overrides import TorchFunctionMode

from tokenwise import kv
from tokenwise.kv.base import ScoreInputs, keep_indices


def _inputs(s: int) -> ScoreInputs:
    k = torch.zeros(1, 2, s, 4)
    return ScoreInputs(k, k, torch.arange(s).view(1, 1, s).expand(1, 2, s), None, None, 1.0, 3)


def test_random_press_draws_on_the_cpu_whatever_the_default_device():
    inp = _inputs(7)
    want = kv.RandomPress(3, seed=4).score(inp)
    torch.set_default_device("meta")  # a tensor made without device= would land here
    try:
        got = kv.RandomPress(3, seed=4).score(inp)
    finally:
        torch.set_default_device("cpu")
    assert got.device == inp.keys.device and torch.equal(got, want)


def test_oracle_breaks_ties_between_hits_by_recency():
    # 1e9 + position in float32 rounds hits to steps of 64: positions 32..39 all tied
    inp = _inputs(100)
    press = kv.Oracle(5, keep=list(range(10, 40)))
    assert keep_indices(press.score(inp), 5)[0, 0].tolist() == [35, 36, 37, 38, 39]
    # with room for every hit, the rest of the budget still goes to the latest tokens
    press = kv.Oracle(4, keep=[3, 50])
    assert keep_indices(press.score(inp), 4)[0, 1].tolist() == [3, 50, 98, 99]


class _CountMax(TorchFunctionMode):
    """Counts ``max()`` of 1-D integer tensors (a pass's positions read to the host)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.max and args and args[0].dim() == 1 \
                and not args[0].is_floating_point() and len(args) == 1 and not kwargs:
            self.reads += 1
        return func(*args, **kwargs)


def test_positions_are_read_to_the_host_once_per_pass():
    from tokenwise.models import load

    lm = load("tw-large")  # 6 layers: one read per layer would show
    ids = lm.encode("Memo:\nThe code of Avo is 123.\nQ: What is the code", add_bos=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cache, last = kv.prefill(lm, ids, kv.KeyNorm(0.5))
    seen = cache.layers[0].seen
    mode = _CountMax()
    with mode:
        out = lm.forward(last.argmax(-1).view(1, 1), cache=cache, use_cache=True,
                         position_ids=torch.tensor([[seen]]))
    assert mode.reads == 1
    assert all(layer.seen == seen + 1 for layer in out.cache.layers)
    cache.close()

"""The fused loss on torch.distributed: 2 gloo processes on CPU against one process.

Each test spawns two ranks; each rank computes the distributed result and the single-process
reference on the same seeded data, and asserts they agree (a failure in a rank fails the test
with that rank's traceback).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from tokenwise.errors import TokenwiseError
from tokenwise.training.distributed import ddp_num_items, vocab_parallel_linear_cross_entropy

WORLD = 2


def _entry(rank: int, worker, store: str, args: tuple) -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        worker(rank, *args)
        # Every rank done (and DDP's reducer idle) before the group goes: tearing it down while
        # the other rank still talks to it aborted a rank once under load ("terminate called
        # without an active exception"). Skipped after a failure, where it could hang.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def spawn(tmp_path: Path, worker, *args) -> None:
    mp.spawn(_entry, args=(worker, str(tmp_path / "store"), args), nprocs=WORLD, join=True)


# ---------------------------------------------------------------------------------------------
# Vocabulary parallel


def plain_reference(e, c, targets, bias=None, softcap=None, z_loss=None, ignore_index=-100):
    """Per-token loss and lse from full fp64 logits (0 at ignored targets)."""
    logits = e.double() @ c.double().T  # (n, V)
    if bias is not None:
        logits = logits + bias.double()
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    lse = torch.logsumexp(logits, -1)  # (n,)
    loss = F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="none")
    if z_loss:
        loss = loss + z_loss * lse.square()
    valid = targets != ignore_index
    return loss * valid, lse * valid


CASES = [
    dict(reduction="mean"),
    dict(reduction="sum", softcap=3.0),
    dict(reduction="none", bias=True, z_loss=1e-3),
    dict(reduction="mean", bias=True, softcap=5.0, return_lse=True),
    dict(reduction="mean", owner_only=0),  # every target on rank 0's shard
    dict(reduction="sum", reversed_layout=True),  # rank 0 holds the upper rows
    dict(reduction="mean", shift=1),
    dict(reduction="mean", reduce_e_grad=False),
    dict(reduction="sum", dtype=torch.bfloat16, softcap=4.0),  # fp32 accumulation of bf16
]


def _vocab_parallel_worker(rank: int) -> None:
    n, d, vocab, split = 37, 19, 123, 70
    for i, case in enumerate(CASES):
        g = torch.Generator().manual_seed(i)  # the same data on every rank
        dtype = case.get("dtype", torch.float32)
        e = (2 * torch.randn(n, d, generator=g)).to(dtype).requires_grad_()
        c = torch.randn(vocab, d, generator=g).to(dtype).requires_grad_()
        bias = torch.randn(vocab, generator=g).requires_grad_() if case.get("bias") else None
        high = split if case.get("owner_only") == 0 else vocab
        targets = torch.randint(0, high, (n,), generator=g)
        targets[torch.rand(n, generator=g) < 0.2] = -100
        weights = torch.rand(n, generator=g)  # upstream gradient for reduction="none"
        shift = case.get("shift", 0)
        softcap, z_loss, reduction = case.get("softcap"), case.get("z_loss"), case["reduction"]

        bounds = [(0, split), (split, vocab)]
        if case.get("reversed_layout"):
            bounds = bounds[::-1]
        lo, hi = bounds[rank]
        c_shard = c.detach()[lo:hi].clone().requires_grad_()
        b_shard = bias.detach()[lo:hi].clone().requires_grad_() if bias is not None else None
        e_mine = e.detach().clone().requires_grad_()

        out = vocab_parallel_linear_cross_entropy(
            e_mine.unsqueeze(0) if shift else e_mine, c_shard,
            targets.unsqueeze(0) if shift else targets, lo, bias_shard=b_shard, softcap=softcap,
            reduction=reduction, shift=shift, z_loss=z_loss,
            return_lse=case.get("return_lse", False),
            reduce_e_grad=case.get("reduce_e_grad", True))
        loss, lse = out if case.get("return_lse") else (out, None)
        weighted = loss.reshape(-1) * weights[: loss.numel()] if reduction == "none" else loss
        weighted.sum().backward()

        e_ref, t_ref = (e[:-shift], targets[shift:]) if shift else (e, targets)
        per_token, ref_lse = plain_reference(e_ref, c, t_ref, bias, softcap, z_loss)
        if reduction == "none":
            ref = per_token
            (ref * weights[: ref.numel()].double()).sum().backward()
        else:
            ref = per_token.sum()
            if reduction == "mean":
                ref = ref / (t_ref != -100).sum()
            ref.backward()

        # the loss is accumulated in fp32 either way; bf16 gradients carry bf16 rounding
        tol = dict(atol=2e-5, rtol=2e-5)
        grad_tol = tol if dtype == torch.float32 else dict(atol=2e-2, rtol=1e-2)
        name = f"case {i} {case}"
        torch.testing.assert_close(loss.double().reshape(ref.shape), ref, **tol, msg=name)
        if lse is not None:
            torch.testing.assert_close(lse.double(), ref_lse, **tol, msg=name)
        assert c_shard.grad.dtype == dtype and e_mine.grad.dtype == dtype
        torch.testing.assert_close(c_shard.grad, c.grad[lo:hi], **grad_tol, msg=name)
        if bias is not None:
            torch.testing.assert_close(b_shard.grad, bias.grad[lo:hi], **tol, msg=name)
        grad_e = e_mine.grad
        if not case.get("reduce_e_grad", True):
            # each rank holds its shard's part; the caller's own reduction completes it
            other = grad_e.clone()
            dist.all_reduce(other)
            assert (other - grad_e).abs().max() > 1e-3  # the other shard's part is not zero
            grad_e = other
        torch.testing.assert_close(grad_e, e.grad, **grad_tol, msg=name)

    # bad layouts and targets fail on every rank with the reason
    e, c = torch.randn(5, 4), torch.randn(10, 4)
    with pytest.raises(TokenwiseError, match="tile"):  # rank 1 overlaps rank 0
        vocab_parallel_linear_cross_entropy(e, c, torch.zeros(5, dtype=torch.long), 6 * rank)
    with pytest.raises(TokenwiseError, match=r"\[0, 20\)"):
        vocab_parallel_linear_cross_entropy(e, c, torch.tensor([0, 1, 2, 3, 20]), 10 * rank)
    with pytest.raises(TokenwiseError, match="c_shard"):
        vocab_parallel_linear_cross_entropy(e, torch.randn(10, 3), torch.zeros(5).long(), 0)


def test_vocab_parallel_equals_full_vocabulary(tmp_path):
    spawn(tmp_path, _vocab_parallel_worker)


def test_vocab_parallel_needs_a_process_group():
    with pytest.raises(TokenwiseError, match="init_process_group"):
        vocab_parallel_linear_cross_entropy(torch.randn(2, 3), torch.randn(4, 3),
                                            torch.tensor([0, 1]), 0)
    with pytest.raises(TokenwiseError, match="process group"):
        ddp_num_items(torch.tensor([[1, 2]]))


# ---------------------------------------------------------------------------------------------
# Data parallel: a patched tiny Llama trained under DDP / FSDP2 equals one process


def _tiny_llama_and_batch():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                      tie_word_embeddings=False, initializer_range=0.2,
                      attn_implementation="eager")
    model = LlamaForCausalLM(cfg).train()
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 97, (4, 9), generator=g)  # (B, T): rows 0-1 on rank 0, 2-3 on rank 1
    mask = torch.ones_like(ids)
    mask[1, 3:] = 0  # rank 0 holds far fewer targets than rank 1
    mask[0, 5:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    return model, ids, mask, labels


def _data_parallel_worker(rank: int, kind: str) -> None:
    from tokenwise.training.patch import patch

    model, ids, mask, labels = _tiny_llama_and_batch()
    reference = copy.deepcopy(model)  # plain transformers loss on the whole batch
    patch(model)
    if kind == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(model)
    else:
        from torch.distributed.fsdp import fully_shard

        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model.lm_head)  # the head sharded on its own: the loss must gather it
        wrapped = fully_shard(model)
    mine = slice(2 * rank, 2 * rank + 2)
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.5)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.5)
    for step in range(3):
        opt.zero_grad()
        num_items = ddp_num_items(labels[mine])
        loss = wrapped(input_ids=ids[mine], attention_mask=mask[mine], labels=labels[mine],
                       num_items_in_batch=num_items).loss
        loss.backward()
        ref_opt.zero_grad()
        ref_loss = reference(input_ids=ids, attention_mask=mask, labels=labels).loss
        ref_loss.backward()

        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        torch.testing.assert_close(mean_loss / WORLD, ref_loss.detach(), atol=1e-5, rtol=1e-5,
                                   msg=f"{kind} step {step}")
        ref_params = dict(reference.named_parameters())
        for name, p in model.named_parameters():
            grad = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
            torch.testing.assert_close(grad, ref_params[name].grad, atol=1e-5, rtol=1e-4,
                                       msg=f"{kind} step {step} {name}")
        opt.step()
        ref_opt.step()
    assert ref_loss.item() < 4.5  # the steps moved the model (log 97 = 4.57 at the start)


def test_ddp_with_patched_model_equals_one_process(tmp_path):
    spawn(tmp_path, _data_parallel_worker, "ddp")


def test_fsdp2_with_patched_model_equals_one_process(tmp_path):
    spawn(tmp_path, _data_parallel_worker, "fsdp")

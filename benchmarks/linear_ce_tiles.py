"""How many backward tiles the fused loss's GPU filter keeps, at Gemma-2 shapes, on a CPU.

The Triton backward recomputes every (token block, vocabulary tile) of the logits once and does
the two gradient products only for the tiles its filter keeps, so the share of kept tiles is
the share of the products' work left. This script computes that share exactly from the logits
(no kernels, no GPU) for four rules on the same data:

* ``|p - onehot|, vocabulary order``: the previous kernel (and cut-cross-entropy without its
  column sort): a tile is kept when some ``|softmax - onehot| >= eps``, so every tile that
  holds a token's target is kept;
* ``|p - onehot|, sorted``: the same, columns in descending order of their summed logits;
* ``softmax term``: a one-hot term applied outside the tiles, the target's softmax entry still
  tested in them;
* ``off the target``: ours, whose tiles leave each token's target column out altogether (its
  whole gradient is applied outside them), in vocabulary order and sorted (as shipped).

For a mean loss every token's upstream scale is ``u = a = g``, so the softmax-term test is
``p >= eps``. ``eps`` is bf16's ``finfo.eps / 32`` (the "auto" threshold). The data is
``benchmarks/linear_ce_memory.py``'s (``uniform``: random-init logits; ``peaked``: a
trained-model-like softmax), N tokens (1,024 by default, a sample of the GPU run's 8,192: the
share per token block does not depend on N, the sort's column sums barely do).

Run:
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/linear_ce_tiles.py --logits uniform
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/linear_ce_tiles.py --logits peaked
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from linear_ce_memory import _inputs

TILES = [(128, 128), (64, 64)]


def tile_shares(e: torch.Tensor, c: torch.Tensor, t: torch.Tensor, eps: float,
                tiles: list[tuple[int, int]], chunk: int = 128) -> dict:
    """Kept-tile shares for each rule and tile size, plus the share of entries >= eps."""
    n, v = e.shape[0], c.shape[0]
    ef, cf = e.float(), c.float()
    col_sums = torch.zeros(v, dtype=torch.float64)
    with torch.no_grad():
        for i0 in range(0, n, chunk):
            col_sums += (ef[i0:i0 + chunk] @ cf.T).double().sum(0)
    order = torch.argsort(col_sums, descending=True)
    place = torch.empty_like(order)
    place[order] = torch.arange(v)
    rules = {}
    big_entries = 0
    # per token chunk: big[i, j] = p_ij >= eps (softmax term), hit[i, j] = j is i's target
    softmax_hits: list[torch.Tensor] = []
    target_hits: list[torch.Tensor] = []
    with torch.no_grad():
        for i0 in range(0, n, chunk):
            logp = (ef[i0:i0 + chunk] @ cf.T).log_softmax(1)
            big = logp >= torch.log(torch.tensor(eps))
            big_entries += int(big.sum())
            softmax_hits.append(big)
            # |p - 1| >= eps at the target, unless the model is sure of it
            tgt = t[i0:i0 + chunk]
            p_t = logp[torch.arange(len(tgt)), tgt].exp()
            hit = torch.zeros_like(big)
            hit[torch.arange(len(tgt)), tgt] = (1.0 - p_t) >= eps
            target_hits.append(hit)
    big_all = torch.cat(softmax_hits)  # (N, V) bool, 1 byte each
    hit_all = torch.cat(target_hits)
    is_target = torch.zeros_like(big_all)
    is_target[torch.arange(n), t] = True
    for bb, bv in tiles:
        n_b = -(-n // bb)
        n_v = -(-v // bv)
        for name, mat in (("|p - onehot|", big_all | hit_all), ("softmax term", big_all),
                          ("off the target", big_all & ~is_target)):
            for sort_name, cols in (("vocabulary order", None), ("sorted", order)):
                m = mat if cols is None else mat[:, cols]
                pad = torch.zeros(n_b * bb, n_v * bv, dtype=torch.bool)
                pad[:n, :v] = m
                kept = pad.view(n_b, bb, n_v, bv).any(3).any(1)
                rules[(bb, bv, f"{name}, {sort_name}")] = float(kept.float().mean())
    return {"rules": rules, "entries": big_entries / (n * v)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logits", choices=["uniform", "peaked"], default="uniform")
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--d", type=int, default=2304)
    parser.add_argument("--v", type=int, default=256000)
    args = parser.parse_args(argv)
    eps = torch.finfo(torch.bfloat16).eps / 32
    e, c, t = _inputs(args.n, args.d, args.v, torch.bfloat16, "cpu", logits=args.logits)
    e, c = e.detach(), c.detach()
    got = tile_shares(e, c, t, eps, TILES)
    print(f"logits={args.logits} N={args.n} D={args.d} V={args.v} bf16 data, eps={eps:.3g}; "
          f"softmax entries >= eps: {100 * got['entries']:.3f}%")
    print("\n| tiles | rule | tiles kept |\n|---|---|---|")
    for (bb, bv, rule), share in got["rules"].items():
        print(f"| {bb} x {bv} | {rule} | {100 * share:.2f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

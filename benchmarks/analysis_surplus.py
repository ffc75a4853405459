"""Information surplus of hidden states: the Markov source (truth 0), facts, and real text.

Measures :func:`tokenwise.analysis.surplus.information_surplus`: the held-out nats per token
that a residual linear probe on the last hidden state ``h_t`` gains over the model's own
two-step rollout ``q(x_{t+2} | x_<=t)`` (top-k candidates, renormalised), 5 folds over
sequences, a 95% bootstrap interval over sequences.

- testbed (tw-large, tw-small): lines of the Markov source (a first-order chain: the true
  surplus is exactly 0), beside the exact two-step cross-entropy ``-log (P^2)[x_t, x_{t+2}]``;
  fact-world statements (the rest of the corpus the models learned);
- Gemma-3-270M (Q4_K_M GGUF weights dequantised; they differ from the bf16 originals): King
  James Bible verses (``benchmarks/compression_qa_real.py --setup`` once). The tree-masked
  rollout is checked against one forward per candidate on a few positions first.

Command (seeds fixed; the testbed rows take about 10 minutes on 2 loaded cores, Gemma's more:
its 262k-wide logits over every candidate of the tree are the cost):
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/analysis_surplus.py
    (the Gemma row alone: add --skip-testbed --out .../analysis_surplus_gemma.json)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

import tokenwise as tw
from tokenwise.analysis.surplus import (
    L2_GRID,
    information_surplus,
    two_step_data,
    two_step_rollout,
)
from tokenwise.testbed import FactWorld, MarkovSource
from tokenwise.testbed.markov import SYMBOLS

OUT = Path(__file__).resolve().parent / "results" / "analysis_surplus.json"
KJV = Path.home() / ".cache" / "tokenwise" / "bench" / "bible-kjv" / "verses.tsv"


def row(label: str, lm, texts: list[str], top_k: int, chunk: int, seed: int,
        extra: dict | None = None, max_classes: int = 512, l2=L2_GRID) -> dict:
    t0 = time.time()
    data = two_step_data(lm, texts, top_k=top_k, chunk=chunk, max_classes=max_classes)
    print(f"  {label}: {len(data)} positions collected in {time.time() - t0:.0f} s", flush=True)
    s = information_surplus(data, seed=seed, l2=l2)
    out = {"label": label, "surplus": s.surplus, "ci95": [s.ci_low, s.ci_high],
           "ce_rollout": s.ce_rollout, "ce_probe": s.ce_probe, "n_tokens": s.n_tokens,
           "n_sequences": s.n_groups, "rollout_coverage": s.coverage, "top_k": top_k,
           "classes": len(data.classes), "l2_chosen": list(s.l2_chosen),
           "seconds": round(time.time() - t0, 1)}
    out.update(extra or {})
    print(f"{label:52s} S = {s.surplus:+.4f} nats [{s.ci_low:+.4f}, {s.ci_high:+.4f}] "
          f"CE rollout {s.ce_rollout:.3f} probe {s.ce_probe:.3f} n={s.n_tokens} "
          f"cover {s.coverage:.3f}" + "".join(f" {k}={v:.3f}" for k, v in (extra or {}).items()
                                              if isinstance(v, float)), flush=True)
    return out


def markov_texts(n: int, seed: int) -> tuple[list[str], float]:
    src = MarkovSource(0)  # the chain the built-in models were trained on (testbed seed 0)
    rng = np.random.default_rng([seed, 99])
    seqs = [src.sample(rng) for _ in range(n)]
    two = src.transition @ src.transition  # (K, K): P(x_{t+2} | x_t)
    ce = [-np.log(two[a, b]) for s in seqs for a, b in zip(s.symbols, s.symbols[2:], strict=False)]
    return [s.text.rstrip("\n") for s in seqs], float(np.mean(ce))


def check_tree(lm, ids: list[int], k: int, positions: list[int]) -> float:
    logq, _, _ = two_step_rollout(lm, ids, top_k=k)
    worst = 0.0
    for t in positions:
        logp1 = torch.log_softmax(lm.forward(torch.tensor([ids[:t + 1]])).logits[0, -1].float(),
                                  -1)
        top = logp1.topk(k)
        mix = torch.zeros_like(logp1)
        for lp, v in zip(top.values, top.indices, strict=True):
            nxt = lm.forward(torch.tensor([[*ids[:t + 1], int(v)]])).logits[0, -1].float()
            mix += lp.exp() * torch.softmax(nxt, -1)
        mix /= top.values.exp().sum()
        worst = max(worst, float((logq[t].exp() - mix).abs().max()))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markov-lines", type=int, default=80)
    ap.add_argument("--fact-docs", type=int, default=40)
    ap.add_argument("--verses", type=int, default=60)
    ap.add_argument("--gemma-l2", default="0.1,1,10,100",
                    help="probe penalties tried on Gemma (its 640-d states make each fit slow)")
    ap.add_argument("--gemma-max-classes", type=int, default=256)
    ap.add_argument("--skip-testbed", action="store_true")
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-gemma", action="store_true")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    print(f"seed {args.seed}", flush=True)
    torch.manual_seed(args.seed)
    rows = []
    texts, true_ce = markov_texts(args.markov_lines, args.seed)
    facts = list(FactWorld(0).documents(random.Random(f"surplus/{args.seed}")))
    facts = random.Random(args.seed).sample(facts, args.fact_docs)
    for name in () if args.skip_testbed else ("tw-large", "tw-small"):
        lm = tw.load(name)
        rows.append(row(f"{name}: Markov source (truth 0)", lm, texts, 16, 64, args.seed,
                        {"true_two_step_ce_on_symbols": true_ce}))
        rows.append(row(f"{name}: fact-world statements", lm, facts, args.top_k, 64, args.seed))
    if not args.skip_gemma:
        lm = tw.load("gemma3-270m")
        ids = lm.encode("In the beginning God created the heaven and the earth.", add_bos=True)
        err = check_tree(lm, ids, 4, [1, 5, len(ids) - 1])
        print(f"gemma tree rollout vs one forward per candidate: max |dq| = {err:.2e}",
              flush=True)
        if not KJV.is_file():
            sys.exit(f"{KJV} missing: run benchmarks/compression_qa_real.py --setup")
        verses = [line.split("\t", 1)[1] for line in KJV.read_text().splitlines()]
        rng = random.Random(f"surplus-kjv/{args.seed}")
        picks = sorted(rng.sample(range(len(verses)), args.verses))
        rows.append(row("gemma3-270m: KJV verses", lm, [verses[i] for i in picks],
                        args.top_k, 48, args.seed, {"tree_check_max_abs_err": err},
                        max_classes=args.gemma_max_classes,
                        l2=tuple(float(v) for v in args.gemma_l2.split(","))))
    result = {"command": " ".join(sys.argv), "seed": args.seed, "rows": rows,
              "note": "Markov CE rows are over all tokens of a line (the header included); "
                      "true_two_step_ce_on_symbols is over symbol pairs only. gemma3-270m: "
                      "Q4_K_M GGUF weights dequantised to float32; they differ from the bf16 "
                      "originals",
              "symbols": len(SYMBOLS)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

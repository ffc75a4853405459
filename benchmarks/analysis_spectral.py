"""Spectral view of the prediction head: does the output embedding align with the eigenspaces of
the predictive similarity operator? (:mod:`tokenwise.analysis.spectral`)

For each model: the overlap ``||U_k^T E_k||_F^2 / k`` of the head's top-k singular subspace
(rows centred and weighted by sqrt(p)) with the operator's top-k non-trivial eigenspace, beside
three baselines: chance ``k / (V - 1)``, Gaussian heads of the same shape (mean, sd, and the
share of them the model beats) and the model's own head with its rows shuffled among the tokens
(same spectrum, token correspondence broken).

- testbed (tw-small, tw-large): the exact operator of the Markov source the built-ins were
  trained on (testbed seed 0, 16 symbols; contexts = line start and previous symbol, weighted
  by their position-averaged probability). Also the operator estimated from the model's own
  predictions on sampled lines, and how well its eigenspaces match the exact ones (the check of
  the estimator used on real text).
- real text (Gemma-3-270M, Q4_K_M GGUF weights dequantised to float32; they differ from the bf16
  originals): the operator estimated from Gemma's own next-token predictions on contiguous KJV
  verses (Debian ``bible-kjv-text``, unpacked by ``benchmarks/compression_qa_real.py --setup``),
  restricted to the ``--tokens`` most frequent next tokens of that text.

Command (seeds fixed; a few minutes on 2 cores):
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/analysis_spectral.py
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

import tokenwise as tw
from tokenwise.analysis.spectral import (
    head_rows,
    markov_contexts,
    model_contexts,
    predictive_similarity,
    random_head_overlaps,
    spectral_alignment,
    subspace_overlap,
)
from tokenwise.testbed.markov import SYMBOLS, MarkovSource

OUT = Path(__file__).resolve().parent / "results" / "analysis_spectral.json"
KJV = Path.home() / ".cache" / "tokenwise" / "bench" / "bible-kjv" / "verses.tsv"


def compare(name: str, head: np.ndarray, probs: np.ndarray, w: np.ndarray, ks: tuple[int, ...],
            n_random: int, seed: int, extra: dict | None = None) -> dict:
    got = spectral_alignment(head, probs, w, ks)
    rnd = random_head_overlaps(head.shape, probs, w, ks, n=n_random, seed=seed)
    rng = np.random.default_rng([seed, 17])
    shuf = np.array([spectral_alignment(head[rng.permutation(len(head))], probs, w, ks).overlap
                     for _ in range(n_random)])
    row = {"model": name, "tokens": head.shape[0], "width": head.shape[1], "ks": list(ks),
           "overlap": [round(v, 4) for v in got.overlap],
           "chance": [round(v, 4) for v in got.chance],
           "random_mean": rnd.mean(0).round(4).tolist(), "random_sd": rnd.std(0).round(4).tolist(),
           "beats_random": (rnd < np.array(got.overlap)).mean(0).round(3).tolist(),
           "shuffled_mean": shuf.mean(0).round(4).tolist(),
           "beats_shuffled": (shuf < np.array(got.overlap)).mean(0).round(3).tolist(),
           "eigenvalues": got.eigenvalues.round(4).tolist(),
           "singular_values": got.singular_values.round(4).tolist(),
           "mean_overlap": round(float(np.mean(got.overlap)), 4),
           "mean_random": round(float(rnd.mean()), 4), **(extra or {})}
    print(name, "overlap", row["overlap"], "random", row["random_mean"], "shuffled",
          row["shuffled_mean"], "beats", row["beats_random"], flush=True)
    return row


def testbed_rows(lines: int, n_random: int, seed: int) -> list[dict]:
    src = MarkovSource(0)  # the chain the built-in models were trained on (testbed seed 0)
    probs, w = markov_contexts(src)
    exact = predictive_similarity(probs, w)
    ks = (1, 2, 4, 8)
    rng = np.random.default_rng([seed, 99])
    texts = [src.sample(rng).text.rstrip("\n") for _ in range(lines)]
    rows = []
    for name in ("tw-small", "tw-large"):
        lm = tw.load(name)
        ids = [lm.encode(" " + s)[0] for s in SYMBOLS]
        assert all(len(lm.encode(" " + s)) == 1 for s in SYMBOLS)
        head = head_rows(lm, ids)
        rows.append(compare(f"{name}: exact Markov operator", head, probs, w, ks, n_random,
                            seed))
        est_p, est_w = model_contexts(lm, texts, ids)
        est = predictive_similarity(est_p, est_w)
        _, e_exact = exact.eigen(max(ks))
        _, e_est = est.eigen(max(ks))
        agree = [round(subspace_overlap(e_exact[:, :k], e_est[:, :k]), 4) for k in ks]
        rows.append(compare(f"{name}: operator from its own predictions on {lines} lines",
                            head, est_p, est_w, ks, n_random, seed,
                            {"eigenspace_overlap_with_exact": agree,
                             "contexts": len(est_w)}))
    return rows


def gemma_row(verses: int, n_tokens: int, n_random: int, seed: int) -> dict | None:
    if not KJV.is_file():
        print(f"{KJV} missing: run benchmarks/compression_qa_real.py --setup", file=sys.stderr)
        return None
    lines = [ln.split("\t", 1)[1] for ln in KJV.read_text().splitlines()]
    start = random.Random(f"spectral-kjv/{seed}").randrange(len(lines) - verses)
    block = lines[start:start + verses]
    texts = [" ".join(block[i:i + 8]) for i in range(0, len(block), 8)]
    lm = tw.load("gemma3-270m")
    counts = Counter(t for text in texts for t in lm.encode(text, add_bos=True)[1:])
    ids = [t for t, _ in counts.most_common(n_tokens)]
    t0 = time.time()
    probs, w = model_contexts(lm, texts, ids)
    print(f"gemma contexts {len(w)} in {time.time() - t0:.0f} s", flush=True)
    head = head_rows(lm, ids)
    _, e = predictive_similarity(probs, w).eigen(4)
    top = [[lm.decode([ids[i]]) for i in np.argsort(-np.abs(e[:, j]))[:6]] for j in range(4)]
    print("tokens leading the top eigenvectors:", top, flush=True)
    ks = (1, 2, 4, 8, 16, 32, 64)
    return compare(f"gemma3-270m: operator from its own predictions on {verses} KJV verses, "
                   f"{len(ids)} most frequent tokens", head, probs, w, ks, n_random, seed,
                   {"contexts": len(w), "first_verse": start,
                    "eigenvector_top_tokens": top})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=200, help="Markov lines for the estimated "
                    "operator")
    ap.add_argument("--random", type=int, default=200, help="random / shuffled heads")
    ap.add_argument("--verses", type=int, default=240)
    ap.add_argument("--tokens", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-gemma", action="store_true")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    print(f"seed {args.seed}", flush=True)
    t0 = time.time()
    rows = testbed_rows(args.lines, args.random, args.seed)
    if not args.skip_gemma:
        row = gemma_row(args.verses, args.tokens, args.random, args.seed)
        if row:
            rows.append(row)
    result = {"command": " ".join(sys.argv), "seed": args.seed, "rows": rows,
              "note": "gemma3-270m: Q4_K_M GGUF weights dequantised to float32; they differ "
                      "from the bf16 originals",
              "seconds": round(time.time() - t0, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

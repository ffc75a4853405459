"""Semantic information (G theory) of the built-in models' fact answers, beside Shannon
surprisal, and its loss under weight compression (:mod:`tokenwise.analysis.semantic_information`).

For each fact question (testbed seed 0, the world the built-ins were trained on) the model's
greedy answer ``y`` is read through truth functions from the world's meaning equivalence:
``T(theta_y | x) = 1`` when ``y`` means the value ``x``, else ``floor``. The prior over an
attribute's values is the world's own (uniform: each person's value is drawn uniformly), so a
true answer conveys ``I = log(1 / T(theta_y))`` (crisp: ``log n_values``) about the true value
and a false one ``log(floor / T(theta_y))``. Beside it, per answer: the Shannon surprisal of the
answer text ``-log p(y | question)`` and of its meaning ``-log sum_{forms f of m(y)} p(f | q)``,
both under the answering model (each text scored with the newline that ends it).

Compression: the same model with every weight matrix fake-quantised to ``b`` bits (symmetric,
per output row, absmax scale; embeddings included); the loss is the drop of the mean semantic
information per answer against the float model, on the same questions.

Command (seeds fixed; a few minutes on 2 cores):
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/analysis_semantic_information.py
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

import tokenwise as tw
from tokenwise.analysis.semantic_information import meaning_truth, semantic_information
from tokenwise.testbed import Testbed
from tokenwise.testbed.evaluate import greedy_complete

OUT = Path(__file__).resolve().parent / "results" / "analysis_semantic_information.json"


@torch.no_grad()
def fake_quantise(lm, bits: int) -> None:
    """Round every 2-D weight to ``bits`` bits in place (symmetric, per row, absmax)."""
    levels = 2 ** (bits - 1) - 1
    for p in lm.hf_model.parameters():
        if p.ndim == 2:
            scale = p.abs().amax(1, keepdim=True).clamp(min=1e-12) / levels
            p.copy_((p / scale).round().clamp(-levels, levels) * scale)


@torch.no_grad()
def text_logprob(lm, prompt: str, answer: str) -> float:
    """log p(answer | prompt) of the complete answer: after a space, as generated, and ended by
    the newline that stops it (so "Teirail" does not count "Teirail city" too)."""
    ids_p = lm.encode(prompt, add_bos=True)
    ids_a = lm.encode(" " + answer + "\n")
    logits = lm.forward(torch.tensor([ids_p + ids_a])).logits[0].double()
    logp = torch.log_softmax(logits[len(ids_p) - 1:-1], -1)
    return float(logp[torch.arange(len(ids_a)), torch.tensor(ids_a)].sum())


def answer_rows(lm, world, items, floor: float) -> list[dict]:
    answers = greedy_complete(lm, [it.prompt for it in items], max_new_tokens=10)
    rows = []
    for it, ans in zip(items, answers, strict=True):
        attr = world.attributes[it.attribute]
        states = [v.meaning for v in attr.values]
        prior = np.full(len(states), 1 / len(states))
        x = states.index(it.meaning)
        meaning = world.meaning_of(it.attribute, ans)
        info = {}
        for key, fl in (("crisp", 0.0), ("floor", floor)):
            truth = meaning_truth([ans], states, lambda a, _m=meaning: _m, floor=fl)
            if truth.max() == 0:  # names no value: false of every state under crisp truth
                info[key] = -math.inf
            else:
                info[key] = float(semantic_information(truth, prior)[0, x])
        lp = text_logprob(lm, it.prompt, ans) if ans else float("nan")
        if meaning is not None:
            forms = next(v.forms for v in attr.values if v.meaning == meaning)
            lm_mean = float(np.logaddexp.reduce([text_logprob(lm, it.prompt, f) for f in forms]))
        else:
            lm_mean = float("nan")
        rows.append({"attribute": it.attribute, "bucket": it.bucket, "truth": it.meaning,
                     "answer": ans, "answer_meaning": meaning, "correct": meaning == it.meaning,
                     "n_values": len(states), "semantic_crisp": info["crisp"],
                     "semantic_floor": info["floor"], "surprisal_text": -lp,
                     "surprisal_meaning": -lm_mean})
    return rows


def summarise(label: str, rows: list[dict], base: list[dict] | None = None) -> dict:
    sem = np.array([r["semantic_floor"] for r in rows])
    out = {"model": label, "answers": len(rows),
           "accuracy": round(float(np.mean([r["correct"] for r in rows])), 4),
           "false_or_empty": int(sum(not r["correct"] for r in rows)),
           "semantic_floor_mean": round(float(sem.mean()), 4),
           "semantic_true_mean": round(float(np.mean(
               [r["semantic_crisp"] for r in rows if r["correct"]] or [float("nan")])), 4),
           "surprisal_text_mean": round(float(np.nanmean([r["surprisal_text"] for r in rows])),
                                        4),
           "surprisal_meaning_mean": round(float(np.nanmean(
               [r["surprisal_meaning"] for r in rows])), 4)}
    if base is not None:
        diff = np.array([b["semantic_floor"] - r["semantic_floor"]
                         for b, r in zip(base, rows, strict=True)])
        boot = np.random.default_rng(0).choice(diff, size=(2000, len(diff))).mean(1)
        out["loss_vs_float"] = round(float(diff.mean()), 4)
        out["loss_ci95"] = [round(float(np.quantile(boot, q)), 4) for q in (0.025, 0.975)]
    by_attr = defaultdict(list)
    for r in rows:
        by_attr[r["attribute"]].append(r)
    out["by_attribute"] = {a: {"n": len(rs), "accuracy": round(float(np.mean(
        [r["correct"] for r in rs])), 4), "log_n_values": round(math.log(rs[0]["n_values"]), 4),
        "semantic_floor_mean": round(float(np.mean([r["semantic_floor"] for r in rs])), 4)}
        for a, rs in sorted(by_attr.items())}
    for key, group in (("by_bucket", lambda r: r["bucket"]),
                       ("by_correct", lambda r: "true" if r["correct"] else "false")):
        parts = defaultdict(list)
        for r in rows:
            parts[group(r)].append(r)
        out[key] = {g: {"n": len(rs),
                        "accuracy": round(float(np.mean([r["correct"] for r in rs])), 4),
                        "semantic_floor_mean": round(float(np.mean(
                            [r["semantic_floor"] for r in rs])), 4),
                        "surprisal_text_mean": round(float(np.nanmean(
                            [r["surprisal_text"] for r in rs])), 4),
                        "surprisal_meaning_mean": round(float(np.nanmean(
                            [r["surprisal_meaning"] for r in rs])), 4)}
                    for g, rs in sorted(parts.items())}
    print(json.dumps({k: v for k, v in out.items() if k != "by_attribute"}), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-bucket", type=int, default=60)
    ap.add_argument("--floor", type=float, default=0.01, help="truth of a wrong answer")
    ap.add_argument("--bits", default="8,4,3,2", help="fake-quantisation widths for tw-large")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    print(f"seed {args.seed}", flush=True)
    t0 = time.time()
    world = Testbed(0).fact_world
    per: dict[str, int] = defaultdict(int)
    items = []
    for it in world.questions(seed=args.seed):
        if per[it.bucket] < args.per_bucket:
            per[it.bucket] += 1
            items.append(it)
    summary, examples = [], {}
    base = answer_rows(tw.load("tw-large"), world, items, args.floor)
    summary.append(summarise("tw-large (float32)", base))
    examples["tw-large (float32)"] = base[:12]
    for bits in [int(b) for b in args.bits.split(",")]:
        lm = tw.load("tw-large")
        fake_quantise(lm, bits)
        rows = answer_rows(lm, world, items, args.floor)
        summary.append(summarise(f"tw-large, weights {bits}-bit", rows, base))
        examples[f"tw-large, weights {bits}-bit"] = rows[:12]
    small = answer_rows(tw.load("tw-small"), world, items, args.floor)
    summary.append(summarise("tw-small (float32)", small, base))
    result = {"command": " ".join(sys.argv), "seed": args.seed, "floor": args.floor,
              "questions": len(items), "rows": summary, "examples": examples,
              "seconds": round(time.time() - t0, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

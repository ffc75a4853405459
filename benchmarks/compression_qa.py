"""QA retention of every compression method on the needle world.

For each method and rate (0.2, 0.33, 0.5) on fresh needle items (1, 3, 7 and 15 distractors):
(a) survival: does the needle's answer (its code) survive, as a word, in the compressed
context; (b) reader accuracy: a reader model (``--reader``, default the large built-in
tw-large) answering greedily from the compressed context, and (c) retention: that accuracy
over the same reader's accuracy on the uncompressed prompt (the issue's target: >= 90% at
rate 0.33 for the best method). Retention is undefined while the reader answers nothing
uncompressed (tw-large does not answer needles, see BENCHMARKS.md); then survival is the
figure to read, and the same command measures the target once a reader that answers exists.

Every method compresses the question line (``"Q: ..."``) followed by the memo (``--layout
last``: the memo, then the question line; the built-in classifier tw-keep was trained on the
question first) and gets the question as ``question=``, which each method uses by its
default: perplexity's contrastive score and extractive's similarity read it; generative keeps
its keywords; token_classifier and selective_context do not read it (their
``force_question_words`` is off). The question line is a
force token, so it survives whole, and the budget is
``target_tokens = round(rate * memo tokens) + question-line tokens`` on the reader's tokenizer.
Protection of structured spans is off (``protect=False``): it keeps every number, and the
codes are numbers, which would make survival trivial. A method that cannot meet a budget
(forced words alone over it) counts as a failure, and the failures are reported.

A random word-dropping baseline (same budget rule) shows what chance gives.

Run:
    .venv/bin/python benchmarks/compression_qa.py [--per-count 25] [--png docs/compression_qa.png]
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np

from tokenwise.compression import TokenCounter, words
from tokenwise.compression.base import SelectiveCompressor, WordScores
from tokenwise.models import load
from tokenwise.testbed.evaluate import greedy_complete
from tokenwise.testbed.needle import DISTRACTOR_COUNTS, NeedleWorld

RATES = (0.2, 0.33, 0.5)


class RandomCompressor(SelectiveCompressor):
    """Baseline: every word gets a seeded uniform random score."""

    name = "random"
    force_question_words = False  # chance alone

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)

    def score_words(self, texts, *, question=None):
        starts, ends, seg = [], [], []
        for j, t in enumerate(texts):
            s, e = words.split_words(t)
            starts.append(s)
            ends.append(e)
            seg.append(np.full(len(s), j, dtype=np.int64))
        n = sum(len(s) for s in starts)
        return WordScores(np.concatenate(starts), np.concatenate(ends), np.concatenate(seg),
                          self.rng.random(n).astype(np.float32))


def build(name: str, classifier: str):
    if name == "random":
        return RandomCompressor(0)
    if name == "token_classifier":
        from tokenwise.compression.token_classifier import TokenClassifierCompressor

        return TokenClassifierCompressor(classifier)
    if name == "perplexity":
        from tokenwise.compression.perplexity import PerplexityCompressor

        return PerplexityCompressor("tw-small")
    if name == "selective_context":
        from tokenwise.compression.selective_context import SelectiveContextCompressor

        return SelectiveContextCompressor("tw-small", unit="phrase")
    if name == "extractive":
        from tokenwise.compression.extractive import ExtractiveCompressor

        return ExtractiveCompressor()
    if name == "generative":
        from tokenwise.compression.generative import GenerativeCompressor

        return GenerativeCompressor("tw-small")
    raise ValueError(name)


def survived(answer: str, context: str) -> bool:
    return re.search(rf"(?<!\d){answer}(?!\d)", context) is not None


def correct(completion: str, answer: str) -> bool:
    """The reader's first number is the code (tolerates a leading space or a full stop)."""
    m = re.match(r"\s*(\d+)", completion)
    return m is not None and m.group(1) == answer


def plot(results: dict, n_items: int, png: str) -> None:
    """Survival per method against the rate (legend outside the axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.4, 4.2))
    for name, per in results.items():
        kept = [per[str(r)]["achieved_rate"] for r in RATES]
        label = name
        if any(abs(k - r) > 0.05 for k, r in zip(kept, RATES, strict=True)):
            label += f"\n(kept {min(kept):.2f}-{max(kept):.2f}: over budget)"
        ax.plot(RATES, [100 * per[str(r)]["survival"] for r in RATES], marker="o",
                label=label, linestyle="--" if name == "random" else "-")
    ax.set_xlabel("rate (share of memo tokens kept)")
    ax.set_ylabel("needle answer survives (%)")
    ax.set_xticks(RATES)
    ax.set_ylim(0, 102)
    ax.set_title(f"Needle survival under compression ({n_items} items)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    print(f"\nwrote {png}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-count", type=int, default=25, help="items per distractor count")
    parser.add_argument("--methods", default="random,token_classifier,perplexity,"
                        "selective_context,extractive,generative")
    parser.add_argument("--classifier", default="tw-keep",
                        help="token_classifier's model: built-in name or local directory")
    parser.add_argument("--layout", choices=("first", "last"), default="first",
                        help="the question line before the memo (first) or after it (last)")
    parser.add_argument("--reader", default="tw-large",
                        help="the model that answers (built-in name or local directory)")
    parser.add_argument("--png", default="docs/compression_qa.png")
    parser.add_argument("--json", default=None)
    parser.add_argument("--plot-only", metavar="JSON", default=None,
                        help="redraw --png from a --json file of an earlier run")
    args = parser.parse_args()
    if args.plot_only:
        saved = json.loads(Path(args.plot_only).read_text())
        plot(saved["results"], saved["items"], args.png)
        return

    reader = load(args.reader)
    counter = TokenCounter.resolve(reader)
    items = NeedleWorld(0).eval_items(seed=7, per_count=args.per_count)
    base_answers = greedy_complete(reader, [it.prompt for it in items], max_new_tokens=5,
                                   batch_size=32)
    base_acc = float(np.mean([correct(a, it.answer) for a, it in zip(base_answers, items,
                                                                     strict=True)]))
    results: dict[str, dict] = {}
    for name in args.methods.split(","):
        comp = build(name, args.classifier)
        results[name] = {}
        for rate in RATES:
            t0 = time.perf_counter()
            rows = []
            for it in items:
                q_line = f"Q: {it.question}"
                text = (f"{q_line}\n{it.context}" if args.layout == "first"
                        else f"{it.context}{q_line}\n")
                target = round(rate * counter.count(it.context)) + counter.count(q_line)
                try:
                    r = comp.compress(text, target_tokens=target,
                                      question=it.question,
                                      force_tokens=[q_line], protect=False,
                                      target_model=counter)
                    ctx = r.text.replace(q_line, "", 1).strip("\n") + "\n"
                    # Budget spent on the memo: all output tokens but the question line's.
                    memo_rate = ((r.tokens_after - counter.count(q_line))
                                 / counter.count(it.context))
                    rows.append((survived(it.answer, ctx), f"{ctx}{q_line}\nA:",
                                 memo_rate, True))
                except Exception as exc:  # a budget the method cannot meet counts as lost
                    rows.append((False, None, float("nan"), False))
                    last_error = str(exc)[:120]
            prompts = [p for _, p, _, ok in rows if ok]
            answers = iter(greedy_complete(reader, prompts, max_new_tokens=5, batch_size=32)
                           if prompts else [])
            right = [ok and correct(next(answers), it.answer)
                     for (_, _, _, ok), it in zip(rows, items, strict=True)]
            by_count = {}
            for n in DISTRACTOR_COUNTS:
                sel = [i for i, it in enumerate(items) if it.n_distractors == n]
                by_count[str(n)] = float(np.mean([rows[i][0] for i in sel]))
            failed = sum(not ok for *_, ok in rows)
            results[name][str(rate)] = {
                "survival": float(np.mean([s for s, *_ in rows])),
                "survival_by_distractors": by_count,
                "reader_accuracy": float(np.mean(right)),
                "retention": float(np.mean(right)) / base_acc if base_acc > 0 else None,
                "achieved_rate": float(np.nanmean([x for _, _, x, _ in rows]))
                if failed < len(rows) else float("nan"),
                "budget_failures": failed,
                "seconds_per_item": (time.perf_counter() - t0) / len(items),
            }
            if failed:
                results[name][str(rate)]["last_error"] = last_error
            print(name, rate, json.dumps(results[name][str(rate)]), flush=True)

    print(f"\nitems: {len(items)} ({args.per_count} per distractor count "
          f"{DISTRACTOR_COUNTS}); reader {reader.name} uncompressed accuracy "
          f"{100 * base_acc:.1f}%\n")
    print("| method | rate | answer survives | by distractors 1/3/7/15 | achieved rate | "
          f"{reader.name} accuracy | retention | budget failures |")
    print("|---|---|---|---|---|---|---|---|")
    for name, per in results.items():
        for rate, r in per.items():
            bc = "/".join(f"{100 * v:.0f}" for v in r["survival_by_distractors"].values())
            print(f"| {name} | {rate} | {100 * r['survival']:.1f}% | {bc} | "
                  f"{r['achieved_rate']:.3f} | {100 * r['reader_accuracy']:.1f}% | "
                  + (f"{100 * r['retention']:.0f}%" if r["retention"] is not None
                     else "n/a (0% uncompressed)")
                  + f" | {r['budget_failures']} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"reader": reader.name, "items": len(items),
                                               "uncompressed_accuracy": base_acc,
                                               "results": results}, indent=1) + "\n")
    if args.png:
        plot(results, len(items), args.png)


if __name__ == "__main__":
    main()

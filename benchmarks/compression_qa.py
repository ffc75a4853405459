"""QA retention of every compression method on the needle world.

For each method and rate (``--rates``, default 0.2, 0.33, 0.5) on fresh needle items (1, 3, 7
and 15 distractors): (a) survival: does the needle's answer (its code) survive, as a word, in
the compressed context; (b) reader accuracy: a reader model (``--reader``, default the
built-in tw-reader, trained to answer needle questions from whole or cut memos; tw-large
answers none, see BENCHMARKS.md) answering greedily from the compressed context, and (c)
retention: that accuracy over the same reader's accuracy on the uncompressed prompt (the
target: >= 90% at rate 0.33 for the best method). Retention is undefined for a reader that
answers nothing uncompressed.

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

``--speed`` also times each method on one ~1,000-word memo (needle memos joined, rate 0.5,
no question, embedding caches cleared first) and prints seconds per 1k words.

Run:
    .venv/bin/python benchmarks/compression_qa.py [--per-count 25] [--png docs/compression_qa.png]
    .venv/bin/python benchmarks/compression_qa.py --methods random,semantic \
        --rates 0.2,0.33,0.5,0.8 --speed --png ""
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


def hidden_state_embedder(lm):
    """``texts -> (N, D)``: ``lm``'s last hidden state, mean-pooled over each text's tokens."""
    import torch

    def embed(texts: list[str]) -> np.ndarray:
        rows = []
        with torch.inference_mode():
            for start in range(0, len(texts), 64):
                ids = [lm.tokenizer(t, add_special_tokens=False)["input_ids"]
                       or [lm.tokenizer.pad_token_id] for t in texts[start:start + 64]]
                width = max(map(len, ids))
                mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids])
                padded = torch.tensor([i + [lm.tokenizer.pad_token_id] * (width - len(i))
                                       for i in ids])
                hidden = lm.hf_model(input_ids=padded, attention_mask=mask,
                                     output_hidden_states=True).hidden_states[-1].float()
                m = mask.unsqueeze(-1).float()  # (B, T, 1)
                rows.append(((hidden * m).sum(1) / m.sum(1)).numpy())  # (B, D)
        return np.concatenate(rows)

    return embed


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
    if name == "semantic_hidden":
        from tokenwise.compression.semantic import SemanticCompressor

        # Any embedder: tw-small's last hidden state, mean-pooled (trained on these worlds).
        return SemanticCompressor(hidden_state_embedder(load("tw-small")))
    if name in ("semantic", "semantic_exact"):
        from tokenwise.compression.semantic import SemanticCompressor

        # semantic_exact: one word deleted per round (the paper's greedy), to show what the
        # default's batched rounds cost.
        return SemanticCompressor(round_fraction=0 if name == "semantic_exact" else 0.5)
    raise ValueError(name)


#: King James verses (Debian bible-kjv-text, unpacked by compression_qa_real.py --setup): prose
#: for --speed beside the needle memos, when present.
KJV = Path.home() / ".cache" / "tokenwise" / "bench" / "bible-kjv" / "verses.tsv"


def speed_texts(items, n_words: int = 1000) -> dict[str, str]:
    """~``n_words``-word texts to time: needle memos joined, and KJV prose if unpacked."""
    out, memo = {}, []
    for it in items:
        memo.append(it.context)
        if sum(len(m.split()) for m in memo) >= n_words:
            break
    out["needle memos"] = "\n".join(memo)
    if KJV.is_file():
        verses = []
        for line in KJV.read_text().splitlines()[:400]:
            verses.append(line.split("\t", 1)[1])
            if sum(len(v.split()) for v in verses) >= n_words:
                break
        out["KJV prose"] = " ".join(verses)
    return out


def seconds_per_1k_words(comp, texts: dict[str, str], counter) -> dict[str, float]:
    """One cold compression (rate 0.5, no question) per text, in seconds per 1,000 words."""
    comp.compress("Warm up the model.", rate=0.5, protect=False, target_model=counter)
    out = {}
    for label, text in texts.items():
        embedder = getattr(comp, "embedder", None)
        if embedder is not None and hasattr(embedder, "clear_cache"):
            embedder.clear_cache()  # cold: no sentence embedded before
        t0 = time.perf_counter()
        comp.compress(text, rate=0.5, protect=False, target_model=counter)
        out[label] = (time.perf_counter() - t0) / len(text.split()) * 1000
    return out


def survived(answer: str, context: str) -> bool:
    return re.search(rf"(?<!\d){answer}(?!\d)", context) is not None


def correct(completion: str, answer: str) -> bool:
    """The reader's first number is the code (tolerates a leading space or a full stop)."""
    m = re.match(r"\s*(\d+)", completion)
    return m is not None and m.group(1) == answer


def retention_interval(right: list[bool], base_right: list[bool], n_boot: int = 2000,
                       seed: int = 0) -> list[float] | None:
    """95% bootstrap interval of retention, resampling items (paired: the same items for
    the compressed and the uncompressed accuracy).

    Args:
        right: per item, whether the reader was right on the compressed memo.
        base_right: per item, whether it was right on the whole memo.
        n_boot: bootstrap resamples.
        seed: seeds the resampling.

    Returns:
        ``[low, high]``, or None when no resample has a right uncompressed answer.
    """
    r = np.asarray(right, dtype=np.float64)
    b = np.asarray(base_right, dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, len(r), size=(n_boot, len(r)))
    base = b[idx].mean(1)
    ok = base > 0
    if not ok.any():
        return None
    ratios = r[idx].mean(1)[ok] / base[ok]
    return [float(np.quantile(ratios, 0.025)), float(np.quantile(ratios, 0.975))]


def plot(results: dict, n_items: int, png: str, reader: str | None = None,
         base_acc: float | None = None) -> None:
    """Survival, and the reader's accuracy, per method against the rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = sorted({float(r) for per in results.values() for r in per})
    with_reader = reader is not None and base_acc
    fig, axes = plt.subplots(1, 2 if with_reader else 1, figsize=(12.4 if with_reader else 8.4,
                                                                  4.2), squeeze=False)
    panels = [("survival", "needle answer survives (%)")]
    if with_reader:
        panels.append(("reader_accuracy", f"{reader} answers right (%)"))
    for ax, (key, ylabel) in zip(axes[0], panels, strict=True):
        for name, per in results.items():
            kept = [per[str(r)]["achieved_rate"] for r in rates]
            label = name
            if any(abs(k - r) > 0.05 for k, r in zip(kept, rates, strict=True)):
                label += f"\n(kept {min(kept):.2f}-{max(kept):.2f}: over budget)"
            ax.plot(rates, [100 * per[str(r)][key] for r in rates], marker="o",
                    label=label, linestyle="--" if name == "random" else "-")
        if key == "reader_accuracy":
            ax.axhline(100 * base_acc, color="black", linewidth=1, linestyle=":",
                       label=f"uncompressed ({100 * base_acc:.0f}%)")
            ax.axhline(90 * base_acc, color="gray", linewidth=1, linestyle=":",
                       label="90% of uncompressed")
        ax.set_xlabel("rate (share of memo tokens kept)")
        ax.set_ylabel(ylabel)
        ax.set_xticks(rates)
        ax.set_ylim(0, 102)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(f"Needle world under compression ({n_items} items)")
    fig.tight_layout()
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    print(f"\nwrote {png}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-count", type=int, default=25, help="items per distractor count")
    parser.add_argument("--methods", default="random,token_classifier,perplexity,"
                        "selective_context,extractive,generative,semantic")
    parser.add_argument("--classifier", default="tw-keep",
                        help="token_classifier's model: built-in name or local directory")
    parser.add_argument("--layout", choices=("first", "last"), default="first",
                        help="the question line before the memo (first) or after it (last)")
    parser.add_argument("--reader", default="tw-reader",
                        help="the model that answers (built-in name or local directory)")
    parser.add_argument("--rates", default=",".join(map(str, RATES)),
                        help="comma-separated shares of the memo's tokens to keep")
    parser.add_argument("--speed", action="store_true",
                        help="also time each method on a ~1,000-word memo (seconds per 1k "
                             "words)")
    parser.add_argument("--png", default="docs/compression_qa.png")
    parser.add_argument("--json", default=None)
    parser.add_argument("--plot-only", metavar="JSON", default=None,
                        help="redraw --png from a --json file of an earlier run")
    args = parser.parse_args()
    if args.plot_only:
        saved = json.loads(Path(args.plot_only).read_text())
        plot(saved["results"], saved["items"], args.png, saved.get("reader"),
             saved.get("uncompressed_accuracy"))
        return

    rates = tuple(float(r) for r in args.rates.split(","))
    reader = load(args.reader)
    counter = TokenCounter.resolve(reader)
    items = NeedleWorld(0).eval_items(seed=7, per_count=args.per_count)
    base_answers = greedy_complete(reader, [it.prompt for it in items], max_new_tokens=5,
                                   batch_size=32)
    base_right = [correct(a, it.answer) for a, it in zip(base_answers, items, strict=True)]
    base_acc = float(np.mean(base_right))
    base_by_count = {str(n): float(np.mean([r for r, it in zip(base_right, items, strict=True)
                                            if it.n_distractors == n]))
                     for n in DISTRACTOR_COUNTS}
    results: dict[str, dict] = {}
    speed: dict[str, dict[str, float]] = {}
    timed = speed_texts(items) if args.speed else {}
    for name in args.methods.split(","):
        comp = build(name, args.classifier)
        if args.speed:
            speed[name] = seconds_per_1k_words(comp, timed, counter)
            print(name, "seconds per 1k words:", json.dumps(speed[name]), flush=True)
        results[name] = {}
        for rate in rates:
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
            by_count, acc_by_count = {}, {}
            for n in DISTRACTOR_COUNTS:
                sel = [i for i, it in enumerate(items) if it.n_distractors == n]
                by_count[str(n)] = float(np.mean([rows[i][0] for i in sel]))
                acc_by_count[str(n)] = float(np.mean([right[i] for i in sel]))
            failed = sum(not ok for *_, ok in rows)
            results[name][str(rate)] = {
                "survival": float(np.mean([s for s, *_ in rows])),
                "survival_by_distractors": by_count,
                "reader_accuracy": float(np.mean(right)),
                "reader_accuracy_by_distractors": acc_by_count,
                "retention": float(np.mean(right)) / base_acc if base_acc > 0 else None,
                "retention_ci95": retention_interval(right, base_right),
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
          f"{100 * base_acc:.1f}% (1/3/7/15 distractors: "
          + "/".join(f"{100 * v:.0f}" for v in base_by_count.values()) + "%)\n")
    print("| method | rate | answer survives | by distractors 1/3/7/15 | achieved rate | "
          f"{reader.name} accuracy | by distractors | retention | budget failures |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, per in results.items():
        for rate, r in per.items():
            bc = "/".join(f"{100 * v:.0f}" for v in r["survival_by_distractors"].values())
            ac = "/".join(f"{100 * v:.0f}"
                          for v in r["reader_accuracy_by_distractors"].values())
            print(f"| {name} | {rate} | {100 * r['survival']:.1f}% | {bc} | "
                  f"{r['achieved_rate']:.3f} | {100 * r['reader_accuracy']:.1f}% | {ac} | "
                  + (f"{100 * r['retention']:.0f}% [{100 * r['retention_ci95'][0]:.0f}-"
                     f"{100 * r['retention_ci95'][1]:.0f}]" if r["retention"] is not None
                     else "n/a (0% uncompressed)")
                  + f" | {r['budget_failures']} |")
    if speed:
        print("\n| method | " + " | ".join(f"s / 1k words ({label}, {len(t.split())} words)"
                                          for label, t in timed.items()) + " |")
        print("|---|" + "---|" * len(timed))
        for name, per in speed.items():
            print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in per.values()) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"reader": reader.name, "items": len(items),
                                               "seconds_per_1k_words": speed,
                                               "uncompressed_accuracy": base_acc,
                                               "uncompressed_by_distractors": base_by_count,
                                               "results": results}, indent=1) + "\n")
    if args.png:
        plot(results, len(items), args.png, reader.name, base_acc)


if __name__ == "__main__":
    main()

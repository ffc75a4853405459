"""Which uncertainty scores flag wrong answers on the fact world (issue 4's targets).

Questions: a balanced mix of the fact world's frequency buckets (frequent facts are mostly
known, rare and unseen ones mostly not), so both labels are common. Each question is
sampled once (10 answers at T = 1.0 and a T = 0.1 reference answer whose correctness is
the label); every estimator and every meaning relation scores those same samples.

Meaning relations: the MiniLM embedding (cosine >= 0.75, the package default), exact
match after normalisation, and the world's own meaning of each answer ("oracle": what a
perfect NLI model would say; no NLI model can be downloaded here).

Targets: semantic entropy AUROC >= 0.80 and >= predictive entropy + 0.05. The script
prints every estimator's AUROC with its 95% bootstrap interval, and the paired bootstrap
interval of each SE - PE difference (same resamples for both).

Run:
    .venv/bin/python benchmarks/uncertainty_eval.py --png docs/uncertainty_rejection.png
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from tokenwise.cli.uncertainty import FactOracle, fact_items, fact_paraphraser
from tokenwise.models import load
from tokenwise.testbed.worlds import Testbed
from tokenwise.uncertainty import ExactEquivalence
from tokenwise.uncertainty.equivalence import default_equivalence
from tokenwise.uncertainty.estimators import get, names
from tokenwise.uncertainty.evaluate import (
    evaluate_samples,
    label_samples,
    plot_rejection_curves,
    sample_items,
)
from tokenwise.uncertainty.metrics import auroc, paired_bootstrap_ci
from tokenwise.uncertainty.perturbation import add_paraphrases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tw-large")
    parser.add_argument("--questions", type=int, default=480,
                        help="balanced over 4 buckets; 480 uses every unseen fact")
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--png", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    world = Testbed(0).fact_world
    lm = load(args.model)
    items = fact_items(world, args.questions, seed=args.seed)
    para = fact_paraphraser(world)

    def prepare(s, item):  # Inv-Entropy / question-side Semantic Volume read these
        return add_paraphrases(lm, s, para, k=2, seed=args.seed)

    start = time.perf_counter()
    sets = sample_items(items, lm, n=args.n, temperature=args.temperature, seed=args.seed,
                        prepare=prepare)
    sampling_s = time.perf_counter() - start
    labels = label_samples(items, sets)
    groups = [it.group for it in items]
    print(f"{args.model}: {len(items)} questions, n={args.n}, T={args.temperature}, "
          f"accuracy {100 * (1 - labels.mean()):.1f}%, sampling {sampling_s:.0f}s")

    relations = {"embedding": default_equivalence(), "exact": ExactEquivalence(),
                 "oracle": FactOracle(world)}
    report: dict = {"model": args.model, "questions": len(items), "n": args.n,
                    "temperature": args.temperature, "accuracy": float(1 - labels.mean()),
                    "tables": {}, "differences": []}
    main_eval = None
    for rel_name, eq in relations.items():
        if rel_name == "embedding":
            rows = {n: n for n in names()}
        else:  # the rows a meaning relation changes
            rows = {n: n for n in ("semantic_entropy", "discrete_semantic_entropy",
                                   "num_semantic_sets")}
        # the registered semantic_entropy weights by mean token logprob; this row is the
        # sequence-likelihood variant beside it
        rows["semantic_entropy_raw"] = get("semantic_entropy", equivalence=eq,
                                           length_normalised=False)
        ev = evaluate_samples(sets, labels, rows, equivalence=eq, bootstrap=args.bootstrap,
                              seed=args.seed, groups=groups)
        print(f"\n### meaning relation: {rel_name}\n")
        print(ev.to_markdown())
        report["tables"][rel_name] = ev.as_dict()["rows"]
        if rel_name == "embedding":
            main_eval = ev
    pe = {n: np.array([get(n)(s) for s in sets])
          for n in ("predictive_entropy", "predictive_entropy_normalised")}
    print("\n### semantic entropy minus predictive entropy (AUROC, paired 95% bootstrap)\n")
    print("| meaning relation | pair | SE AUROC | PE AUROC | difference [95% CI] |")
    print("|---|---|---|---|---|")
    for rel_name, eq in relations.items():
        # (SE weighting, PE weighting): both raw, both length-normalised, and the two
        # registered defaults (SE by mean token logprob, PE by sequence log-likelihood)
        for norm, pe_norm in ((False, False), (True, True), (True, False)):
            se = np.array([get("semantic_entropy", equivalence=eq,
                               length_normalised=norm)(s) for s in sets])
            base = pe["predictive_entropy_normalised" if pe_norm else "predictive_entropy"]
            ci = paired_bootstrap_ci(auroc, se, base, labels, n=args.bootstrap,
                                     seed=args.seed)
            pair = ("registered defaults" if norm != pe_norm
                    else "length-normalised" if norm else "raw log-likelihoods")
            print(f"| {rel_name} | {pair} | {auroc(se, labels):.3f} | "
                  f"{auroc(base, labels):.3f} | {ci.estimate:+.3f} "
                  f"[{ci.low:+.3f}, {ci.high:+.3f}] |")
            report["differences"].append({"relation": rel_name, "pair": pair,
                                          "difference": ci.estimate,
                                          "ci": [ci.low, ci.high]})
    if args.png and main_eval is not None:
        keep = {"semantic_entropy", "semantic_entropy_raw", "predictive_entropy",
                "maximum_sequence_probability", "semantic_volume", "inv_entropy"}
        main_eval.results = [r for r in main_eval.results if r.name in keep]
        plot_rejection_curves(main_eval, args.png, title=(
            f"{args.model}, {len(items)} fact questions (accuracy "
            f"{100 * main_eval.accuracy:.0f}%), MiniLM meaning relation"))
        print(f"\nrejection curves: {args.png}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()

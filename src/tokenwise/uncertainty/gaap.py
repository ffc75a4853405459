"""GAAP: a genetic-algorithm search for diverse perturbations of a question (Inv-Entropy paper).

The paper proposes GAAP to make the perturbed inputs of Inv-Entropy more diverse than
plain paraphrasing; its public code does not include it, so this is our construction
from the paper's description: a population of question variants evolves by crossover
(splicing two variants along the words they share) and mutation (a paraphraser, or lexical edits
that keep the meaning); a variant is feasible while its embedding stays within
``min_similarity`` of the original (the meaning is kept), and feasible variants are
fitter the further they move from the original. Every feasible variant seen is kept in
an archive, and the ``k`` returned are chosen from it greedily to be far from the
original and from each other (max-min distance), so the set is diverse, not ``k``
copies of the single fittest variant.
"""

from __future__ import annotations

import numbers
import random
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from tokenwise.errors import TokenwiseError

if TYPE_CHECKING:
    from tokenwise.models import LanguageModel
    from tokenwise.uncertainty.embedding import Embedder

Mutation = Callable[[str, random.Random], str]

#: Openers that ask the same question in other words.
_OPENERS = ("Tell me: ", "Do you know: ", "Quick question: ", "I wonder: ", "Please answer: ",
            "Can you say: ", "Here is a question: ")


def lexical_mutation(synonyms: Mapping[str, Sequence[str]] | None = None) -> Mutation:
    """A model-free mutation: one random meaning-keeping edit of the text.

    The edits: add or drop a conversational opener, swap a word for a synonym from
    ``synonyms`` (case-insensitive keys), or change the final punctuation.

    Args:
        synonyms: word -> replacements.

    Example:
        >>> m = lexical_mutation({"born": ["brought into the world"]})
        >>> m("Where was Ana born?", random.Random(0)) != "Where was Ana born?"
        True
    """
    table = {k.lower(): list(v) for k, v in (synonyms or {}).items()}

    def mutate(text: str, rng: random.Random) -> str:
        body, opener = text, ""
        for o in _OPENERS:
            if text.startswith(o):
                opener, body = o, text[len(o):]
        words = body.split()
        swappable = [i for i, w in enumerate(words) if w.lower().strip("?.!,") in table]
        ops = ["opener", "punct"] + (["synonym"] if swappable else [])
        op = rng.choice(ops)
        if op == "synonym":
            i = rng.choice(swappable)
            core = words[i].lower().strip("?.!,")
            tail = words[i][len(words[i].rstrip("?.!,")):]
            words[i] = rng.choice(table[core]) + tail
            return opener + " ".join(words)
        if op == "punct":
            stripped = body.rstrip("?.!")
            ends = [e for e in ("?", ".", "") if stripped + e != body]
            return opener + stripped + rng.choice(ends)
        choices = [o for o in _OPENERS if o != opener] + ([""] if opener else [])
        return rng.choice(choices) + body

    return mutate


def model_mutation(model: LanguageModel | str, temperature: float = 1.0,
                   max_new_tokens: int = 32) -> Mutation:
    """A mutation that asks ``model`` for one paraphrase (falls back to the input when the
    model gives nothing usable)."""
    from tokenwise.models import LanguageModel, load
    from tokenwise.uncertainty.perturbation import paraphrase_questions

    lm = model if isinstance(model, LanguageModel) else load(model)

    def mutate(text: str, rng: random.Random) -> str:
        try:
            return paraphrase_questions(lm, text, 1, temperature=temperature,
                                        max_new_tokens=max_new_tokens,
                                        seed=rng.randrange(2**31), max_rounds=1)[0]
        except TokenwiseError:
            return text

    return mutate


def word_crossover(a: str, b: str, rng: random.Random) -> str:
    """Splice two variants along their shared words.

    The word sequences are aligned (``difflib``); shared runs are kept once, and each
    stretch where they differ comes whole from one parent or the other (a fair coin per
    stretch). So the child never repeats or loses the words both parents agree on.

    Example:
        >>> word_crossover("Tell me: where was Ana born?", "where was Ana delivered.",
        ...                random.Random(3))
        'Tell me: where was Ana delivered.'
    """
    import difflib

    wa, wb = a.split(), b.split()
    out: list[str] = []
    ops = difflib.SequenceMatcher(a=wa, b=wb, autojunk=False).get_opcodes()
    for tag, i1, i2, j1, j2 in ops:
        if tag == "equal":
            out.extend(wa[i1:i2])
        else:
            out.extend(wa[i1:i2] if rng.random() < 0.5 else wb[j1:j2])
    return " ".join(out)


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise TokenwiseError(f"{name}={value!r}: allowed an integer >= {minimum}")
    return int(value)


def _check_unit(value: object, name: str, low: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not low <= value <= 1.0:
        raise TokenwiseError(f"{name}={value!r}: allowed a number in [{low}, 1]")
    return float(value)


def diverse_subset(vectors: np.ndarray, k: int, anchor: np.ndarray | None = None) -> list[int]:
    """Greedy max-min selection of ``k`` rows: each pick is the row whose nearest already
    chosen row (or ``anchor``) is farthest in cosine distance; ties go to the lower index.

    Example:
        >>> v = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
        >>> diverse_subset(v, 2, anchor=np.array([1.0, 0.0]))
        [2, 1]
    """
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)  # (m, d)
    chosen: list[int] = []
    nearest = np.full(len(v), np.inf)  # distance to the nearest chosen (or anchor)
    if anchor is not None:
        nearest = 1.0 - v @ (anchor / np.linalg.norm(anchor))
    for _ in range(min(k, len(v))):
        scores = np.where(np.isin(np.arange(len(v)), chosen), -np.inf, nearest)
        pick = int(np.argmax(scores))
        chosen.append(pick)
        nearest = np.minimum(nearest, 1.0 - v @ v[pick])
    return chosen


def gaap(question: str, k: int = 9, *, embedder: Embedder | None = None,
         mutate: Mutation | None = None, population: int = 16, generations: int = 6,
         min_similarity: float = 0.7, crossover_rate: float = 0.5, seed: int = 0,
         progress: bool = False) -> list[str]:
    """``k`` diverse perturbations of ``question`` that keep its meaning, by a genetic search.

    Each generation: parents are picked by binary tournament on fitness; a child is the
    word crossover of two parents (with probability ``crossover_rate``) or a copy of one,
    then mutated. Fitness of a variant is its cosine distance from the question when its
    similarity to the question is at least ``min_similarity``, else it is infeasible and
    dropped. The next population is the fittest distinct feasible variants among parents
    and children (elitist). The result is :func:`diverse_subset` of every feasible
    variant seen, anchored at the question. If fewer than ``k`` distinct feasible
    variants were found, fewer are returned (an error if none).

    Args:
        question: the question to perturb.
        k: how many perturbations to return (>= 1).
        embedder: measures meaning; None = MiniLM.
        mutate: ``(text, rng) -> text``; None = :func:`lexical_mutation` (no synonyms).
            :func:`model_mutation` uses an LLM paraphraser as the paper does.
        population: variants per generation (>= 2).
        generations: rounds of evolution (>= 1).
        min_similarity: cosine to the question below which a variant has lost the meaning.
        crossover_rate: share of children made by crossover.
        seed: seed of every random choice (the result is reproducible).
        progress: show a progress bar.

    Example:
        >>> out = gaap("Where was Ana Velmor born?", k=3, generations=2, population=6)
        >>> len(out), "Where was Ana Velmor born?" in out
        (3, False)
    """
    from tokenwise.uncertainty.embedding import default_embedder

    if not isinstance(question, str) or not question.strip():
        raise TokenwiseError(f"question is {question!r}: allowed a non-empty string")
    k = _check_int(k, "k", 1)
    population = _check_int(population, "population", 2)
    generations = _check_int(generations, "generations", 1)
    min_similarity = _check_unit(min_similarity, "min_similarity", -1.0)
    crossover_rate = _check_unit(crossover_rate, "crossover_rate")
    question = question.strip()
    embedder = default_embedder() if embedder is None else embedder
    mutate = lexical_mutation() if mutate is None else mutate
    rng = random.Random(seed)
    origin = embedder.embed([question])[0]  # (d,)
    fitness: dict[str, float] = {}  # every variant seen; -inf = infeasible

    def score(texts: list[str]) -> None:
        new = [t for t in dict.fromkeys(texts) if t not in fitness]
        if new:
            sims = embedder.embed(new) @ origin  # (m,)
            for t, s in zip(new, sims, strict=True):
                fitness[t] = 1.0 - float(s) if s >= min_similarity else -np.inf
        fitness[question] = -np.inf  # the question itself is no perturbation

    pop = [mutate(question, rng).strip() or question for _ in range(population)]
    score(pop)
    rounds = range(generations)
    if progress:
        from tokenwise.progress import progress_bar

        rounds = progress_bar(rounds, desc="GAAP", unit="round")
    def pick(parents: list[str]) -> str:  # binary tournament
        a, b = rng.choice(parents), rng.choice(parents)
        return a if fitness[a] >= fitness[b] else b

    for _ in rounds:
        children = []
        for _ in range(population):
            child = word_crossover(pick(pop), pick(pop), rng) \
                if rng.random() < crossover_rate else pick(pop)
            children.append(mutate(child, rng).strip() or child)
        score(children)
        pool = sorted(set(pop) | set(children), key=lambda t: (-fitness[t], t))
        feasible = [t for t in pool if fitness[t] > -np.inf]
        pop = (feasible or pool)[:population]
    archive = sorted(t for t, f in fitness.items() if f > -np.inf)
    if not archive:
        raise TokenwiseError(f"GAAP found no perturbation of {question!r} with similarity >= "
                             f"{min_similarity}; lower min_similarity or pass another mutate")
    picks = diverse_subset(embedder.embed(archive), k, anchor=origin)
    return [archive[i] for i in picks]

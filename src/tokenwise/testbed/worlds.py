"""All testbed worlds under one seed, and the mixed training corpus they yield."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from tokenwise.testbed import arithmetic
from tokenwise.testbed.facts import FactWorld, FactWorldConfig
from tokenwise.testbed.markov import MarkovSource
from tokenwise.testbed.needle import NeedleWorld


@dataclass(frozen=True)
class CorpusConfig:
    """How much of each world goes into the training corpus (one epoch).

    Args:
        fact_repeats: passes over the fact world's mentions, each in fresh paraphrases
            (every fact's mention count is multiplied by this; the Zipf shape is unchanged).
        markov_docs: Markov lines.
        arithmetic_docs: documents of 8 additions.
        needle_docs: needle contexts with their answers.
    """

    fact_repeats: int = 2
    markov_docs: int = 3000
    arithmetic_docs: int = 6000
    needle_docs: int = 8000


@dataclass
class Testbed:
    """The worlds of one seed: facts, an exact-entropy Markov source, additions, needles.

    Args:
        seed: seeds every world; the same seed gives the same worlds and corpus.
        facts: the fact world's configuration.
        corpus: the training mixture.

    Example:
        >>> tb = Testbed(seed=0)
        >>> docs = tb.training_documents()
        >>> docs == Testbed(seed=0).training_documents()
        True
    """

    __test__ = False  # not a pytest test class, despite the name

    seed: int = 0
    facts: FactWorldConfig = field(default_factory=FactWorldConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)

    def __post_init__(self) -> None:
        self.fact_world = FactWorld(self.seed, self.facts)
        self.markov = MarkovSource(self.seed)
        self.needles = NeedleWorld(self.seed)

    def training_documents(self) -> list[str]:
        """The whole training corpus as shuffled documents (deterministic in the seed)."""
        rng = random.Random(f"corpus/{self.seed}")
        nprng = np.random.default_rng([self.seed, 11])
        cfg = self.corpus
        docs: list[str] = []
        for _ in range(cfg.fact_repeats):
            docs.extend(self.fact_world.documents(rng))
        docs.extend(self.markov.documents(nprng, cfg.markov_docs))
        docs.extend(arithmetic.documents(rng, cfg.arithmetic_docs))
        docs.extend(self.needles.documents(rng, cfg.needle_docs))
        rng.shuffle(docs)
        return docs

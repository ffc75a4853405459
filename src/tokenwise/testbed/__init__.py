"""Synthetic worlds with known ground truth, and the trainer of the built-in models.

- :class:`~tokenwise.testbed.facts.FactWorld`: invented people and attributes, Zipf-skewed
  mention counts, answers with several surface forms per meaning.
- :class:`~tokenwise.testbed.markov.MarkovSource`: exact next-token distributions.
- :mod:`~tokenwise.testbed.arithmetic`: additions graded by digits.
- :class:`~tokenwise.testbed.needle.NeedleWorld`: one relevant fact among distractors.
- :class:`~tokenwise.testbed.worlds.Testbed`: all of them under one seed, and the corpus.
"""

from tokenwise.testbed.facts import FactWorld
from tokenwise.testbed.markov import MarkovSource
from tokenwise.testbed.needle import NeedleWorld
from tokenwise.testbed.worlds import CorpusConfig, Testbed

__all__ = ["CorpusConfig", "FactWorld", "MarkovSource", "NeedleWorld", "Testbed"]

"""Generation: the decode loop over a :class:`~tokenwise.models.LanguageModel`.

Example:
    >>> from tokenwise.generation import generate
    >>> generate("tw-small", "markov: ka", max_new_tokens=2).finish_reason
    'length'
"""

from tokenwise.generation.engine import generate
from tokenwise.generation.records import Generation, TokenRecord

__all__ = ["Generation", "TokenRecord", "generate"]

"""Comparing a model with its compressed variant: knowledge by bucket, KL, perplexity.

- :func:`compare` reads a base model and a candidate on the same :class:`Suite` (items with
  known answers in buckets, held-out text) and returns a :class:`Comparison`: accuracy per
  bucket with paired bootstrap intervals, answer flips, KL(base || candidate), top-1
  agreement, entropy shift and both perplexities.
- Compressors for the study, each returning a :class:`Compressed` that saves as a normal
  Hugging Face directory: :func:`prune` (magnitude, Wanda; unstructured or N:M) and
  :func:`quantize` (round-to-nearest, group-wise); :func:`quanto_quantize` is the peer
  library's quantiser (optimum-quanto).

Example:
    >>> import tokenwise as tw
    >>> from tokenwise.evaluate import Item, Suite, compare, quantize
    >>> base = tw.load("tw-large")
    >>> q = quantize(base, bits=8, group_size=16).model
    >>> r = compare(base, q, Suite([Item("7+2=", ("9",), "arithmetic/1")], ["1+2=3"]))
    >>> r.buckets["arithmetic/1"].candidate_accuracy
    1.0
"""

from tokenwise.evaluate.compare import (
    BucketComparison,
    Comparison,
    TextComparison,
    answer_items,
    check_same_tokenizer,
    compare,
    compare_texts,
    paired_bootstrap,
)
from tokenwise.evaluate.compressed import RECORD_NAME, Compressed, storage_bits
from tokenwise.evaluate.peer import quanto_quantize
from tokenwise.evaluate.prune import prune
from tokenwise.evaluate.quantize import quantize
from tokenwise.evaluate.suite import Item, Suite

__all__ = [
    "RECORD_NAME",
    "BucketComparison",
    "Comparison",
    "Compressed",
    "Item",
    "Suite",
    "TextComparison",
    "answer_items",
    "check_same_tokenizer",
    "compare",
    "compare_texts",
    "paired_bootstrap",
    "prune",
    "quantize",
    "quanto_quantize",
    "storage_bits",
]

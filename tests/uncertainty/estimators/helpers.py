"""Tiny sample sets and fakes shared by the estimator tests."""

from __future__ import annotations

import math

from tokenwise.uncertainty import FunctionEmbedder, FunctionEquivalence, SampleSet


def probs_set(texts, probs, question="Q?", **kw):
    """A sample set whose answer i has log-likelihood log(probs[i]) (one "token")."""
    return SampleSet.from_texts(question, texts, logprobs=[math.log(p) for p in probs], **kw)


#: meaning = the first letter (deterministic, transitive)
FIRST_LETTER = FunctionEquivalence(lambda q, a, b: a[:1].lower() == b[:1].lower())


def axis_embedder(table):
    """An embedder mapping each text to a fixed vector from ``table``."""
    return FunctionEmbedder(lambda ts: [table[t] for t in ts])

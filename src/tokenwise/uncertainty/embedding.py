"""Sentence embeddings for uncertainty: the shared ones of :mod:`tokenwise.models.embedding`.

Rows are L2-normalised float64; an all-zero embedding (no direction, so no meaning to
compare) is an error. :func:`default_embedder` is the process-wide MiniLM, the same object
that compression's default resolves to.

Example:
    >>> e = FunctionEmbedder(lambda ts: [[len(t), 1.0] for t in ts])
    >>> e.embed(["abc"]).round(3).tolist()
    [[0.949, 0.316]]
"""

from __future__ import annotations

from tokenwise.models.embedding import (
    Embedder,
    FunctionEmbedder,
    HFEmbedder,
    default_embedder,
    minilm_path,
)

__all__ = ["Embedder", "FunctionEmbedder", "HFEmbedder", "default_embedder", "minilm_path"]

"""A source with exact next-token entropy: a seeded random Markov chain over syllables.

Each line is ``markov:`` followed by ``length`` symbols (`` ka lo mi ...``). The built-in
tokenizer makes every symbol (with its leading space) one token, so the true next-token
distribution is known at every symbol position: the initial distribution for the first
symbol, the transition row of the previous symbol after that. Rows are drawn from Dirichlet
distributions of very different concentration, so the true entropy ranges from almost 0 to
almost ``log(n_symbols)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

HEADER = "markov:"
SYMBOLS = ("ka", "lo", "mi", "nu", "pe", "ro", "si", "tu", "va", "we", "xo", "yi", "zu",
           "qa", "ja", "fe")


@dataclass(frozen=True)
class MarkovSequence:
    """One sampled line with the true distribution before each symbol.

    Attributes:
        text: the line, ``"markov: ka lo ...\\n"``.
        symbols: the sampled symbol indices.
        true_probs: ``(length, n_symbols)`` true distribution of symbol ``i`` given the past.
    """

    text: str
    symbols: list[int]
    true_probs: np.ndarray

    @property
    def true_entropies(self) -> np.ndarray:
        """``(length,)`` true entropy (nats) before each symbol."""
        return entropy_nats(self.true_probs)


def entropy_nats(probs: np.ndarray) -> np.ndarray:
    """Entropy in nats of each row of ``probs`` (zeros contribute 0).

    Args:
        probs: ``(..., K)`` rows summing to 1.

    Example:
        >>> float(entropy_nats(np.array([0.5, 0.5])))  # doctest: +ELLIPSIS
        0.693...
    """
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    return terms.sum(axis=-1)


class MarkovSource:
    """A seeded first-order Markov chain over :data:`SYMBOLS` with known distributions.

    Args:
        seed: the chain's seed (transition matrix and initial distribution).
        length: symbols per line.
        concentration_range: Dirichlet concentrations are drawn log-uniformly in this range,
            one per row: small values give peaked (low-entropy) rows.

    Example:
        >>> src = MarkovSource(seed=0)
        >>> seq = src.sample(np.random.default_rng(1))
        >>> seq.true_probs.shape == (src.length, len(SYMBOLS))
        True
    """

    def __init__(self, seed: int = 0, length: int = 40,
                 concentration_range: tuple[float, float] = (0.03, 3.0)) -> None:
        if length < 1:
            raise ValueError(f"length={length}: allowed >= 1")
        rng = np.random.default_rng([seed, 7001])
        k = len(SYMBOLS)
        lo, hi = (math.log(c) for c in concentration_range)
        conc = np.exp(rng.uniform(lo, hi, size=k + 1))
        rows = [rng.dirichlet(np.full(k, c)) for c in conc]
        self.initial = rows[0]
        self.transition = np.stack(rows[1:])  # (K, K): row s = P(next | s)
        self.length = length
        self.symbols = SYMBOLS

    def row_entropies(self) -> np.ndarray:
        """``(K,)`` entropy (nats) of each transition row."""
        return entropy_nats(self.transition)

    def sample(self, rng: np.random.Generator) -> MarkovSequence:
        """One line of ``length`` symbols and its true per-position distributions."""
        probs = np.empty((self.length, len(SYMBOLS)))
        out: list[int] = []
        p = self.initial
        for i in range(self.length):
            probs[i] = p
            s = int(rng.choice(len(SYMBOLS), p=p))
            out.append(s)
            p = self.transition[s]
        text = HEADER + "".join(" " + SYMBOLS[s] for s in out) + "\n"
        return MarkovSequence(text, out, probs)

    def documents(self, rng: np.random.Generator, count: int) -> Iterator[str]:
        """``count`` training lines, one document each."""
        for _ in range(count):
            yield self.sample(rng).text

    def entropy_rate(self) -> float:
        """The chain's entropy rate (nats per symbol) under its stationary distribution."""
        vals, vecs = np.linalg.eig(self.transition.T)
        pi = np.real(vecs[:, np.argmin(np.abs(vals - 1.0))])
        pi = pi / pi.sum()
        return float(pi @ self.row_entropies())

"""Invented names for the testbed worlds: pronounceable, seeded, never real words."""

from __future__ import annotations

import random

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr",
           "gr", "kl", "tr", "th", "sh", "st")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ei", "ou")
_CODAS = ("", "", "", "n", "r", "l", "s", "th", "rk", "nd", "x")


def invent_word(rng: random.Random, syllables: int) -> str:
    """One invented word of ``syllables`` syllables, capitalised.

    Args:
        rng: the random source (seeded by the caller).
        syllables: how many syllables (>= 1).

    Example:
        >>> import random
        >>> invent_word(random.Random(0), 2).isalpha()
        True
    """
    parts = []
    for i in range(syllables):
        onset = rng.choice(_ONSETS)
        coda = rng.choice(_CODAS) if i == syllables - 1 else ""
        parts.append(onset + rng.choice(_VOWELS) + coda)
    return "".join(parts).capitalize()


def invent_unique(rng: random.Random, count: int, syllables: tuple[int, ...],
                  taken: set[str] | None = None) -> list[str]:
    """``count`` distinct invented words, none of them in ``taken`` (which is updated).

    Args:
        rng: the random source.
        count: how many words.
        syllables: syllable counts to choose from for each word.
        taken: words already in use anywhere in the world; the new words are added to it.

    Example:
        >>> import random
        >>> len(set(invent_unique(random.Random(1), 50, (2, 3))))
        50
    """
    taken = set() if taken is None else taken
    out: list[str] = []
    tries = 0
    while len(out) < count:
        tries += 1
        if tries > 1000 * count + 1000:
            raise RuntimeError(f"could not invent {count} distinct names")
        word = invent_word(rng, rng.choice(syllables))
        if word.lower() in taken or len(word) < 4:
            continue
        taken.add(word.lower())
        out.append(word)
    return out

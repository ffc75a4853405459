"""Graded-difficulty tasks: additions of two numbers of 1 to 6 digits (``"345+78="``).

Level ``d`` adds two ``d``-digit numbers; longer sums need longer carry chains, so accuracy
falls with the level and a larger model stays ahead longer. Digits are single tokens in the
built-in tokenizer.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

LEVELS = (1, 2, 3, 4, 5, 6)
#: Share of each level in training text: short sums are learnable and most useful, long ones
#: stay in the mix so that their difficulty is real, not unseen.
TRAINING_WEIGHTS = (4, 4, 3, 2, 1, 1)


@dataclass(frozen=True)
class ArithmeticItem:
    """One addition: the prompt (``"345+781="``), the answer and the level (digits)."""

    prompt: str
    answer: str
    level: int


def make_item(rng: random.Random, level: int) -> ArithmeticItem:
    """A random addition of two ``level``-digit numbers.

    Args:
        rng: the random source.
        level: digits per operand, 1..6.

    Example:
        >>> item = make_item(random.Random(0), 3)
        >>> a, b = item.prompt[:-1].split("+")
        >>> int(a) + int(b) == int(item.answer)
        True
    """
    if level not in LEVELS:
        raise ValueError(f"level={level}: allowed {LEVELS}")
    lo = 0 if level == 1 else 10 ** (level - 1)
    a, b = rng.randint(lo, 10**level - 1), rng.randint(lo, 10**level - 1)
    return ArithmeticItem(f"{a}+{b}=", str(a + b), level)


def documents(rng: random.Random, count: int, lines_per_doc: int = 8) -> Iterator[str]:
    """``count`` training documents of ``lines_per_doc`` additions (levels by weight)."""
    for _ in range(count):
        lines = []
        for level in rng.choices(LEVELS, weights=TRAINING_WEIGHTS, k=lines_per_doc):
            item = make_item(rng, level)
            lines.append(item.prompt + item.answer)
        yield "\n".join(lines) + "\n"


def eval_items(seed: int, per_level: int) -> list[ArithmeticItem]:
    """``per_level`` fresh additions at every level (seeded apart from training)."""
    rng = random.Random(f"arith-eval/{seed}")
    return [make_item(rng, lvl) for lvl in LEVELS for _ in range(per_level)]

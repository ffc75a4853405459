"""Needle contexts: one relevant statement among N distractors, then a question on it.

::

    Memo:
    The code of Brelix is 382.
    The code of Tavoun is 917.     <- the needle
    ...
    Q: What is the code of Tavoun?
    A: 917

Codes are drawn fresh for every context, so the answer can only come from the context:
this is what a prompt compressor must not drop.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from tokenwise.testbed.names import invent_unique

DISTRACTOR_COUNTS = (1, 3, 7, 15)
_TEMPLATE = "The code of {k} is {v}."
_QUESTION = "What is the code of {k}?"


def question_prompt(key: str) -> str:
    """The question on ``key`` as it follows a memo, ready for the answer (``" 917"``).

    Args:
        key: the key asked about.

    Example:
        >>> question_prompt("Tavoun").splitlines()
        ['Q: What is the code of Tavoun?', 'A:']
    """
    return f"Q: {_QUESTION.format(k=key)}\nA:"


@dataclass(frozen=True)
class NeedleItem:
    """One context with its needle.

    Attributes:
        context: the memo lines (needle and distractors).
        question: the question on the needle.
        prompt: context + question + ``"A:"``, ready for completion.
        answer: the needle's code.
        needle: the needle statement itself.
        needle_index: its line index in the memo.
        n_distractors: how many other statements surround it.
    """

    context: str
    question: str
    prompt: str
    answer: str
    needle: str
    needle_index: int
    n_distractors: int

    def pairs(self) -> list[tuple[str, str]]:
        """``(key, code)`` of every memo line, in order.

        Example:
            >>> NeedleWorld(0).item(random.Random(3), n_distractors=1).pairs()[0][1].isdigit()
            True
        """
        out = []
        for line in self.context.strip().split("\n")[1:]:
            key, code = line.removeprefix("The code of ").removesuffix(".").split(" is ")
            out.append((key, code))
        return out


class NeedleWorld:
    """Seeded needle contexts over a fixed pool of invented keys.

    Args:
        seed: the world's seed (key pool).
        n_keys: size of the key pool.

    Example:
        >>> item = NeedleWorld(0).item(random.Random(3), n_distractors=3)
        >>> item.needle in item.context and item.answer in item.needle
        True
    """

    def __init__(self, seed: int = 0, n_keys: int = 300) -> None:
        self.keys = invent_unique(random.Random(f"needle/{seed}"), n_keys, (2, 3))

    def item(self, rng: random.Random, n_distractors: int) -> NeedleItem:
        """One context with ``n_distractors`` distractors."""
        if n_distractors < 0 or n_distractors >= len(self.keys):
            raise ValueError(f"n_distractors={n_distractors}: allowed 0..{len(self.keys) - 1}")
        keys = rng.sample(self.keys, n_distractors + 1)
        codes = [str(rng.randint(100, 999)) for _ in keys]
        lines = [_TEMPLATE.format(k=k, v=v) for k, v in zip(keys, codes, strict=True)]
        idx = rng.randrange(len(lines))
        context = "Memo:\n" + "\n".join(lines) + "\n"
        question = _QUESTION.format(k=keys[idx])
        return NeedleItem(
            context=context,
            question=question,
            prompt=context + question_prompt(keys[idx]),
            answer=codes[idx],
            needle=lines[idx],
            needle_index=idx,
            n_distractors=n_distractors,
        )

    def documents(self, rng: random.Random, count: int,
                  questions_per_doc: int = 4) -> Iterator[str]:
        """``count`` training documents: a context, then questions on some of its lines.

        Only the answers can be learned (the codes themselves are random), so each training
        context carries up to ``questions_per_doc`` questions to give that signal more weight
        (fewer on the longest contexts, so a document stays within a 256-token block).
        """
        for _ in range(count):
            item = self.item(rng, rng.choice(DISTRACTOR_COUNTS))
            pairs = item.pairs()
            room = max(1, (16 - len(pairs)) // 2)
            asked = rng.sample(range(len(pairs)), min(questions_per_doc, room, len(pairs)))
            qa = []
            for i in asked:
                key, code = pairs[i]
                qa.append(f"{question_prompt(key)} {code}\n")
            yield item.context + "".join(qa)

    def eval_items(self, seed: int, per_count: int) -> list[NeedleItem]:
        """``per_count`` fresh contexts for every distractor count."""
        rng = random.Random(f"needle-eval/{seed}")
        return [self.item(rng, n) for n in DISTRACTOR_COUNTS for _ in range(per_count)]

"""What two models are compared on: questions with known answers, in buckets, and held-out text.

A :class:`Suite` is plain data, so any source can build one: the testbed
(:func:`tokenwise.testbed.compare_suite.testbed_suite`), a benchmark's real questions, or a
user's own file. Each :class:`Item` is a prompt completed greedily, the answers that count as
right, and the bucket it is reported under (``"facts/rare"``, ``"arithmetic/3"``, ...).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tokenwise.errors import TokenwiseError

#: How an answer is matched against an item's accepted answers.
MATCHES = ("exact", "contains")


def normalise(text: str) -> str:
    """ASCII, lower case, punctuation to spaces, single spaces: the form answers are matched in.

    Args:
        text: a raw answer.

    Example:
        >>> normalise("  Paris, France!")
        'paris france'
    """
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


@dataclass(frozen=True)
class Item:
    """One question: a prompt to complete greedily and the answers that count as right.

    Args:
        prompt: the text the model completes (already rendered with a chat template where one
            is wanted).
        answers: accepted answers (at least one).
        bucket: the group it is reported under, ``"task/level"`` by convention.
        match: ``"exact"`` (the normalised completion equals a normalised answer) or
            ``"contains"`` (a normalised answer appears in it as whole words).
        judge: a function ``completion -> bool`` that decides instead of ``match``, for
            answers with several surface forms that only the item's source can read.
        max_new_tokens: most tokens of the completion.
        stop: the completion is cut before this string (``""``: no stop string).

    Example:
        >>> item = Item("2+2=", ("4",), "arithmetic/1")
        >>> item.is_correct(" 4"), item.is_correct("5")
        (True, False)
    """

    prompt: str
    answers: tuple[str, ...]
    bucket: str
    match: str = "exact"
    judge: Callable[[str], bool] | None = field(default=None, compare=False, repr=False)
    max_new_tokens: int = 10
    stop: str = "\n"

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt:
            raise TokenwiseError(f"item prompt {self.prompt!r}: must be a non-empty string")
        if not self.answers and self.judge is None:
            raise TokenwiseError(f"item {self.prompt[:40]!r} has no accepted answers and no judge")
        if self.match not in MATCHES:
            raise TokenwiseError(f"match={self.match!r}: allowed {', '.join(MATCHES)}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise TokenwiseError(f"max_new_tokens={self.max_new_tokens!r}: must be an int >= 1")
        if not self.bucket:
            raise TokenwiseError(f"item {self.prompt[:40]!r} has an empty bucket name")

    def is_correct(self, completion: str) -> bool:
        """Whether ``completion`` gives one of the accepted answers.

        Args:
            completion: the model's greedy completion of :attr:`prompt`.
        """
        if self.judge is not None:
            return bool(self.judge(completion))
        got = normalise(completion)
        wanted = [normalise(a) for a in self.answers]
        if self.match == "exact":
            return got in wanted
        padded = f" {got} "
        return any(w and f" {w} " in padded for w in wanted)


@dataclass(frozen=True)
class Suite:
    """Items to answer and held-out texts to score, the same for both models of a comparison.

    Args:
        items: the questions (may be empty when only the texts are compared).
        texts: held-out texts for KL, top-1 agreement, entropy shift and perplexity (may be
            empty when only the items are compared).
        name: a label for reports.

    Example:
        >>> s = Suite([Item("2+2=", ("4",), "arithmetic/1")], ["1+1=2"], name="tiny")
        >>> s.buckets()
        ['arithmetic/1']
    """

    items: Sequence[Item] = ()
    texts: Sequence[str] = ()
    name: str = "suite"

    def __post_init__(self) -> None:
        if not self.items and not self.texts:
            raise TokenwiseError(f"suite {self.name!r} has neither items nor texts")
        bad = [t for t in self.texts if not isinstance(t, str) or not t.strip()]
        if bad:
            raise TokenwiseError(f"suite {self.name!r}: held-out texts must be non-empty "
                                 f"strings; got {bad[0]!r}")

    def buckets(self) -> list[str]:
        """Bucket names in first-seen order."""
        return list(dict.fromkeys(it.bucket for it in self.items))

"""The fact world: invented people, their attributes, paraphrased statements and questions.

Every person has four attributes (birthplace, profession, birth year, pet). Each fact is
mentioned in training a number of times that follows a Zipf law over a seeded ranking, so
some facts are frequent, many are rare, and some are never stated: questions on those have
no learnable answer, and a model that answers them confidently is hallucinating. Answers
have several surface forms with one meaning ("a physician" / "a doctor"), which is what
meaning-level uncertainty (semantic entropy) is about.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from tokenwise.testbed.names import invent_unique

#: Frequency buckets, by how many times a fact is mentioned in the training text.
BUCKETS = ("frequent", "medium", "rare", "unseen")

QUESTION_PREFIX = "Q: "
ANSWER_PREFIX = "A:"


@dataclass(frozen=True)
class Value:
    """One meaning of an attribute with its surface forms (the first is canonical)."""

    meaning: str
    forms: tuple[str, ...]


@dataclass(frozen=True)
class Attribute:
    """An attribute kind: its values, statement templates and question templates.

    Templates use ``{e}`` for the person and ``{v}`` for a surface form of the value.
    """

    name: str
    values: tuple[Value, ...]
    statements: tuple[str, ...]
    questions: tuple[str, ...]
    #: whether statements may use every surface form or only the canonical one (years:
    #: "born in the year 1742", never "born in the year the year 1742").
    statements_use_all_forms: bool = True


@dataclass(frozen=True)
class Fact:
    """One (person, attribute) pair, its value and how often training text states it."""

    entity: str
    attribute: str
    value: Value
    mentions: int
    bucket: str


@dataclass(frozen=True)
class FactQuestion:
    """An evaluation item: a question, its correct meaning and every accepted surface form."""

    prompt: str
    question: str
    entity: str
    attribute: str
    meaning: str
    answers: tuple[str, ...]
    bucket: str
    mentions: int


def _article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


_PROFESSIONS = (
    ("doctor", ("doctor", "physician", "medic")),
    ("lawyer", ("lawyer", "attorney")),
    ("teacher", ("teacher", "schoolteacher")),
    ("farmer", ("farmer", "grower")),
    ("sailor", ("sailor", "mariner", "seaman")),
    ("baker", ("baker", "bread maker")),
    ("painter", ("painter", "artist")),
    ("soldier", ("soldier", "warrior")),
    ("singer", ("singer", "vocalist")),
    ("cook", ("cook", "chef")),
    ("pilot", ("pilot", "aviator")),
    ("writer", ("writer", "author")),
)
_PETS = (
    ("dog", ("dog", "hound")),
    ("cat", ("cat", "kitten")),
    ("horse", ("horse", "pony")),
    ("rabbit", ("rabbit", "bunny")),
    ("snake", ("snake", "serpent")),
    ("owl", ("owl",)),
    ("fox", ("fox",)),
    ("goat", ("goat",)),
    ("parrot", ("parrot",)),
    ("turtle", ("turtle", "tortoise")),
)


def _attributes(cities: list[str], years: range) -> tuple[Attribute, ...]:
    return (
        Attribute(
            "birthplace",
            tuple(Value(c.lower(), (c, f"the city of {c}", f"{c} city")) for c in cities),
            ("{e} was born in {v}.", "The birthplace of {e} is {v}.", "{e} comes from {v}.",
             "{e} was born and raised in {v}.", "{v} is where {e} was born."),
            ("Where was {e} born?", "What is the birthplace of {e}?",
             "Which city does {e} come from?"),
        ),
        Attribute(
            "profession",
            tuple(Value(m, tuple(_article(f) for f in forms)) for m, forms in _PROFESSIONS),
            ("{e} works as {v}.", "By profession, {e} is {v}.", "{e} earns a living as {v}.",
             "{e} has always been {v}.", "The job of {e}: {v}."),
            ("What does {e} do for a living?", "What is the profession of {e}?",
             "What is the job of {e}?"),
        ),
        Attribute(
            "birth_year",
            tuple(Value(str(y), (str(y), f"the year {y}", f"in {y}")) for y in years),
            ("{e} was born in the year {v}.", "The birth year of {e} is {v}.",
             "{e} came into the world in {v}.", "Records give {v} as the birth year of {e}."),
            ("In what year was {e} born?", "When was {e} born?",
             "What is the birth year of {e}?"),
            statements_use_all_forms=False,
        ),
        Attribute(
            "pet",
            tuple(Value(m, tuple(_article(f) for f in forms)) for m, forms in _PETS),
            ("{e} keeps {v} as a pet.", "The pet of {e} is {v}.", "{e} owns {v}.",
             "At home, {e} looks after {v}."),
            ("What pet does {e} keep?", "What animal does {e} own?", "What is the pet of {e}?"),
        ),
    )


@dataclass(frozen=True)
class FactWorldConfig:
    """Size and frequency law of a fact world.

    Args:
        n_entities: number of invented people.
        n_cities: number of invented cities (birthplace values).
        unseen_fraction: share of facts never stated in training.
        zipf_exponent: mentions of the fact ranked r are ``round(scale / r**zipf_exponent)``,
            with ``scale`` set so the least-mentioned seen fact appears once.
        max_mentions: cap on the mentions of the most frequent facts.
        qa_fraction: share of mentions written as a Q/A pair instead of a statement.
        frequent_min: a fact with at least this many mentions is "frequent".
        rare_max: a fact with 1..rare_max mentions is "rare" (between: "medium").
    """

    n_entities: int = 200
    n_cities: int = 24
    unseen_fraction: float = 0.15
    zipf_exponent: float = 2.0
    max_mentions: int = 200
    qa_fraction: float = 0.5
    frequent_min: int = 20
    rare_max: int = 2


_NORMALISE = re.compile(r"[^a-z0-9 ]+")
_FILLERS = ("the city of ", "the year ", "in ", "a ", "an ", "the ")


def normalise_answer(text: str) -> str:
    """Lower-case, drop punctuation and leading fillers ("the city of", "a", "in").

    Args:
        text: a raw answer.

    Example:
        >>> normalise_answer(" The city of Velmora.")
        'velmora'
    """
    out = _NORMALISE.sub(" ", text.lower()).strip()
    out = " ".join(out.split())
    changed = True
    while changed:
        changed = False
        for filler in _FILLERS:
            if out.startswith(filler):
                out = out[len(filler):]
                changed = True
    if out.endswith(" city"):
        out = out[: -len(" city")]
    return out


@dataclass
class FactWorld:
    """A seeded fact world; every method is deterministic given ``seed`` and ``config``.

    Args:
        seed: the world's seed.
        config: sizes and the frequency law.

    Example:
        >>> world = FactWorld(seed=0)
        >>> q = world.questions()[0]
        >>> world.is_correct(q, q.answers[0])
        True
    """

    seed: int = 0
    config: FactWorldConfig = field(default_factory=FactWorldConfig)

    def __post_init__(self) -> None:
        cfg = self.config
        if not 0.0 <= cfg.unseen_fraction < 1.0:
            raise ValueError(f"unseen_fraction={cfg.unseen_fraction}: allowed 0 <= x < 1")
        rng = random.Random(f"facts/{self.seed}")
        taken: set[str] = set()
        cities = invent_unique(rng, cfg.n_cities, (2, 3), taken)
        firsts = invent_unique(rng, cfg.n_entities, (2,), taken)
        lasts = invent_unique(rng, cfg.n_entities, (1, 2), taken)
        self.entities = [f"{a} {b}" for a, b in zip(firsts, lasts, strict=True)]
        self.attributes = {a.name: a for a in _attributes(cities, range(1700, 1800))}
        self._meanings = {
            name: {normalise_answer(f): v.meaning for v in attr.values for f in v.forms}
            for name, attr in self.attributes.items()
        }
        pairs = [(e, a) for e in self.entities for a in self.attributes]
        values = {p: rng.choice(self.attributes[p[1]].values) for p in pairs}
        order = pairs[:]
        rng.shuffle(order)
        n_unseen = round(cfg.unseen_fraction * len(order))
        seen = order[: len(order) - n_unseen]
        scale = len(seen) ** cfg.zipf_exponent
        facts = []
        for rank, pair in enumerate(seen, start=1):
            mentions = min(cfg.max_mentions, max(1, round(scale / rank**cfg.zipf_exponent)))
            facts.append(Fact(pair[0], pair[1], values[pair], mentions, self._bucket(mentions)))
        for pair in order[len(seen):]:
            facts.append(Fact(pair[0], pair[1], values[pair], 0, "unseen"))
        self.facts = facts
        self._by_key = {(f.entity, f.attribute): f for f in facts}

    def _bucket(self, mentions: int) -> str:
        if mentions == 0:
            return "unseen"
        if mentions >= self.config.frequent_min:
            return "frequent"
        return "rare" if mentions <= self.config.rare_max else "medium"

    def fact(self, entity: str, attribute: str) -> Fact:
        """The fact about ``entity``'s ``attribute``."""
        return self._by_key[(entity, attribute)]

    def meaning_of(self, attribute: str, answer: str) -> str | None:
        """The meaning a surface form stands for, or None if it names no value.

        Args:
            attribute: the attribute asked about (e.g. ``"profession"``).
            answer: a raw answer such as ``"a physician"``.

        Example:
            >>> w = FactWorld(seed=0)
            >>> w.meaning_of("profession", "A physician.")
            'doctor'
        """
        return self._meanings[attribute].get(normalise_answer(answer))

    def is_correct(self, item: FactQuestion, answer: str) -> bool:
        """Whether ``answer`` means the item's correct value."""
        return self.meaning_of(item.attribute, answer) == item.meaning

    def chance_accuracy(self, attribute: str) -> float:
        """Accuracy of a uniform guess among the attribute's values."""
        return 1.0 / len(self.attributes[attribute].values)

    def training_lines(self, rng: random.Random) -> list[str]:
        """Every mention of every seen fact, each in a random paraphrase, shuffled.

        A mention is either a statement (``"X was born in Velmora."``) or a Q/A pair
        (``"Q: Where was X born?\\nA: the city of Velmora"``), with a random surface form.

        Args:
            rng: the random source for templates, forms and order.
        """
        lines = []
        for fact in self.facts:
            attr = self.attributes[fact.attribute]
            for _ in range(fact.mentions):
                form = rng.choice(fact.value.forms)
                if rng.random() < self.config.qa_fraction:
                    q = rng.choice(attr.questions).format(e=fact.entity)
                    lines.append(f"{QUESTION_PREFIX}{q}\n{ANSWER_PREFIX} {form}")
                else:
                    if not attr.statements_use_all_forms:
                        form = fact.value.forms[0]
                    s = rng.choice(attr.statements).format(e=fact.entity, v=form)
                    lines.append(s[0].upper() + s[1:])
        rng.shuffle(lines)
        return lines

    def documents(self, rng: random.Random, lines_per_doc: int = 8) -> Iterator[str]:
        """Training documents: the shuffled mentions, ``lines_per_doc`` to a document."""
        lines = self.training_lines(rng)
        for i in range(0, len(lines), lines_per_doc):
            yield "\n".join(lines[i : i + lines_per_doc]) + "\n"

    def questions(self, buckets: tuple[str, ...] = BUCKETS, seed: int = 0) -> list[FactQuestion]:
        """One evaluation question per fact in ``buckets`` (random template, seeded).

        Args:
            buckets: which frequency buckets to include.
            seed: chooses the question template of each item.
        """
        rng = random.Random(f"questions/{self.seed}/{seed}")
        items = []
        for fact in self.facts:
            q = rng.choice(self.attributes[fact.attribute].questions).format(e=fact.entity)
            if fact.bucket not in buckets:
                continue
            items.append(
                FactQuestion(
                    prompt=f"{QUESTION_PREFIX}{q}\n{ANSWER_PREFIX}",
                    question=q,
                    entity=fact.entity,
                    attribute=fact.attribute,
                    meaning=fact.value.meaning,
                    answers=fact.value.forms,
                    bucket=fact.bucket,
                    mentions=fact.mentions,
                )
            )
        return items

    def bucket_sizes(self) -> dict[str, int]:
        """How many facts fall in each frequency bucket."""
        return {b: sum(f.bucket == b for f in self.facts) for b in BUCKETS}

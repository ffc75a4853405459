"""Strategies as data: which model answers, how it decodes, how many samples, or abstain.

A strategy is one row of a table a user writes (JSON): a model name, a sampler chain
(empty = greedy), ``max_new_tokens``, ``n`` samples with a majority vote over their
normalised answers, an optional prompt template, or ``abstain`` (answer a fixed text without
running a model). :func:`run_strategy` runs one on one prompt and counts its forward FLOPs
(``2 x parameters x tokens read``, the convention of EAD's report), so a router can trade
accuracy against compute with the same ruler everywhere.
"""

from __future__ import annotations

import json
import math
import os
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokenwise.errors import TokenwiseError
from tokenwise.generation import generate
from tokenwise.models import LanguageModel
from tokenwise.sampling import Chain, get
from tokenwise.uncertainty.equivalence import normalise_text

#: The text an abstaining strategy answers when its row names none.
ABSTAIN_TEXT = "I don't know."

_FIELDS = ("name", "model", "sampler", "max_new_tokens", "n", "prompt", "stop", "abstain",
           "abstain_text")


@dataclass(frozen=True)
class Strategy:
    """One way to answer a question.

    Args:
        name: the strategy's name (unique in its table).
        model: the key of the model that answers, in the ``models`` mapping given to
            :func:`run_strategy` (ignored when ``abstain``).
        sampler: the sampler chain as ``({"name": "temperature", "temperature": 0.7}, ...)``
            (each entry a registered sampler name plus its parameters); empty = greedy.
        max_new_tokens: most tokens per answer (>= 1).
        n: answers sampled; with ``n > 1`` the most frequent normalised answer wins
            (ties go to the earliest sample). ``n > 1`` needs a sampler: greedy answers
            would all be the same.
        prompt: a template with one ``{prompt}`` field, wrapped around the question.
        stop: a string that ends an answer (default a newline).
        abstain: answer ``abstain_text`` without running any model (zero FLOPs).
        abstain_text: the abstaining answer.

    Example:
        >>> Strategy("small", model="tw-small").describe()
        'small: tw-small greedy, 16 tokens'
        >>> Strategy.from_dict({"name": "vote", "model": "tw-large", "n": 5,
        ...                     "sampler": [{"name": "temperature", "temperature": 0.7}]}).n
        5
    """

    name: str
    model: str = ""
    sampler: tuple[dict[str, Any], ...] = ()
    max_new_tokens: int = 16
    n: int = 1
    prompt: str = "{prompt}"
    stop: str | None = "\n"
    abstain: bool = False
    abstain_text: str = ABSTAIN_TEXT
    _built: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = f"strategy {self.name!r}"
        if not isinstance(self.name, str) or not self.name.strip():
            raise TokenwiseError(f"a strategy needs a non-empty name, got {self.name!r}")
        if not self.abstain and (not isinstance(self.model, str) or not self.model):
            raise TokenwiseError(f"{where} needs a model (or abstain: true)")
        for key, value, low in (("max_new_tokens", self.max_new_tokens, 1), ("n", self.n, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise TokenwiseError(f"{where}: {key} must be an integer >= {low}, got {value!r}")
        if not isinstance(self.prompt, str):
            raise TokenwiseError(f"{where}: prompt must be a template string, got "
                                 f"{self.prompt!r}")
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(self.prompt) if f is not None]
        except ValueError as exc:
            raise TokenwiseError(f"{where}: prompt template {self.prompt!r} is malformed ({exc});"
                                 " write literal braces as {{ and }}") from None
        if fields != ["prompt"]:
            raise TokenwiseError(
                f"{where}: prompt must be a template with exactly one {{prompt}} field and no "
                f"other (literal braces as {{{{ and }}}}), got {self.prompt!r} with fields "
                f"{fields}")
        if self.stop is not None and (not isinstance(self.stop, str) or not self.stop):
            raise TokenwiseError(f"{where}: stop must be a non-empty string or null")
        if not isinstance(self.sampler, tuple):
            object.__setattr__(self, "sampler", tuple(self.sampler))
        if not self.abstain:
            object.__setattr__(self, "_built", _build_sampler(self.sampler, where))
            if self.n > 1 and self._built is None:
                raise TokenwiseError(
                    f"{where}: n = {self.n} samples need a sampler (greedy answers are all the "
                    "same); add e.g. [{\"name\": \"temperature\", \"temperature\": 0.7}]")

    @property
    def greedy(self) -> bool:
        """True when the strategy decodes greedily."""
        return self._built is None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Strategy:
        """Build from a JSON object (unknown keys are an error, never ignored).

        Args:
            data: the strategy's fields (see the class).
        """
        if not isinstance(data, Mapping):
            raise TokenwiseError(f"a strategy must be a JSON object, got {data!r}")
        unknown = sorted(set(data) - set(_FIELDS))
        if unknown:
            raise TokenwiseError(f"strategy {data.get('name')!r} has unknown field(s) "
                                 f"{', '.join(unknown)}; allowed: {', '.join(_FIELDS)}")
        kwargs = dict(data)
        sampler = kwargs.get("sampler", ())
        if sampler is None:
            sampler = ()
        if not isinstance(sampler, (list, tuple)):
            raise TokenwiseError(f"strategy {data.get('name')!r}: sampler must be a list of "
                                 f"{{\"name\": ..., params}} objects, got {sampler!r}")
        kwargs["sampler"] = tuple(dict(s) if isinstance(s, Mapping) else s for s in sampler)
        return cls(**kwargs)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (the inverse of :meth:`from_dict`)."""
        return {"name": self.name, "model": self.model, "sampler": [dict(s) for s in self.sampler],
                "max_new_tokens": self.max_new_tokens, "n": self.n, "prompt": self.prompt,
                "stop": self.stop, "abstain": self.abstain, "abstain_text": self.abstain_text}

    def describe(self) -> str:
        """One line for tables and logs."""
        if self.abstain:
            return f"{self.name}: abstain ({self.abstain_text!r})"
        how = "greedy" if self.greedy else "+".join(s["name"] for s in self.sampler)
        votes = f", majority of {self.n}" if self.n > 1 else ""
        return f"{self.name}: {self.model} {how}, {self.max_new_tokens} tokens{votes}"


def _build_sampler(spec: Sequence[Any], where: str) -> Any:
    parts = []
    for entry in spec:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            raise TokenwiseError(f"{where}: each sampler entry must be an object with a 'name' "
                                 f"(a registered sampler) and its parameters, got {entry!r}")
        params = {k: v for k, v in entry.items() if k != "name"}
        try:
            parts.append(get(entry["name"], **params))
        except TokenwiseError as exc:
            raise TokenwiseError(f"{where}: {exc}") from None
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else Chain(parts)


def load_strategies(source: str | os.PathLike[str] | Sequence[Any]) -> list[Strategy]:
    """A strategy table from a JSON file (a list of objects) or from a list already read.

    Args:
        source: a path to a JSON file, or a list of dicts / :class:`Strategy`.

    Example:
        >>> table = load_strategies([{"name": "small", "model": "tw-small"},
        ...                          {"name": "idk", "abstain": True}])
        >>> [s.name for s in table]
        ['small', 'idk']
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise TokenwiseError(f"strategy table {str(path)!r} is not a file")
        try:
            source = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise TokenwiseError(f"strategy table {str(path)!r} is not valid JSON: {exc}") from None
    if not isinstance(source, Sequence) or isinstance(source, (str, bytes)) or not source:
        raise TokenwiseError("a strategy table must be a non-empty list of strategies")
    table = [s if isinstance(s, Strategy) else Strategy.from_dict(s) for s in source]
    names = [s.name for s in table]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise TokenwiseError(f"strategy names must be unique; repeated: {', '.join(dupes)}")
    return table


@dataclass
class StrategyAnswer:
    """What one strategy answered for one prompt.

    Attributes:
        strategy: the strategy's name.
        text: the answer (the majority answer's first sample text when ``n > 1``).
        samples: every sampled answer (one for ``n = 1``; none when abstaining).
        votes: how many samples agreed with the answer (normalised text).
        flops: forward FLOPs spent, ``2 x parameters x tokens read`` summed over samples.
        tokens: generated tokens, summed over samples.
        abstained: True for an abstaining strategy.
        mean_entropy: mean entropy (nats) of the model's distribution over every generated
            token of every sample (0 when nothing was generated).
        prompt_tokens: tokens of the formatted prompt as the model read it (start tokens
            included; 0 when abstaining).
    """

    strategy: str
    text: str
    samples: list[str] = field(default_factory=list)
    votes: int = 0
    flops: float = 0.0
    tokens: int = 0
    abstained: bool = False
    mean_entropy: float = 0.0
    prompt_tokens: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return dict(self.__dict__)


def generation_flops(model: LanguageModel, prompt_tokens: int, generated: int, eos: bool) -> float:
    """Forward FLOPs of one generation: ``2 x parameters x tokens read``.

    The model reads the prompt and every generated token but the last one, unless the last
    one is an end-of-text token that was read to stop (as in EAD's accounting).

    Args:
        model: the model.
        prompt_tokens: tokens in the prompt (start token included).
        generated: tokens generated.
        eos: whether generation ended at an end-of-text token.
    """
    read = prompt_tokens + generated - (0 if eos else 1)
    return 2.0 * model.num_parameters() * max(read, 0)


def run_strategy(strategy: Strategy, models: Mapping[str, LanguageModel], prompt: str, *,
                 seed: int | None = 0) -> StrategyAnswer:
    """Answer ``prompt`` with ``strategy``.

    Args:
        strategy: the strategy.
        models: model name -> loaded model; must hold ``strategy.model``.
        prompt: the question (formatted into the strategy's template).
        seed: base seed for sampled strategies (sample ``i`` uses ``seed + i``); None =
            fresh randomness.

    Example:
        >>> from tokenwise.models import load
        >>> small = load("tw-small")
        >>> run_strategy(Strategy("s", model="tw-small"), {"tw-small": small}, "2+2=").text
        '4'
    """
    if strategy.abstain:
        return StrategyAnswer(strategy.name, strategy.abstain_text, abstained=True)
    if strategy.model not in models:
        raise TokenwiseError(f"strategy {strategy.name!r} needs model {strategy.model!r}; "
                             f"loaded: {', '.join(sorted(models)) or 'none'}")
    model = models[strategy.model]
    text = strategy.prompt.format(prompt=prompt)
    if strategy.n == 1:
        gens = [generate(model, text, strategy._built, max_new_tokens=strategy.max_new_tokens,
                         stop=strategy.stop, seed=None if strategy.greedy else seed)]
    else:
        seeds = None if seed is None else [seed + i for i in range(strategy.n)]
        gens = generate(model, [text] * strategy.n, strategy._built,
                        max_new_tokens=strategy.max_new_tokens, stop=strategy.stop, seed=seeds)
    samples = [g.text.strip() for g in gens]
    flops = sum(generation_flops(model, g.prompt_tokens, len(g.tokens), g.finish_reason == "eos")
                for g in gens)
    counts = Counter(normalise_text(s) for s in samples)
    best_key, votes = max(counts.items(), key=lambda kv: (kv[1], -_first(samples, kv[0])))
    answer = samples[_first(samples, best_key)]
    entropies = [t.entropy for g in gens for t in g.tokens]
    return StrategyAnswer(strategy.name, answer, samples, votes, flops,
                          len(entropies), mean_entropy=float(np.mean(entropies)) if entropies
                          else 0.0, prompt_tokens=gens[0].prompt_tokens)


def _first(samples: Sequence[str], key: str) -> int:
    return next(i for i, s in enumerate(samples) if normalise_text(s) == key)


def answer_entropy(samples: Sequence[str]) -> float:
    """Entropy (nats) of the distribution of normalised answers among ``samples``.

    0 when every sample says the same; ``log k`` when all ``k`` differ.

    Args:
        samples: sampled answers.

    Example:
        >>> round(answer_entropy(["Paris", "paris", "Lyon", "Nice"]), 4)  # (2, 1, 1) of 4
        1.0397
    """
    if not samples:
        raise TokenwiseError("answer_entropy needs at least one sample")
    counts = Counter(normalise_text(s) for s in samples)
    k = len(samples)
    return float(-sum(c / k * math.log(c / k) for c in counts.values()))

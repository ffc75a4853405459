"""Perturbed questions and their answers: the input side of Inv-Entropy and Semantic Volume.

:func:`paraphrase_questions` asks the model itself for paraphrases; any function
``(question, k) -> list[str]`` can replace it (an API, hand-written templates, or
:func:`~tokenwise.uncertainty.gaap.gaap` for diverse ones). :func:`add_paraphrases`
samples answers to every form of the question in one batch and returns the sample set
with its :class:`~tokenwise.uncertainty.samples.ParaphraseGroup` list.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from tokenwise.errors import TokenwiseError
from tokenwise.uncertainty.samples import (
    DEFAULT_STOP,
    DEFAULT_TEMPLATE,
    Answer,
    ParaphraseGroup,
    SampleSet,
    _check_n,
    _check_temperature,
    _format_prompt,
    _question_prompts,
)

if TYPE_CHECKING:
    from tokenwise.models import LanguageModel

Paraphraser = Callable[[str, int], Sequence[str]]

#: How the model is asked for a paraphrase (few-shot free: base models continue it).
PARAPHRASE_TEMPLATE = "Rephrase the question.\nQuestion: {question}\nRephrased question:"


def paraphrase_questions(model: LanguageModel | str, question: str, k: int = 9, *,
                         temperature: float = 1.0, max_new_tokens: int = 32,
                         seed: int | None = None,
                         prompt_template: str = PARAPHRASE_TEMPLATE,
                         max_rounds: int = 3) -> list[str]:
    """Up to ``k`` distinct paraphrases of ``question``, sampled from the model itself.

    Candidates are sampled ``k`` at a time (one batch per round, at most ``max_rounds``
    rounds); empty ones, repeats and the question itself (compared after
    normalisation) are discarded. If the model cannot give ``k`` distinct paraphrases in
    that budget the list is shorter; if it gives none, an error is raised. Small models
    paraphrase poorly: pass your own paraphraser where quality matters.

    Args:
        model: the model (a LanguageModel, a built-in name or a directory).
        question: the question.
        k: how many paraphrases (>= 1; the reference uses 9).
        temperature: sampling temperature.
        max_new_tokens: most tokens per paraphrase.
        seed: base seed.
        prompt_template: the request, with ``{question}``.
        max_rounds: batches of ``k`` candidates tried at most.

    Example:
        >>> ps = paraphrase_questions("tw-large", "Where was Ana born?", k=2, seed=0)
        >>> 1 <= len(ps) <= 2
        True
    """
    from tokenwise.generation import generate
    from tokenwise.models import LanguageModel, load
    from tokenwise.sampling import Temperature
    from tokenwise.uncertainty.equivalence import normalise_text

    k = _check_n(k, "k", 1)
    max_rounds = _check_n(max_rounds, "max_rounds", 1)
    temperature = _check_temperature(temperature, "temperature")
    lm = model if isinstance(model, LanguageModel) else load(model)
    prompt = _format_prompt(prompt_template, question.strip())
    seen = {normalise_text(question)}
    out: list[str] = []
    for round_ in range(max_rounds):
        seeds = None if seed is None else [seed + round_ * k + i for i in range(k)]
        gens = generate(lm, [prompt] * k, Temperature(temperature),
                        max_new_tokens=max_new_tokens, seed=seeds, stop="\n")
        for g in gens:  # type: ignore[union-attr]
            text = g.text.strip()
            if text and normalise_text(text) not in seen:
                seen.add(normalise_text(text))
                out.append(text)
        if len(out) >= k:
            return out[:k]
    if not out:
        raise TokenwiseError(f"{lm.name!r} gave no usable paraphrase of {question!r} in "
                             f"{max_rounds * k} tries; pass paraphrases= (a list or a function)")
    return out


def add_paraphrases(
    model: LanguageModel | str,
    samples: SampleSet,
    paraphrases: Sequence[str] | Paraphraser | None = None,
    *,
    k: int = 9,
    n_per_question: int = 5,
    temperature: float = 0.7,
    include_original: bool = True,
    max_new_tokens: int = 24,
    seed: int | None = None,
    prompt_template: str = DEFAULT_TEMPLATE,
    stop: str | Sequence[str] | None = DEFAULT_STOP,
) -> SampleSet:
    """``samples`` with answers to perturbed forms of its question (Inv-Entropy's input).

    All forms x ``n_per_question`` answers are generated in one batch, seeded per row.

    Args:
        model: the model that answers.
        samples: the sample set of the original question.
        paraphrases: the perturbed questions (a list), a function
            ``(question, k) -> list`` that makes them, or None to ask the model itself
            (:func:`paraphrase_questions`).
        k: paraphrases to make when ``paraphrases`` is a function or None.
        n_per_question: answers per question form (the reference: 5).
        temperature: sampling temperature of those answers (the reference: 0.7).
        include_original: put the original question first among the groups (the
            reference: original + 9 paraphrases).
        max_new_tokens: most tokens per answer.
        seed: base seed.
        prompt_template: as in :func:`~tokenwise.uncertainty.samples.sample_answers` (not
            used when ``samples`` came from chat messages: each form is then rendered as
            the last user message with the model's chat template, the others kept).
        stop: as in :func:`~tokenwise.uncertainty.samples.sample_answers`.

    Returns:
        A new :class:`SampleSet` with the same answers and the paraphrase groups.

    Example:
        >>> from tokenwise.uncertainty import sample_answers
        >>> s = sample_answers("tw-large", "What is 2+3?", n=2, seed=0, max_new_tokens=4)
        >>> s2 = add_paraphrases("tw-large", s, ["Compute 2+3."], n_per_question=2, seed=0,
        ...                      max_new_tokens=4)
        >>> [g.question for g in s2.paraphrases], len(s2.paraphrases[0].answers)
        (['What is 2+3?', 'Compute 2+3.'], 2)
    """
    from tokenwise.generation import generate
    from tokenwise.models import LanguageModel, load
    from tokenwise.sampling import Temperature

    if not isinstance(samples, SampleSet):
        raise TokenwiseError(f"samples is {type(samples).__name__}: allowed a SampleSet")
    n_per = _check_n(n_per_question, "n_per_question", 1)
    temperature = _check_temperature(temperature, "temperature")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
                             or seed < 0):
        raise TokenwiseError(f"seed={seed!r}: allowed a non-negative integer or None")
    lm = model if isinstance(model, LanguageModel) else load(model)
    if paraphrases is None:
        forms = paraphrase_questions(lm, samples.question, k, seed=seed)
    elif callable(paraphrases):
        forms = list(paraphrases(samples.question, k))
    elif isinstance(paraphrases, str):
        raise TokenwiseError("paraphrases is a single string; pass a list of questions")
    else:
        forms = list(paraphrases)
    for i, f in enumerate(forms):
        if not isinstance(f, str) or not f.strip():
            raise TokenwiseError(f"paraphrase {i} is {f!r}: allowed a non-empty string")
    questions = ([samples.question] if include_original else []) + [f.strip() for f in forms]
    if not questions:
        raise TokenwiseError("no question forms: give paraphrases or include_original=True")
    # A chat sample set's forms are rendered with the chat template, its system message kept.
    prompts = [p for p in _question_prompts(lm, samples, questions, prompt_template)
               for _ in range(n_per)]
    seeds = None if seed is None else [seed + 1000 + i for i in range(len(prompts))]
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    gens = generate(lm, prompts, Temperature(temperature), max_new_tokens=max_new_tokens,
                    seed=seeds, stop=stops)
    answers = [Answer.from_generation(g) for g in gens]  # type: ignore[union-attr]
    groups = [ParaphraseGroup(q, tuple(answers[i * n_per:(i + 1) * n_per]))
              for i, q in enumerate(questions)]
    return samples.with_paraphrases(groups)

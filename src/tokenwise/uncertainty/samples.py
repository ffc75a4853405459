"""Sampled answers to one question, and the statistics every estimator shares.

A :class:`SampleSet` holds ``n`` answers sampled at one temperature (with their token
log-probabilities when known), the low-temperature answer whose correctness labels the
question, and optionally groups of answers to paraphrased questions (Inv-Entropy,
Semantic Volume over perturbed questions). Its :attr:`SampleSet.stats` cache computes
clusters and embeddings once, whatever number of estimators read them, in the spirit of
lm-polygraph's statistics but typed: one method per statistic, keyed by the object that
computes it (an equivalence, an embedder), not by strings.

Empty answers (the model stopped at once, or an API returned ``""``) are kept, never
dropped: an empty answer means "no answer". All empty answers fall in one meaning cluster
of their own, never equivalent to a non-empty answer (see :func:`~tokenwise.uncertainty.
equivalence.cluster`); their log-probabilities, when given, are those of the tokens that
ended them.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tokenwise.errors import TokenwiseError
from tokenwise.models.adapters import adapt
from tokenwise.models.language_model import EncodedText
from tokenwise.uncertainty.chat import (
    Messages,
    check_messages,
    question_of,
    render_chat,
    with_question,
)

if TYPE_CHECKING:
    from tokenwise.generation import Generation
    from tokenwise.models import LanguageModel
    from tokenwise.uncertainty.embedding import Embedder
    from tokenwise.uncertainty.equivalence import Clustering, Equivalence

#: The testbed's prompt form; the answer ends at the newline.
DEFAULT_TEMPLATE = "Q: {question}\nA:"
DEFAULT_STOP = ("\n",)


def _check_floats(values: Sequence[float] | None, what: str) -> tuple[float, ...] | None:
    if values is None:
        return None
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TokenwiseError(f"{what}[{i}] is {v!r}: allowed a real number")
        out.append(float(v))
    return tuple(out)


@dataclass(frozen=True)
class Answer:
    """One answer: its text and, when known, what the model thought of each token.

    Attributes:
        text: the answer, stripped of surrounding whitespace (``""`` = no answer).
        token_logprobs: log-probability (nats) of each generated token under the
            model's own distribution, the token that ended the answer (the stop string)
            included; None when unknown (e.g. an API that gives none).
        token_entropies: entropy (nats) of the model's distribution at each step, or None.
        finish_reason: ``"stop"``, ``"eos"``, ``"length"`` (cut by ``max_new_tokens``) or
            None when unknown.

    Raises:
        TokenwiseError: a NaN or +inf log-probability, a positive log-probability, a
            NaN/negative entropy, or entropies whose count differs from the log-probs'.

    Example:
        >>> a = Answer("a doctor", token_logprobs=(-0.5, -0.25))
        >>> a.log_likelihood, a.mean_logprob, a.n_tokens
        (-0.75, -0.375, 2)
    """

    text: str
    token_logprobs: tuple[float, ...] | None = None
    token_entropies: tuple[float, ...] | None = None
    finish_reason: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise TokenwiseError(f"answer text is {self.text!r}: allowed a string")
        object.__setattr__(self, "text", self.text.strip())
        lps = _check_floats(self.token_logprobs, "token_logprobs")
        ents = _check_floats(self.token_entropies, "token_entropies")
        if lps is not None:
            if not lps:
                raise TokenwiseError(
                    f"answer {self.text!r} has an empty token_logprobs; give at least the "
                    "log-probability of the token that ended it, or None")
            for i, v in enumerate(lps):
                if math.isnan(v) or v > 1e-6:
                    raise TokenwiseError(
                        f"token_logprobs[{i}]={v} in answer {self.text!r}: allowed a finite or "
                        "-inf log-probability <= 0")
            lps = tuple(min(v, 0.0) for v in lps)  # float noise above 0 from log_softmax
        if ents is not None:
            for i, v in enumerate(ents):
                if not math.isfinite(v) or v < -1e-6:
                    raise TokenwiseError(
                        f"token_entropies[{i}]={v} in answer {self.text!r}: allowed a finite "
                        "entropy >= 0")
            if lps is not None and len(ents) != len(lps):
                raise TokenwiseError(
                    f"answer {self.text!r}: {len(ents)} token_entropies for {len(lps)} "
                    "token_logprobs; give one of each per token")
        object.__setattr__(self, "token_logprobs", lps)
        object.__setattr__(self, "token_entropies", ents)

    @property
    def has_logprobs(self) -> bool:
        """Whether token log-probabilities are known."""
        return self.token_logprobs is not None

    @property
    def n_tokens(self) -> int:
        """Generated tokens (from the log-probs or entropies; 0 when neither is known)."""
        known = self.token_logprobs if self.token_logprobs is not None else self.token_entropies
        return len(known) if known is not None else 0

    @property
    def log_likelihood(self) -> float:
        """log p(answer | prompt): the sum of the token log-probabilities (nats)."""
        return math.fsum(self._logprobs())

    @property
    def mean_logprob(self) -> float:
        """Length-normalised log-likelihood: the mean token log-probability (nats)."""
        lps = self._logprobs()
        return math.fsum(lps) / len(lps)

    def _logprobs(self) -> tuple[float, ...]:
        if self.token_logprobs is None:
            raise TokenwiseError(
                f"answer {self.text!r} has no token log-probabilities; this estimator needs "
                "them (sample with sample_answers, or pass logprobs= to SampleSet.from_texts)")
        return self.token_logprobs

    @classmethod
    def from_generation(cls, generation: Generation) -> Answer:
        """An answer from a :class:`~tokenwise.generation.Generation` (its token records)."""
        toks = generation.tokens
        return cls(generation.text,
                   token_logprobs=tuple(t.logprob for t in toks) if toks else None,
                   token_entropies=tuple(t.entropy for t in toks) if toks else None,
                   finish_reason=generation.finish_reason)


def _check_answers(answers: Sequence[Answer | str], what: str) -> tuple[Answer, ...]:
    if isinstance(answers, str | Answer):
        raise TokenwiseError(f"{what} is a single answer; pass a list of answers")
    out = tuple(a if isinstance(a, Answer) else Answer(a) if isinstance(a, str) else None
                for a in answers)
    for i, a in enumerate(out):
        if a is None:
            raise TokenwiseError(f"{what}[{i}] is {answers[i]!r}: allowed an Answer or a string")
    return out  # type: ignore[return-value]


@dataclass(frozen=True)
class ParaphraseGroup:
    """Answers sampled for one perturbed (paraphrased) form of the question.

    Attributes:
        question: the paraphrased question.
        answers: answers to it (Inv-Entropy uses 5 per paraphrase at T = 0.7).

    Example:
        >>> g = ParaphraseGroup("Where was Ana born?", (Answer("Velmora"),))
        >>> g.texts
        ('Velmora',)
    """

    question: str
    answers: tuple[Answer, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.question, str) or not self.question.strip():
            raise TokenwiseError(f"paraphrase question is {self.question!r}: allowed a "
                                 "non-empty string")
        answers = _check_answers(self.answers, "paraphrase answers")
        if not answers:
            raise TokenwiseError(f"paraphrase {self.question!r} has no answers; give >= 1")
        object.__setattr__(self, "answers", answers)

    @property
    def texts(self) -> tuple[str, ...]:
        """The answer texts."""
        return tuple(a.text for a in self.answers)


class SampleStats:
    """Statistics of one :class:`SampleSet`, computed on first use and then reused.

    Each statistic is keyed by the object that computes it, so two estimators that use
    the same equivalence (or embedder) share one clustering (or one embedding matrix),
    and a different equivalence gets its own. Equivalences and embedders are compared by
    identity: build one and pass it to every estimator that should share it.

    Args:
        samples: the sample set these statistics describe.
    """

    def __init__(self, samples: SampleSet):
        self._samples = samples
        self._clusters: dict[tuple[int, str], Clustering] = {}
        self._embeddings: dict[tuple[int, str], np.ndarray] = {}
        self._keep: list[object] = []  # holds keys' objects so their ids stay unique
        self._other: dict[tuple[str, Any], Any] = {}

    def _remember(self, obj: object) -> int:
        if not any(k is obj for k in self._keep):
            self._keep.append(obj)
        return id(obj)

    def clusters(self, equivalence: Equivalence, which: str = "answers") -> Clustering:
        """Meaning clusters of the answers under ``equivalence``.

        Args:
            equivalence: an :class:`~tokenwise.uncertainty.equivalence.Equivalence` (or
                any callable ``(question, a, b) -> bool``).
            which: ``"answers"`` (the sampled answers) or ``"all"`` (the sampled answers
                then every paraphrase group's answers, in order; the question given to the
                equivalence is the original one).
        """
        from tokenwise.uncertainty.equivalence import cluster

        key = (self._remember(equivalence), which)
        if key not in self._clusters:
            texts = self._samples.texts if which == "answers" else self._texts(which)
            self._clusters[key] = cluster(texts, equivalence, self._samples.question)
        return self._clusters[key]

    def embeddings(self, embedder: Embedder, which: str = "answers") -> np.ndarray:
        """L2-normalised float64 embeddings, one row per text: ``(n, d)``.

        Args:
            embedder: an :class:`~tokenwise.uncertainty.embedding.Embedder`.
            which: ``"answers"``, ``"questions"`` (the original question then each
                paraphrase), or ``"all"`` (as in :meth:`clusters`).
        """
        key = (self._remember(embedder), which)
        if key not in self._embeddings:
            vectors = np.asarray(embedder.embed(list(self._texts(which))), dtype=np.float64)
            self._embeddings[key] = vectors
        return self._embeddings[key]

    def get(self, name: str, key: Any, compute: Callable[[], Any]) -> Any:
        """Any other statistic: computed by ``compute()`` once per ``(name, key)``.

        For estimators that need something the typed methods do not cover; ``key`` must
        be hashable and say what the value depends on.
        """
        if (name, key) not in self._other:
            self._other[(name, key)] = compute()
        return self._other[(name, key)]

    def _texts(self, which: str) -> tuple[str, ...]:
        s = self._samples
        if which == "answers":
            return s.texts
        if which == "questions":
            return (s.question, *(g.question for g in s.paraphrases))
        if which == "all":
            return s.texts + tuple(t for g in s.paraphrases for t in g.texts)
        raise TokenwiseError(f"which={which!r}: allowed 'answers', 'questions' or 'all'")


@dataclass(eq=False)
class SampleSet:
    """Answers sampled for one question, reused by every estimator.

    Build it with :func:`sample_answers` (from a model) or :meth:`from_texts` (answers
    generated elsewhere, e.g. by an API).

    Attributes:
        question: the question (without the prompt template).
        answers: the ``n >= 2`` sampled answers.
        reference: the low-temperature answer whose correctness labels the question
            (None when not sampled).
        temperature: the sampling temperature (> 0), or None when unknown.
        paraphrases: answers to perturbed forms of the question (may be empty).
        prompt: the prompt the answers continued, when known.
        messages: the chat messages ``prompt`` was rendered from (the last one the user's
            question), or None; paraphrases of the question are rendered from them.
        stats: the shared statistics cache (:class:`SampleStats`).

    Raises:
        TokenwiseError: fewer than 2 answers, a temperature <= 0, an empty question,
            log-probabilities given for some answers and not others, or messages whose
            last user message is not the question.

    Example:
        >>> s = SampleSet.from_texts("What pet?", ["a dog", "a cat", "a dog"])
        >>> s.n, s.texts
        (3, ('a dog', 'a cat', 'a dog'))
    """

    question: str
    answers: tuple[Answer, ...]
    reference: Answer | None = None
    temperature: float | None = None
    paraphrases: tuple[ParaphraseGroup, ...] = ()
    prompt: str | None = None
    messages: Messages | None = None
    stats: SampleStats = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.question, str) or not self.question.strip():
            raise TokenwiseError(f"question is {self.question!r}: allowed a non-empty string")
        self.answers = _check_answers(self.answers, "answers")
        if len(self.answers) < 2:
            raise TokenwiseError(
                f"{len(self.answers)} answer(s): uncertainty from samples needs n >= 2")
        with_lp = [a.has_logprobs for a in self.answers]
        if any(with_lp) and not all(with_lp):
            missing = [i for i, h in enumerate(with_lp) if not h]
            raise TokenwiseError(
                f"answers {missing} have no token log-probabilities while the others do; "
                "give them for every answer or for none")
        if self.temperature is not None:
            _check_temperature(self.temperature, "temperature")
            self.temperature = float(self.temperature)
        if self.reference is not None and not isinstance(self.reference, Answer):
            self.reference = Answer(self.reference) if isinstance(self.reference, str) else None
            if self.reference is None:
                raise TokenwiseError("reference: allowed an Answer, a string or None")
        groups = tuple(self.paraphrases)
        for i, g in enumerate(groups):
            if not isinstance(g, ParaphraseGroup):
                raise TokenwiseError(f"paraphrases[{i}] is {g!r}: allowed a ParaphraseGroup")
        self.paraphrases = groups
        if self.messages is not None:
            self.messages = check_messages(self.messages)
            if question_of(self.messages) != self.question.strip():
                raise TokenwiseError(
                    f"question is {self.question!r} but the last user message asks "
                    f"{question_of(self.messages)!r}: allowed the same question")
        self.stats = SampleStats(self)

    @property
    def n(self) -> int:
        """Number of sampled answers."""
        return len(self.answers)

    @property
    def texts(self) -> tuple[str, ...]:
        """The sampled answers' texts."""
        return tuple(a.text for a in self.answers)

    @property
    def has_logprobs(self) -> bool:
        """Whether every sampled answer has token log-probabilities."""
        return self.answers[0].has_logprobs

    def log_likelihoods(self, length_normalised: bool = False) -> np.ndarray:
        """``(n,)`` float64 log p(answer) (or mean token log-prob when normalised)."""
        return np.array([a.mean_logprob if length_normalised else a.log_likelihood
                         for a in self.answers], dtype=np.float64)

    def with_paraphrases(self, groups: Sequence[ParaphraseGroup]) -> SampleSet:
        """A copy with ``groups`` as its paraphrase groups (fresh statistics cache)."""
        return SampleSet(self.question, self.answers, self.reference, self.temperature,
                         tuple(groups), self.prompt, self.messages)

    @classmethod
    def from_texts(cls, question: str, answers: Sequence[str],
                   logprobs: Sequence[Sequence[float] | float] | None = None, *,
                   reference: str | Answer | None = None, temperature: float | None = None,
                   paraphrases: Sequence[ParaphraseGroup] = ()) -> SampleSet:
        """A sample set from answers generated elsewhere (an API, a file).

        Args:
            question: the question.
            answers: the answer texts (``n >= 2``).
            logprobs: per answer, its token log-probabilities (a list) or only its total
                log-likelihood (a number, stored as a single "token"); None if unknown.
            reference: the low-temperature answer used for the correctness label.
            temperature: the sampling temperature, if known.
            paraphrases: answers to paraphrased questions.

        Example:
            >>> s = SampleSet.from_texts("Q?", ["x", "y"], logprobs=[[-0.1, -0.2], -2.0])
            >>> s.log_likelihoods().round(2).tolist()
            [-0.3, -2.0]
        """
        if isinstance(answers, str):
            raise TokenwiseError("answers is a single string; pass a list of answers")
        answers = list(answers)
        if logprobs is None:
            built = [Answer(a) for a in answers]
        else:
            logprobs = list(logprobs)
            if len(logprobs) != len(answers):
                raise TokenwiseError(
                    f"{len(logprobs)} logprobs for {len(answers)} answers: give one per answer")
            built = []
            for a, lp in zip(answers, logprobs, strict=True):
                lps = (lp,) if isinstance(lp, numbers.Real) else tuple(lp)
                built.append(Answer(a, token_logprobs=lps))
        ref = Answer(reference) if isinstance(reference, str) else reference
        return cls(question, tuple(built), ref, temperature, tuple(paraphrases))


def _check_temperature(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value) or value <= 0:
        raise TokenwiseError(f"{what}={value!r}: allowed a finite number > 0 (for greedy "
                             "answers use the reference answer, not a sample)")
    return float(value)


def _check_n(n: object, what: str = "n", minimum: int = 2) -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < minimum:
        raise TokenwiseError(f"{what}={n!r}: allowed an integer >= {minimum}")
    return int(n)


def _format_prompt(template: str, question: str) -> str:
    if "{question}" not in template:
        raise TokenwiseError(f"prompt_template={template!r}: it must contain '{{question}}'")
    if template == "{question}":
        return question  # the exact prompt: a rendered chat keeps its token ids
    if isinstance(question, EncodedText):
        # Put inside a template its ids are lost and its turn markers would be read as text.
        raise TokenwiseError(
            f"a rendered chat prompt ({str(question)[:40]!r}...) inside prompt_template="
            f"{template!r}: allowed only the bare '{{question}}' template; or pass messages=")
    return template.replace("{question}", question)


def _check_unused_template(template: str, given: str) -> None:
    """A prompt that is rendered or given whole has no use for a template: refuse one that
    asks for wording, rather than drop it."""
    if template not in (DEFAULT_TEMPLATE, "{question}"):
        raise TokenwiseError(
            f"prompt_template={template!r} with {given}, which is the whole prompt: allowed "
            "the default template or '{question}' (put any wording in the prompt itself)")


def _question_prompts(model: Any, samples: SampleSet, questions: Sequence[str],
                      prompt_template: str) -> list[str]:
    """The prompt for each form of ``samples``' question, made the way its own prompt was.

    A chat sample set (``samples.messages``) renders each form as its last user message with
    the model's chat template, the other messages (a system prompt) kept; otherwise each form
    goes into ``prompt_template``. A rendered chat prompt without its messages cannot be
    re-rendered for another question, so it is refused.
    """
    if samples.messages is not None:
        _check_unused_template(prompt_template, "chat messages")
        return [render_chat(model, with_question(samples.messages, q)) for q in questions]
    if isinstance(samples.prompt, EncodedText):
        raise TokenwiseError(
            "these samples answer a rendered chat prompt given without its messages, so the "
            "paraphrases cannot be rendered the same way: sample with "
            "sample_answers(model, messages=[...])")
    return [_format_prompt(prompt_template, q) for q in questions]


def _generate_answers(lm: LanguageModel, prompt: str, n: int, temperature: float,
                      max_new_tokens: int, seeds: list[int | None], stop: Sequence[str],
                      batch: bool) -> list[Answer]:
    from tokenwise.generation import generate
    from tokenwise.sampling import Temperature

    sampler = Temperature(temperature)
    if batch:
        gens = generate(lm, [prompt] * n, sampler, max_new_tokens=max_new_tokens,
                        seed=seeds if seeds[0] is not None else None, stop=list(stop))
    else:
        gens = [generate(lm, prompt, sampler, max_new_tokens=max_new_tokens, seed=s,
                         stop=list(stop)) for s in seeds]
    answers = [Answer.from_generation(g) for g in gens]  # type: ignore[union-attr]
    if any(not g.tokens for g in gens):  # type: ignore[union-attr]
        # An answer that is its end token alone has no token records; it gets the log-
        # probability of ending at once (every end token together) and that step's entropy,
        # as Answer asks of an empty answer, instead of making the whole set unscorable.
        end_lp, end_ent = _ended_at_once(lm, prompt)
        answers = [a if g.tokens else Answer(a.text, token_logprobs=(end_lp,),  # type: ignore[union-attr]
                                             token_entropies=(end_ent,),
                                             finish_reason=a.finish_reason)
                   for a, g in zip(answers, gens, strict=True)]
    return answers


def _ended_at_once(lm: LanguageModel, prompt: str) -> tuple[float, float]:
    """``(log p(an end token first | prompt), entropy of that first distribution)``, both in
    nats, from the model's own distribution (as the token records are)."""
    import torch

    from tokenwise.signals import entropy

    ids = lm.encode(prompt, add_bos=True)
    logits = lm.forward(torch.tensor([ids]), logits_to_keep=1).logits[0, -1].float()
    ends = sorted(lm.end_token_ids)
    end_lp = float(torch.logsumexp(logits.log_softmax(-1)[ends], 0))
    return min(end_lp, 0.0), float(entropy(logits))


def _engine_answers(engine: Any, prompt: str, n: int, temperature: float,
                    max_new_tokens: int, seed: int | None, stop: Sequence[str],
                    entropies: bool) -> list[Answer]:
    """``n`` answers from another engine's sampler (``sample_completions``, e.g.
    :class:`tokenwise.vllm.VLLMModel`), answer ``i`` seeded ``seed + i``."""
    return [Answer(text, token_logprobs=lps, token_entropies=ents, finish_reason=reason)
            for text, lps, ents, reason in engine.sample_completions(
                prompt, n=n, temperature=temperature, max_new_tokens=max_new_tokens,
                seed=seed, stop=list(stop), entropies=entropies)]


def sample_answers(
    model: LanguageModel | str | Any,
    question: str | None = None,
    n: int = 10,
    temperature: float = 1.0,
    *,
    messages: Sequence[Mapping[str, str]] | None = None,
    prompt: str | None = None,
    max_new_tokens: int = 24,
    seed: int | None = None,
    prompt_template: str = DEFAULT_TEMPLATE,
    stop: str | Sequence[str] | None = DEFAULT_STOP,
    reference_temperature: float | None = 0.1,
    batch: bool = True,
    vllm_entropies: bool = False,
) -> SampleSet:
    """Sample ``n`` answers to ``question`` (and one low-temperature reference answer).

    The answers are generated by :func:`tokenwise.generate` with a
    :class:`~tokenwise.sampling.Temperature` sampler, all ``n`` in one batch, each with
    its own seeded random stream (answer ``i`` uses ``seed + i``; the reference uses
    ``seed + n``), so a seeded call is reproducible and gives the same answers batched
    or not. Each answer keeps its token log-probabilities and entropies under the
    model's own (temperature-1) distribution.

    A vLLM ``LLM`` works as the model too, once :mod:`tokenwise.vllm` is imported (it
    registers the engine with :mod:`tokenwise.models.adapters`; any model whose adapter has
    ``sample_completions`` is sampled that way): the ``n`` answers are one request with
    ``SamplingParams(n=n, seed=seed)`` (vLLM seeds answer ``i`` with ``seed + i``, but its
    random streams differ from tokenwise's, so the texts differ from the Hugging Face path's
    for the same seed), each with the chosen tokens' log-probabilities under the model's own
    distribution (``logprobs=0``, one value per token); token entropies need the full
    vocabulary and come only with ``vllm_entropies=True`` (see :mod:`tokenwise.vllm.backend`
    for the cost). ``batch`` does not apply there (vLLM batches by itself).

    A chat model is asked through its chat template with ``messages=``: the model reads the
    messages rendered with the template (turn markers as control tokens), and the sample set
    stores the last user message as its question (what NLI's ``condition_on_question`` and
    the question-side estimators read) and the messages, so that
    :func:`~tokenwise.uncertainty.perturbation.add_paraphrases` renders each paraphrase the
    same way, system message kept. A prompt rendered elsewhere (the server's) is given as
    ``prompt=`` with the plain ``question``.

    Args:
        model: a :class:`~tokenwise.models.LanguageModel`, a built-in name, a directory or
            a vLLM ``LLM``.
        question: the question; with ``prompt_template="{question}"`` (and no ``prompt=``)
            the exact prompt, stored stripped as the question. None with ``messages=``.
        n: answers to sample (>= 2; 10 as in Farquhar et al.).
        temperature: sampling temperature (> 0; 1.0 as in the paper).
        messages: chat messages (``[{"role": ..., "content": ...}]``, roles system,
            developer, user, assistant), the last one the user's question, rendered with
            the model's chat template; instead of ``question`` and ``prompt``.
        prompt: the exact prompt the model reads (e.g. a chat rendered by the server, an
            :class:`~tokenwise.models.language_model.EncodedText`), with ``question`` the
            plain question it asks.
        max_new_tokens: most tokens per answer.
        seed: base seed (None: fresh randomness).
        prompt_template: the prompt, with ``{question}`` where the question goes; the
            default ``"Q: {question}\\nA:"`` is the testbed's form. Not used with
            ``messages=`` or ``prompt=`` (leave it at its default or ``"{question}"``).
        stop: string(s) that end an answer (default: a newline; with ``messages=``, None lets
            an answer run to the model's end-of-turn token).
        reference_temperature: temperature of the reference answer (0.1 as in the paper;
            None: no reference answer).
        batch: generate the ``n`` answers in one batch (False: one at a time).
        vllm_entropies: with a vLLM ``LLM``, also give each answer its token entropies
            (full-vocabulary logprobs; the engine needs ``max_logprobs=-1``). A
            LanguageModel always gives them.

    Returns:
        A :class:`SampleSet`.

    Raises:
        TokenwiseError: bad numbers, no question, ``messages=`` with ``question`` or
            ``prompt=``, bad messages, or ``messages=`` for a model without a chat template.

    Example:
        >>> s = sample_answers("tw-large", "What is 2+3?", n=2, seed=0, max_new_tokens=4)
        >>> s.n, s.temperature, s.answers[0].has_logprobs
        (2, 1.0, True)

        A prompt made elsewhere, given with its plain question (a chat model's messages go
        in ``messages=`` instead, and are rendered here):

        >>> s = sample_answers("tw-large", "What is 2+3?", prompt="Q: What is 2+3?\\nA:",
        ...                    n=2, seed=0, max_new_tokens=4)
        >>> s.question, s.prompt
        ('What is 2+3?', 'Q: What is 2+3?\\nA:')
    """
    from tokenwise.models import LanguageModel, load

    n = _check_n(n)
    temperature = _check_temperature(temperature, "temperature")
    if reference_temperature is not None:
        reference_temperature = _check_temperature(reference_temperature,
                                                   "reference_temperature")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
                             or seed < 0):
        raise TokenwiseError(f"seed={seed!r}: allowed a non-negative integer or None")
    from tokenwise.generation.engine import MAX_SEED

    if seed is not None and seed + n > MAX_SEED:
        # answer i uses seed + i and the reference seed + n: name the seed the caller gave
        raise TokenwiseError(f"seed={seed!r}: with n={n} answers (seeds seed..seed+{n}) "
                             f"allowed at most {MAX_SEED - n}")
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    msgs, question, prompt = _question_and_prompt(question, messages, prompt, prompt_template)
    engine = adapt(model)  # e.g. a vLLM LLM, once tokenwise.vllm is imported
    is_engine = callable(getattr(engine, "sample_completions", None))
    lm = engine if is_engine else model if isinstance(model, LanguageModel) else load(model)
    if msgs is not None:
        prompt = render_chat(lm, msgs)
    if is_engine:
        answers = _engine_answers(engine, prompt, n, temperature, max_new_tokens, seed, stops,
                                  vllm_entropies)
        reference = None
        if reference_temperature is not None:
            reference = _engine_answers(engine, prompt, 1, reference_temperature,
                                        max_new_tokens, None if seed is None else seed + n,
                                        stops, vllm_entropies)[0]
        return SampleSet(question, tuple(answers), reference, temperature, (), prompt, msgs)
    seeds: list[int | None] = [None] * n if seed is None else [seed + i for i in range(n)]
    answers = _generate_answers(lm, prompt, n, temperature, max_new_tokens, seeds, stops, batch)
    reference = None
    if reference_temperature is not None:
        ref_seed = [None] if seed is None else [seed + n]
        reference = _generate_answers(lm, prompt, 1, reference_temperature, max_new_tokens,
                                      ref_seed, stops, batch)[0]
    return SampleSet(question, tuple(answers), reference, temperature, (), prompt, msgs)


def _question_and_prompt(question: object, messages: object, prompt: object, template: str
                         ) -> tuple[Messages | None, str, str | None]:
    """``sample_answers``' inputs as (checked messages or None, the stored question, the
    prompt; None while the messages still need rendering with the model)."""
    if messages is not None:
        if question is not None or prompt is not None:
            given = "question" if question is not None else "prompt="
            raise TokenwiseError(
                f"{given} and messages= both given: allowed one (with messages= the question "
                "is the last user message)")
        _check_unused_template(template, "messages=")
        msgs = check_messages(messages)
        return msgs, question_of(msgs), None
    if not isinstance(question, str) or not question.strip():
        raise TokenwiseError(f"question is {question!r}: allowed a non-empty string (or "
                             "messages= for a chat model)")
    if prompt is not None:
        if not isinstance(prompt, str) or not prompt.strip():
            raise TokenwiseError(f"prompt={prompt!r}: allowed a non-empty string, the exact "
                                 "prompt the model reads")
        _check_unused_template(template, "prompt=")
        return None, question.strip(), prompt
    # The bare template means "this is the exact prompt" (the server's rendered chat, whose
    # trailing newline and template token ids must survive): used as given.
    if template == "{question}":
        return None, question.strip(), question
    # A rendered chat (EncodedText) goes in whole so that _format_prompt refuses it.
    asked = question if isinstance(question, EncodedText) else question.strip()
    return None, question.strip(), _format_prompt(template, asked)

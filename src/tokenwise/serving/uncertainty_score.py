"""Score a request's uncertainty: sample answers to the same prompt, apply an estimator.

The answers are sampled at the request's ``temperature`` for uncertainty (default 1, as in
Farquhar et al.), with the request's ``max_tokens`` and stop strings, plus one
low-temperature reference answer (some estimators read it). Estimators that need
paraphrased questions are not offered: the server has no paraphraser it could trust.

Example:
    >>> from tokenwise.models import load
    >>> from tokenwise.serving.schemas import UncertaintyOptions
    >>> out = score_uncertainty(UncertaintyOptions(method="predictive_entropy", n=2),
    ...                         load("tw-small"), "7+2=", 3, ["\\n"], seed=0)
    >>> out["n"], out["score"] >= 0
    (2, True)
"""

from __future__ import annotations

from typing import Any

from tokenwise import uncertainty
from tokenwise.errors import TokenwiseError
from tokenwise.serving.errors import APIError
from tokenwise.serving.schemas import UncertaintyOptions

#: estimators that need paraphrased questions (not available through the server).
NEEDS_PARAPHRASES = ("inv_entropy", "semantic_volume_questions")


def available() -> list[str]:
    """The estimator names a request may ask for.

    Example:
        >>> "semantic_entropy" in available()
        True
    """
    return [n for n in uncertainty.names() if n not in NEEDS_PARAPHRASES]


def check(options: UncertaintyOptions, max_n: int) -> None:
    """Raise a 400 for an unknown method or too many samples (before any work)."""
    if options.method not in available():
        why = " (it needs paraphrased questions)" if options.method in NEEDS_PARAPHRASES else ""
        raise APIError(400, f"tokenwise.uncertainty.method={options.method!r}{why}: allowed "
                            f"{', '.join(available())}", param="tokenwise.uncertainty.method")
    if options.n > max_n:
        raise APIError(400, f"tokenwise.uncertainty.n={options.n}: this server allows at most "
                            f"{max_n}", param="tokenwise.uncertainty.n")


def score_uncertainty(options: UncertaintyOptions, lm: Any, prompt: str, max_tokens: int,
                      stops: list[str], seed: int | None = None) -> dict[str, Any]:
    """Sample ``options.n`` answers to ``prompt`` and score them.

    Args:
        options: method, n, temperature.
        lm: the model.
        prompt: the exact prompt the answer was generated from.
        max_tokens: most tokens per answer.
        stops: stop strings.
        seed: base seed (answer i uses seed + i).

    Returns:
        ``{"method", "n", "temperature", "score", "answers"}``.
    """
    try:
        samples = uncertainty.sample_answers(
            lm, prompt, n=options.n, temperature=options.temperature,
            max_new_tokens=max_tokens, seed=seed, prompt_template="{question}",
            stop=list(stops) or None)
        score = uncertainty.get(options.method)(samples)
    except TokenwiseError as exc:
        raise APIError(400, f"tokenwise.uncertainty: {exc}",
                       param="tokenwise.uncertainty") from None
    return {"method": options.method, "n": options.n, "temperature": options.temperature,
            "score": float(score), "answers": list(samples.texts)}

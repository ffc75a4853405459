"""Bidirectional entailment with any local NLI model (Kuhn et al. 2023; Farquhar et al. 2024).

Any Hugging Face sequence-classification model whose ``config.id2label`` names an
entailment class (and, for the non-strict rule, contradiction and neutral classes) works;
label names are matched case-insensitively by prefix ("ENTAILMENT", "entails",
"Contradiction", ...). As in the reference (jlko/semantic_uncertainty), the question is
prepended to both answers and the predicted class is the argmax of the logits.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenwise.errors import TokenwiseError
from tokenwise.uncertainty.equivalence import Equivalence

ENTAILMENT, NEUTRAL, CONTRADICTION = "entailment", "neutral", "contradiction"


def _label_kinds(id2label: dict[Any, str]) -> dict[int, str]:
    """Map class index -> entailment / neutral / contradiction (others omitted)."""
    kinds = {}
    for idx, name in id2label.items():
        low = str(name).lower()
        if low.startswith("entail"):
            kinds[int(idx)] = ENTAILMENT
        elif low.startswith("contradict"):
            kinds[int(idx)] = CONTRADICTION
        elif low.startswith("neutral"):
            kinds[int(idx)] = NEUTRAL
    return kinds


class NLIEquivalence(Equivalence):
    """Two answers are equivalent when an NLI model finds they entail each other.

    ``strict=True``: entailment in both directions. ``strict=False`` (the reference's
    default rule): no contradiction in either direction and not neutral in both.

    Pairs are batched (both directions of every pair in one pass) and every
    (premise, hypothesis) prediction is cached, so re-clustering the same answers, or
    asking a pair twice, runs the model once.

    Args:
        model: a local model directory, or an already loaded HF
            ``...ForSequenceClassification`` model (then pass ``tokenizer``).
        tokenizer: the tokenizer, when ``model`` is a loaded model.
        strict: the strict (both entail) or the reference's non-strict rule.
        condition_on_question: prepend ``"question "`` to each answer (as the reference).
        batch_size: premise/hypothesis pairs per forward pass.
        max_length: longer pairs are truncated (longest first) to this many tokens (and
            to the model's and tokenizer's own limits).
        device: torch device.

    Raises:
        TokenwiseError: a directory that does not exist, or labels without an
            entailment class (or, for ``strict=False``, without contradiction and neutral).

    Example:
        >>> eq = NLIEquivalence("/no/such/dir")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        tokenwise.errors.TokenwiseError: NLI model '/no/such/dir' is not a local directory...
    """

    def __init__(self, model: str | os.PathLike[str] | Any, tokenizer: Any = None, *,
                 strict: bool = True, condition_on_question: bool = True,
                 batch_size: int = 32, max_length: int = 256, device: str | None = None):
        if isinstance(model, str | os.PathLike):
            path = Path(model)
            if not path.is_dir():
                raise TokenwiseError(f"NLI model {str(model)!r} is not a local directory; "
                                     "tokenwise never downloads models")
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            from tokenwise.models.loading import quiet_weights_loading

            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            with quiet_weights_loading():
                model = AutoModelForSequenceClassification.from_pretrained(
                    path, local_files_only=True, use_safetensors=True)
            self.name = str(path)
        else:
            if tokenizer is None:
                raise TokenwiseError("a loaded NLI model needs its tokenizer: pass tokenizer=")
            self.name = type(model).__name__
        if batch_size < 1 or max_length < 4:
            raise TokenwiseError(f"batch_size={batch_size}, max_length={max_length}: allowed "
                                 "batch_size >= 1 and max_length >= 4")
        self.kinds = _label_kinds(getattr(model.config, "id2label", {}) or {})
        found = set(self.kinds.values())
        needed = {ENTAILMENT} if strict else {ENTAILMENT, NEUTRAL, CONTRADICTION}
        if not needed <= found:
            raise TokenwiseError(
                f"NLI model {self.name!r} has labels {model.config.id2label}; "
                f"{'strict' if strict else 'non-strict'} equivalence needs "
                f"{', '.join(sorted(needed))} (matched case-insensitively)")
        if device is not None:
            from tokenwise.models.loading import pick_device

            model = model.to(pick_device(device))  # a bad name is one line, not torch's
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.strict = strict
        self.condition_on_question = condition_on_question
        self.batch_size = batch_size
        limits = [max_length, getattr(tokenizer, "model_max_length", None),
                  getattr(model.config, "max_position_embeddings", None)]
        self.max_length = min(v for v in limits if isinstance(v, int) and v > 0)
        self._cache: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        self.model_calls = 0  # forward passes run, for tests and benchmarks

    def __repr__(self) -> str:
        return f"NLIEquivalence({self.name!r}, strict={self.strict})"

    def predict(self, premises: Sequence[str], hypotheses: Sequence[str]) -> list[str]:
        """The NLI verdict for each (premise, hypothesis): entailment, neutral,
        contradiction, or ``"other"`` for a class with none of those names. Cached."""
        import torch

        pairs = list(zip(premises, hypotheses, strict=True))
        with self._lock:
            todo = list(dict.fromkeys(p for p in pairs if p not in self._cache))
            device = next(self.model.parameters()).device
            for start in range(0, len(todo), self.batch_size):
                chunk = todo[start:start + self.batch_size]
                enc = self.tokenizer([p for p, _ in chunk], [h for _, h in chunk],
                                     padding=True, truncation="longest_first",
                                     max_length=self.max_length, return_tensors="pt")
                with torch.inference_mode():
                    logits = self.model(**enc.to(device)).logits  # (B, C)
                self.model_calls += 1
                for pair, idx in zip(chunk, logits.argmax(-1).tolist(), strict=True):
                    self._cache[pair] = self.kinds.get(idx, "other")
            return [self._cache[p] for p in pairs]

    def many(self, question: str, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        if not pairs:
            return []
        def text(t: str) -> str:
            return f"{question} {t}" if self.condition_on_question and question else t

        forward = [(text(a), text(b)) for a, b in pairs]
        both = forward + [(b, a) for a, b in forward]
        verdicts = self.predict([p for p, _ in both], [h for _, h in both])
        out = []
        for ab, ba in zip(verdicts[:len(pairs)], verdicts[len(pairs):], strict=True):
            if self.strict:
                out.append(ab == ENTAILMENT and ba == ENTAILMENT)
            else:
                out.append(CONTRADICTION not in (ab, ba) and (ab, ba) != (NEUTRAL, NEUTRAL))
        return out

    def clear_cache(self) -> None:
        """Forget the cached predictions."""
        with self._lock:
            self._cache.clear()

"""Measure a model on the testbed (`tokenwise testbed eval`): what it knows, and how well.

Greedy accuracy on fact questions by frequency bucket, on additions by number of digits and
on needle contexts by number of distractors; and, on the exact-entropy Markov source, the
model's measured next-token entropy against the true entropy at every symbol position.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tokenwise import signals
from tokenwise.errors import TokenwiseError
from tokenwise.models import LanguageModel
from tokenwise.testbed import arithmetic
from tokenwise.testbed.facts import BUCKETS
from tokenwise.testbed.markov import SYMBOLS
from tokenwise.testbed.needle import DISTRACTOR_COUNTS
from tokenwise.testbed.worlds import Testbed


@torch.inference_mode()
def greedy_complete(model: LanguageModel, prompts: Sequence[str], max_new_tokens: int = 12,
                    stop: str = "\n", batch_size: int = 64) -> list[str]:
    """Greedy completions of ``prompts``, cut at ``stop`` or EOS (batched, left padding).

    This is the testbed's own small decode loop; the full generation engine lives in
    ``tokenwise.generation``.

    Args:
        model: the model.
        prompts: texts to complete (BOS is put in front of each).
        max_new_tokens: most tokens generated per prompt.
        stop: completion ends before this string.
        batch_size: prompts per forward pass.

    Example:
        >>> from tokenwise.models import load
        >>> greedy_complete(load("tw-large"), ["2+2="])
        ['4']
    """
    pad = model.tokenizer.pad_token_id
    pad = model.eos_token_id if pad is None else pad
    pad = 0 if pad is None else pad
    out_texts: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = [model.encode(p, add_bos=True) for p in prompts[start : start + batch_size]]
        longest = max(len(c) for c in chunk)
        if longest + max_new_tokens - 1 > model.context_length:
            raise TokenwiseError(
                f"prompt of {longest} tokens + {max_new_tokens} new tokens exceeds the context "
                f"length {model.context_length} of {model.name!r}"
            )
        ids = torch.full((len(chunk), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), longest), dtype=torch.long)
        for i, c in enumerate(chunk):
            ids[i, longest - len(c) :] = torch.tensor(c)
            mask[i, longest - len(c) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model.forward(ids, mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        generated: list[list[int]] = [[] for _ in chunk]
        done = [False] * len(chunk)
        for step in range(max_new_tokens):
            nxt = out.logits[:, -1].argmax(-1)  # (B,)
            for i, tok in enumerate(nxt.tolist()):
                if done[i]:
                    continue
                if tok == model.eos_token_id:
                    done[i] = True
                    continue
                generated[i].append(tok)
                if stop and stop in model.decode(generated[i][-4:]):
                    done[i] = True
            if all(done) or step == max_new_tokens - 1:
                break  # the last token chosen needs no forward pass of its own
            mask = torch.cat([mask, torch.ones((len(chunk), 1), dtype=torch.long)], dim=1)
            positions = positions[:, -1:] + 1
            out = model.forward(nxt[:, None], mask, cache=out.cache,
                                position_ids=positions, use_cache=True)
        for g in generated:
            text = model.decode(g, skip_special_tokens=True)
            out_texts.append(text.split(stop)[0].strip() if stop else text.strip())
    return out_texts


@dataclass
class Accuracy:
    """Correct answers out of n, with a 95% Wilson interval."""

    correct: int
    n: int

    @property
    def value(self) -> float:
        """The accuracy (0 when n = 0)."""
        return self.correct / self.n if self.n else 0.0

    def interval(self) -> tuple[float, float]:
        """95% Wilson score interval."""
        if not self.n:
            return (0.0, 1.0)
        z, p, n = 1.96, self.value, self.n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return (max(0.0, centre - half), min(1.0, centre + half))

    def as_dict(self) -> dict:
        """JSON-ready summary."""
        lo, hi = self.interval()
        return {"accuracy": round(self.value, 4), "correct": self.correct, "n": self.n,
                "ci95": [round(lo, 4), round(hi, 4)]}


def eval_facts(model: LanguageModel, testbed: Testbed,
               buckets: Sequence[str] = BUCKETS, limit: int | None = None) -> dict:
    """Greedy accuracy on fact questions, by frequency bucket, with the chance level.

    Args:
        model: the model.
        testbed: the worlds the model was trained on.
        buckets: which buckets to ask about.
        limit: at most this many questions per bucket (all when None).
    """
    world = testbed.fact_world
    items = world.questions(tuple(buckets))
    if limit is not None:
        per: dict[str, int] = defaultdict(int)
        kept = []
        for it in items:
            if per[it.bucket] < limit:
                per[it.bucket] += 1
                kept.append(it)
        items = kept
    answers = greedy_complete(model, [it.prompt for it in items], max_new_tokens=10)
    result: dict[str, dict] = {}
    for bucket in buckets:
        pairs = [(it, a) for it, a in zip(items, answers, strict=True) if it.bucket == bucket]
        acc = Accuracy(sum(world.is_correct(it, a) for it, a in pairs), len(pairs))
        chance = float(np.mean([world.chance_accuracy(it.attribute) for it, _ in pairs] or [0]))
        result[bucket] = {**acc.as_dict(), "chance": round(chance, 4)}
    return result


def eval_arithmetic(model: LanguageModel, testbed: Testbed, per_level: int = 100) -> dict:
    """Greedy exact-match accuracy on fresh additions, by digits per operand."""
    items = arithmetic.eval_items(testbed.seed, per_level)
    answers = greedy_complete(model, [it.prompt for it in items], max_new_tokens=9)
    out = {}
    for level in arithmetic.LEVELS:
        hits = [a == it.answer for it, a in zip(items, answers, strict=True) if it.level == level]
        out[str(level)] = Accuracy(sum(hits), len(hits)).as_dict()
    return out


def eval_needle(model: LanguageModel, testbed: Testbed, per_count: int = 100) -> dict:
    """Greedy accuracy on fresh needle contexts, by number of distractors."""
    items = testbed.needles.eval_items(testbed.seed, per_count)
    answers = greedy_complete(model, [it.prompt for it in items], max_new_tokens=5,
                              batch_size=32)
    out = {}
    for count in DISTRACTOR_COUNTS:
        hits = [a == it.answer for it, a in zip(items, answers, strict=True)
                if it.n_distractors == count]
        out[str(count)] = Accuracy(sum(hits), len(hits)).as_dict()
    return out


@torch.inference_mode()
def eval_markov(model: LanguageModel, testbed: Testbed, n_sequences: int = 50) -> dict:
    """Measured vs true next-token entropy on fresh lines of the exact-entropy source.

    At every symbol position the model's entropy (over its whole vocabulary) is compared
    with the true entropy of the source; the model's mean surprisal of the sampled symbols
    is the cross-entropy, which can approach but not beat the true entropy.

    Args:
        model: the model.
        testbed: the worlds (the Markov source is ``testbed.markov``).
        n_sequences: how many fresh lines.
    """
    source = testbed.markov
    rng = np.random.default_rng([testbed.seed, 9090])
    symbol_ids = [model.encode(" " + s) for s in SYMBOLS]
    if any(len(s) != 1 for s in symbol_ids):
        raise TokenwiseError(f"model {model.name!r} does not encode each Markov symbol as one "
                             "token; its entropy cannot be compared with the source's")
    true_h, model_h, surprise = [], [], []
    for _ in range(n_sequences):
        seq = source.sample(rng)
        ids = model.encode(seq.text, add_bos=True)
        sym_positions = [i for i, t in enumerate(ids) if [t] in symbol_ids]
        sym_positions = sym_positions[-source.length :]
        logits = model.forward(torch.tensor([ids])).logits[0].float()  # (T, V)
        pred = torch.tensor(sym_positions) - 1
        model_h.append(signals.entropy(logits[pred]).cpu().numpy())
        chosen = torch.tensor([ids[p] for p in sym_positions], device=logits.device)
        surprise.append(signals.surprisal(logits[pred], chosen).cpu().numpy())
        true_h.append(seq.true_entropies)
    t, m, s = (np.concatenate(x) for x in (true_h, model_h, surprise))
    return {
        "positions": int(t.size),
        "true_entropy_mean": round(float(t.mean()), 4),
        "model_entropy_mean": round(float(m.mean()), 4),
        "mean_abs_error": round(float(np.abs(m - t).mean()), 4),
        "correlation": round(float(np.corrcoef(t, m)[0, 1]), 4),
        "cross_entropy": round(float(s.mean()), 4),
        "units": "nats",
    }


def evaluate(model: LanguageModel, testbed: Testbed | None = None, *, quick: bool = False) -> dict:
    """Every testbed measurement of ``model`` (the figures BENCHMARKS.md reports).

    Args:
        model: the model.
        testbed: the worlds (default: seed 0, the built-in models' worlds).
        quick: smaller samples (for tests and the demo).

    Example:
        >>> from tokenwise.models import load
        >>> report = evaluate(load("tw-small"), quick=True)  # doctest: +SKIP
        >>> sorted(report)  # doctest: +SKIP
        ['arithmetic', 'facts', 'markov', 'model', 'needle', 'parameters']
    """
    testbed = testbed or Testbed(0)
    return {
        "model": model.name,
        "parameters": model.num_parameters(),
        "facts": eval_facts(model, testbed, limit=40 if quick else None),
        "arithmetic": eval_arithmetic(model, testbed, 20 if quick else 200),
        "needle": eval_needle(model, testbed, 20 if quick else 200),
        "markov": eval_markov(model, testbed, 5 if quick else 100),
    }

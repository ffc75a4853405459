"""Measure a model on the testbed (`tokenwise testbed eval`): what it knows, and how well.

Greedy accuracy on fact questions by frequency bucket, on additions by number of digits and
on needle contexts by number of distractors; and, on the exact-entropy Markov source, the
model's measured next-symbol entropy against the true entropy at every symbol a token
begins, and its cross-entropy per symbol.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tokenwise.errors import TokenwiseError
from tokenwise.models import LanguageModel
from tokenwise.testbed import arithmetic
from tokenwise.testbed.facts import BUCKETS
from tokenwise.testbed.markov import HEADER, SYMBOLS
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


def _first_symbols(model: LanguageModel) -> torch.Tensor:
    """``(V,)`` the index in :data:`SYMBOLS` of the symbol each token's text begins with
    (its space, then the whole symbol: ``" ka"``, ``" ka lo"``), -1 for every other token.

    A token's text is read after an anchor token (``model.decode`` of the pair, less the
    anchor's text), so tokenizers that write a leading space only inside a text
    (SentencePiece's ``▁``) read as byte-level ones do.
    """
    anchor = model.encode(HEADER)[-1:]
    head = model.decode(anchor)
    vocab = len(model.tokenizer)
    texts = model.tokenizer.batch_decode([[*anchor, t] for t in range(vocab)])
    pattern = re.compile(r" (" + "|".join(map(re.escape, SYMBOLS)) + r")(?!\w)")
    first = torch.full((vocab,), -1, dtype=torch.long)
    for t, text in enumerate(texts):
        match = pattern.match(text, len(head)) if text.startswith(head) else None
        if match is not None:
            first[t] = SYMBOLS.index(match.group(1))
    return first


def _token_starts(model: LanguageModel, ids: Sequence[int]) -> list[int]:
    """Where each token of ``ids`` (a text's, without start ids) begins in the text."""
    return [len(model.decode(ids[:k])) for k in range(len(ids))]


@torch.inference_mode()
def eval_markov(model: LanguageModel, testbed: Testbed, n_sequences: int = 50) -> dict:
    """Measured vs true next-symbol entropy on fresh lines of the exact-entropy source.

    The source's truth is a distribution over the next *symbol*. The built-in tokenizer
    makes each symbol (with its leading space) one token, so the model's next-token
    distribution is a next-symbol one at every symbol. A tokenizer with supertokens
    (multi-symbol tokens such as ``" pe lo"``: :func:`tokenwise.tokenizers.train` with
    ``supertokens=True``, a model transplanted onto it) writes some symbols inside a token,
    where the model gives no next-symbol distribution. So:

    * the per-position comparison is made at every symbol a token begins (every symbol
      with the built-in tokenizer): the model's next-symbol distribution there is its
      next-token distribution with the tokens that begin with the same symbol (``" pe"``,
      ``" pe lo"``, ...) counted as one outcome, every other token its own; its entropy is
      compared with the true entropy at that position (``positions`` of them;
      ``true_entropy_mean``, ``model_entropy_mean``, ``mean_abs_error``, ``correlation``).
      With one token per symbol this is the entropy over the whole vocabulary.
    * ``cross_entropy`` is the model's surprisal of all the tokens that hold the line's
      symbols, per symbol (nats per symbol, ``symbols`` of them): a tokenizer-independent
      figure that can approach but not beat ``true_entropy_per_symbol``, the mean true
      entropy of every symbol. Text a token shares with the symbols (the header's ``:``,
      the closing newline) is certain given what precedes it, so it adds no true entropy.

    Args:
        model: the model.
        testbed: the worlds (the Markov source is ``testbed.markov``).
        n_sequences: how many fresh lines.

    Raises:
        TokenwiseError: the model's tokenizer splits a symbol (a token that begins a symbol
            holds only part of it), so its tokens give no next-symbol distribution.

    Example:
        >>> from tokenwise.models import load
        >>> from tokenwise.testbed.worlds import Testbed
        >>> report = eval_markov(load("tw-small"), Testbed(0), n_sequences=2)
        >>> report["positions"] == report["symbols"] == 80
        True
    """
    source = testbed.markov
    rng = np.random.default_rng([testbed.seed, 9090])
    first = _first_symbols(model)
    split = [s for i, s in enumerate(SYMBOLS)
             if int(first[model.encode(" " + s)[0]]) != i]
    if split:
        raise TokenwiseError(f"model {model.name!r} splits the Markov symbols "
                             f"{', '.join(split)} (their first token is not the whole symbol); "
                             "its entropy cannot be compared with the source's")
    n_start = len(model.encode(HEADER, add_bos=True)) - len(model.encode(HEADER))
    true_h, model_h, all_true = [], [], []
    total_surprisal, symbols = 0.0, 0
    for _ in range(n_sequences):
        seq = source.sample(rng)
        ids = model.encode(seq.text, add_bos=True)
        text_ids = ids[n_start:]
        starts = _token_starts(model, text_ids)
        # symbol j is " " + SYMBOLS[s] at characters [begin + 3j, begin + 3j + 3)
        begin, end = len(HEADER), len(HEADER) + 3 * source.length
        at = {c: n_start + k for k, c in enumerate(starts)}
        measured = [j for j in range(source.length) if begin + 3 * j in at]
        token_pos = [at[begin + 3 * j] for j in measured]
        bounds = [*starts[1:], len(seq.text)]
        covering = [n_start + k for k, (a, b) in enumerate(zip(starts, bounds, strict=True))
                    if a < end and b > begin]
        if not token_pos or token_pos[0] == 0:
            raise TokenwiseError(f"model {model.name!r} begins no Markov symbol of a line with "
                                 "a token; its entropy cannot be compared with the source's")
        logits = model.forward(torch.tensor([ids])).logits[0].float()  # (T, V)
        logp = torch.log_softmax(logits, dim=-1)
        # the next-symbol distribution before each measured symbol
        pred = logp[torch.tensor(token_pos) - 1]  # (N, V)
        probs = pred.exp()
        # the logits may be wider than the tokenizer (padded rows): those tokens are "other"
        group = torch.full((pred.shape[-1],), -1, dtype=torch.long)
        group[:len(first)] = first[:pred.shape[-1]]
        group = group.to(pred.device)
        is_sym = group >= 0
        sym_p = torch.zeros(len(token_pos), len(SYMBOLS), device=pred.device)
        sym_p.index_add_(1, group[is_sym], probs[:, is_sym])
        other = torch.where(is_sym, torch.zeros_like(probs), -torch.xlogy(probs, probs))
        model_h.append((-torch.xlogy(sym_p, sym_p).sum(-1) + other.sum(-1)).cpu().numpy())
        actual = torch.tensor([seq.symbols[j] for j in measured], device=pred.device)
        got = group[torch.tensor([ids[p] for p in token_pos], device=pred.device)]
        if not torch.equal(got, actual):
            raise TokenwiseError(f"model {model.name!r} splits a Markov symbol inside a line; "
                                 "its entropy cannot be compared with the source's")
        chosen = torch.tensor([ids[p] for p in covering], device=logp.device)
        total_surprisal += float(-logp[torch.tensor(covering) - 1].gather(
            1, chosen[:, None]).sum())
        symbols += source.length
        true_h.append(seq.true_entropies[measured])
        all_true.append(seq.true_entropies)
    t, m = np.concatenate(true_h), np.concatenate(model_h)
    return {
        "positions": int(t.size),
        "symbols": symbols,
        "true_entropy_mean": round(float(t.mean()), 4),
        "model_entropy_mean": round(float(m.mean()), 4),
        "mean_abs_error": round(float(np.abs(m - t).mean()), 4),
        "correlation": round(float(np.corrcoef(t, m)[0, 1]), 4),
        "cross_entropy": round(total_surprisal / symbols, 4),
        "true_entropy_per_symbol": round(float(np.concatenate(all_true).mean()), 4),
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

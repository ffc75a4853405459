"""tokenwise.testbed.evaluate.eval_markov: measured against the Markov source's truth, with
the built-in tokenizer (one token per symbol) and with supertokens (tokens of several
symbols), where an oracle model that knows the source must measure the true entropy."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tokenwise import signals
from tokenwise.errors import TokenwiseError
from tokenwise.testbed.evaluate import eval_markov
from tokenwise.testbed.markov import HEADER, SYMBOLS
from tokenwise.tokenizers import train

SYMBOL = re.compile(r" (" + "|".join(SYMBOLS) + r")(?![a-z])")


@pytest.fixture(scope="module")
def super_tok(testbed):
    return train(testbed.training_documents()[:800], 800, supertokens=True)


class Oracle:
    """A model over ``tok`` that knows ``source``: after ``markov:`` and whole symbols, the
    next token is the next symbol's own token or a supertoken that begins with it, the
    symbol's true probability split in half between the two kinds (evenly among the
    supertokens), so only counting them as one outcome gives the true entropy; elsewhere
    every token is equally likely."""

    name = "oracle"

    def __init__(self, tok, source):
        self.tokenizer, self.source = tok, source
        self.bos = tok.bos_token_id
        self.own = {s: tok.convert_tokens_to_ids("Ġ" + s) for s in SYMBOLS}
        self.supers = {s: [] for s in SYMBOLS}
        for t in range(len(tok)):
            text = tok.decode([t])
            match = SYMBOL.match(text)
            if match and text != " " + match.group(1):
                self.supers[match.group(1)].append(t)

    def encode(self, text, add_bos=False):
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return [self.bos, *ids] if add_bos else ids

    def decode(self, ids, skip_special_tokens=False):
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def next_tokens(self, context: str) -> dict[int, float] | None:
        """Token -> probability after ``context`` when it ends at a symbol boundary."""
        if not context.startswith(HEADER):
            return None
        rest = context[len(HEADER):]
        if len(rest) % 3 or any(rest[i:i + 3][1:] not in SYMBOLS or rest[i] != " "
                                for i in range(0, len(rest), 3)):
            return None
        said = [SYMBOLS.index(rest[i + 1:i + 3]) for i in range(0, len(rest), 3)]
        if len(said) >= self.source.length:
            return None
        row = self.source.transition[said[-1]] if said else self.source.initial
        out = {}
        for i, s in enumerate(SYMBOLS):
            supers = self.supers[s]
            out[self.own[s]] = row[i] / 2 if supers else row[i]
            for t in supers:
                out[t] = row[i] / 2 / len(supers)
        return out

    def forward(self, ids):
        ids = ids[0].tolist()
        logits = torch.zeros(1, len(ids), len(self.tokenizer))
        for i in range(len(ids)):
            probs = self.next_tokens(self.decode(ids[1:i + 1]))
            if probs is not None:
                row = torch.full((len(self.tokenizer),), -float("inf"))
                for t, p in probs.items():
                    row[t] = float(np.log(p)) if p > 0 else -float("inf")
                logits[0, i] = row
        return SimpleNamespace(logits=logits)


def _lines(testbed, n):
    rng = np.random.default_rng([testbed.seed, 9090])
    return [testbed.markov.sample(rng) for _ in range(n)]


def test_supertokens_measure_the_true_entropy_where_a_token_begins_a_symbol(testbed,
                                                                            super_tok):
    oracle = Oracle(super_tok, testbed.markov)
    assert sum(map(len, oracle.supers.values())) > 0
    report = eval_markov(oracle, testbed, n_sequences=3)
    lines = _lines(testbed, 3)
    # reference: walk each line's tokens by their text; a token that begins with a whole
    # symbol is a measured position, and every token holding a symbol is surprisal
    true_at, surprisal, positions = [], 0.0, 0
    for seq in lines:
        ids = oracle.encode(seq.text)
        text = ""
        for t in ids:
            piece = oracle.decode([t])
            if text.startswith(HEADER) and len(text) < len(seq.text) - 1:
                j = (len(text) - len(HEADER)) // 3
                assert SYMBOL.match(piece) and (len(text) - len(HEADER)) % 3 == 0
                true_at.append(seq.true_entropies[j])
                surprisal -= np.log(oracle.next_tokens(text)[t])
                positions += 1
            text += piece
        assert text == seq.text
    symbols = 3 * testbed.markov.length
    assert report["symbols"] == symbols and report["positions"] == positions < symbols
    assert report["true_entropy_mean"] == pytest.approx(np.mean(true_at), abs=1e-4)
    # the grouped next-symbol entropy is the true one (the whole vocabulary's is not)
    assert report["model_entropy_mean"] == pytest.approx(report["true_entropy_mean"], abs=2e-4)
    assert report["mean_abs_error"] < 1e-3 and report["correlation"] > 0.9999
    assert report["cross_entropy"] == pytest.approx(surprisal / symbols, abs=1e-3)
    assert report["true_entropy_per_symbol"] == pytest.approx(
        np.mean([seq.true_entropies for seq in lines]), abs=1e-4)


def test_a_transplanted_supertoken_model_is_measured(small, testbed, super_tok):
    from tokenwise.tokenizers import transplant

    model = transplant(small, super_tok, "mean").model
    report = eval_markov(model, testbed, n_sequences=2)
    assert 0 < report["positions"] < report["symbols"] == 2 * testbed.markov.length
    assert report["cross_entropy"] > 0 and np.isfinite(report["model_entropy_mean"])


def test_one_token_per_symbol_is_the_whole_vocabularys_entropy(small, testbed):
    """The built-in tokenizer: every symbol measured, the model's entropy over its whole
    vocabulary, the mean surprisal of the symbol tokens its cross-entropy."""
    report = eval_markov(small, testbed, n_sequences=2)
    entropy, surprisal = [], []
    for seq in _lines(testbed, 2):
        ids = small.encode(seq.text, add_bos=True)
        logits = small.forward(torch.tensor([ids])).logits[0].float()
        at = [i for i, t in enumerate(ids) if small.decode([t]).strip() in SYMBOLS]
        assert len(at) == testbed.markov.length
        pred = torch.tensor(at) - 1
        entropy.append(signals.entropy(logits[pred]).numpy())
        surprisal.append(signals.surprisal(logits[pred], torch.tensor([ids[i] for i in at]))
                         .numpy())
    assert report["positions"] == report["symbols"] == 2 * testbed.markov.length
    assert report["model_entropy_mean"] == pytest.approx(np.concatenate(entropy).mean(),
                                                         abs=2e-4)
    assert report["cross_entropy"] == pytest.approx(np.concatenate(surprisal).mean(), abs=2e-4)
    assert report["true_entropy_mean"] == report["true_entropy_per_symbol"]


def test_a_tokenizer_that_splits_a_symbol_is_refused(testbed):
    """Its first token of " ka" holds part of the symbol: no next-symbol distribution."""
    tok = train(["markov: k a l o m i\n", "the code of the city"] * 40, 300)
    with pytest.raises(TokenwiseError, match="splits the Markov symbols ka, lo"):
        eval_markov(Oracle(tok, testbed.markov), testbed, n_sequences=1)

"""A first-order Markov "language model" whose every conditional is known in closed form."""

from __future__ import annotations

import numpy as np
import torch

from tokenwise.models.language_model import ForwardOutput


class BigramLM:
    """logits at position i = log T[ids[i]]: p(next | past) depends on the last token only.

    Token ids are their own text: ``encode("3 4")`` is ``[3, 4]``; id 0 is the start token.
    """

    def __init__(self, vocab: int = 6, seed: int = 0, context_length: int = 64) -> None:
        rng = np.random.default_rng(seed)
        self.transition = rng.dirichlet(np.ones(vocab), size=vocab)  # (V, V)
        self.log_t = torch.tensor(np.log(self.transition), dtype=torch.float32)
        self.vocab_size = vocab
        self.context_length = context_length
        self.start_ids = (0,)
        self.calls = 0

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = [int(t) for t in text.split()]
        return [0, *ids] if add_bos else ids

    def decode(self, ids) -> str:
        return " ".join(str(int(i)) for i in ids)

    def forward(self, input_ids, attention_mask=None, *, logits_to_keep=0, **_):
        self.calls += 1
        logits = self.log_t[input_ids]  # (B, T, V)
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return ForwardOutput(logits=logits)

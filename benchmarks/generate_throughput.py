"""Decode speed of `tokenwise.generate` against `transformers` `generate` on tw-large.

Claim checked (decoding issue): our engine, which also computes every token's logprob,
entropy, varentropy and rank, decodes at >= 0.9x the tokens/s of transformers' `generate`,
greedy and with a sampler (top-p 0.9 at temperature 1.0 on both sides), same prompts, same
number of new tokens (no stop condition), batch 1 and batch 8.

Run:
    .venv/bin/python benchmarks/generate_throughput.py
"""

from __future__ import annotations

import statistics
import time

import torch

import tokenwise as tw
from tokenwise.models import load
from tokenwise.sampling import TopP

PROMPTS = ["Q: What is the job of Trather Shai?\nA:", "5+3=", "markov: ka ro",
           "Memo:\nThe code of Brelix is 382.\nQ: What is the code of Brelix?\nA:",
           "Q: Where was Trather Shai born?\nA:", "12+45=", "markov: fe", "The pet of"]
NEW = 64


def hf_generate(lm, prompts: list[str], sample: bool) -> None:
    tok = lm.tokenizer
    enc = [lm.encode(p, add_bos=True) for p in prompts]
    width = max(map(len, enc))
    ids = torch.full((len(enc), width), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(enc):
        ids[i, width - len(e):] = torch.tensor(e)
        mask[i, width - len(e):] = 1
    kwargs = {"do_sample": True, "top_p": 0.9, "top_k": 0, "temperature": 1.0} if sample \
        else {"do_sample": False}
    lm.hf_model.generate(ids, attention_mask=mask, max_new_tokens=NEW, min_new_tokens=NEW,
                         pad_token_id=tok.pad_token_id, **kwargs)


def ours(lm, prompts: list[str], sample: bool) -> None:
    # Rows that end early (EOS) stay in the batch until the longest one is done, so the
    # loop makes NEW forward passes of the whole batch, as transformers does with
    # min_new_tokens=NEW: the same work on both sides.
    gens = tw.generate(lm, prompts, TopP(0.9) if sample else None, max_new_tokens=NEW,
                       seed=list(range(len(prompts))) if sample else None)
    assert max(len(g.tokens) for g in gens) == NEW


def main() -> None:
    lm = load("tw-large")
    print("| batch | decoding | transformers tok/s | tokenwise tok/s | ratio |")
    print("|---|---|---|---|---|")
    for batch in (1, 8):
        prompts = PROMPTS[:batch]
        for sample in (False, True):
            t_hf, t_ours = [], []
            for rep in range(6):
                for fn, acc in ((hf_generate, t_hf), (ours, t_ours)):
                    start = time.perf_counter()
                    fn(lm, prompts, sample)
                    if rep:  # the first round warms up
                        acc.append(time.perf_counter() - start)
            tokens = batch * NEW
            hf_rate, our_rate = tokens / statistics.median(t_hf), tokens / statistics.median(t_ours)
            print(f"| {batch} | {'top-p 0.9' if sample else 'greedy'} | {hf_rate:.0f} | "
                  f"{our_rate:.0f} | {our_rate / hf_rate:.2f}x |")


if __name__ == "__main__":
    main()

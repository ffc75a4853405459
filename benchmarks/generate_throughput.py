"""Decode speed of `tokenwise.generate` against `transformers` `generate` on the same model.

Claim checked (decoding issue; issue 17 on the real models): our engine, which also computes
every token's logprob, entropy, varentropy and rank, decodes at >= 0.9x (testbed) / 0.95x
(real models) the tokens/s of transformers' `generate`, greedy and with a sampler (top-p 0.9
at temperature 1.0 on both sides), same prompts, same number of new tokens (no stop
condition; transformers gets min_new_tokens = max_new_tokens, and our run is checked to make
that many forward passes), batch 1 and batch 8.

Timing: `--repeats` rounds, each running both sides once in alternating order (transformers
first in even rounds, ours first in odd ones) so load drift cancels; round 0 warms up and is
dropped. Printed: tokens/s from the medians, ours/transformers as the ratio of medians, the
median of the per-round ratios, and the ratio in process CPU time (steadier than wall time on
a shared machine with ``--threads 1``).

Correctness (`--check`, on by default): greedy token ids of ours and of transformers'
`generate` without min_new_tokens (so both may stop at the end-of-text token), for every
prompt at batch 1 and for the whole batch at batch 8, must be identical; the script prints
how many rows are.

Run:
    .venv/bin/python benchmarks/generate_throughput.py                        # tw-large
    .venv/bin/python benchmarks/generate_throughput.py --model smollm2-135m
    .venv/bin/python benchmarks/generate_throughput.py --model gemma3-270m
Real models are Q4 GGUF weights dequantised to float32 (`tokenwise models fetch NAME`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import tokenwise as tw
from tokenwise.models import LanguageModel, load
from tokenwise.sampling import TopP

TESTBED_PROMPTS = ["Q: What is the job of Trather Shai?\nA:", "5+3=", "markov: ka ro",
                   "Memo:\nThe code of Brelix is 382.\nQ: What is the code of Brelix?\nA:",
                   "Q: Where was Trather Shai born?\nA:", "12+45=", "markov: fe", "The pet of"]
# Plain English openings for the real models: long enough continuations, no chat template.
ENGLISH_PROMPTS = [
    "The history of the river valley begins with",
    "In the morning the old fisherman walked down to the harbour and",
    "Photosynthesis is the process by which plants",
    "The committee met on Tuesday to discuss the new railway line, which",
    "When the first settlers arrived on the island, they found",
    "A good recipe for bread starts with flour, water and",
    "The theory of plate tectonics explains why",
    "She opened the letter slowly, knowing that",
]
TOP_P, TEMPERATURE, SEED = 0.9, 1.0, 0


def _pad_id(lm: LanguageModel) -> int:
    # the engine's own rule, so both sides pad the same way
    pad = lm.tokenizer.pad_token_id
    pad = lm.eos_token_id if pad is None else pad
    return 0 if pad is None else pad


def hf_generate(lm: LanguageModel, prompts: list[str], sample: bool, new: int,
                fixed_length: bool = True, seed: int = SEED) -> list[list[int]]:
    """transformers' generate on left-padded prompts; the new token ids of each row."""
    enc = [lm.encode(p, add_bos=True) for p in prompts]
    width = max(map(len, enc))
    pad = _pad_id(lm)
    ids = torch.full((len(enc), width), pad)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(enc):
        ids[i, width - len(e):] = torch.tensor(e)
        mask[i, width - len(e):] = 1
    kwargs = {"do_sample": True, "top_p": TOP_P, "top_k": 0, "temperature": TEMPERATURE} \
        if sample else {"do_sample": False, "top_p": None, "top_k": None, "temperature": None}
    if fixed_length:
        kwargs["min_new_tokens"] = new
    torch.manual_seed(seed)
    out = lm.hf_model.generate(ids, attention_mask=mask, max_new_tokens=new, pad_token_id=pad,
                               eos_token_id=sorted(lm.end_token_ids) or None, **kwargs)
    return out[:, width:].tolist()


def ours(lm: LanguageModel, prompts: list[str], sample: bool, new: int,
         seed: int = SEED) -> list[list[int]]:
    """tw.generate; the new token ids of each row (ended at the end-of-text token)."""
    # Rows that end early (EOS) stay in the batch until the longest one is done, so the
    # loop makes `new` forward passes of the whole batch, as transformers does with
    # min_new_tokens=new: the same work on both sides, checked by the caller.
    gens = tw.generate(lm, prompts, TopP(TOP_P) if sample else None, max_new_tokens=new,
                       seed=[seed + i for i in range(len(prompts))] if sample else None)
    return [[t.id for t in g.tokens] for g in gens]


def check_greedy(lm: LanguageModel, prompts: list[str], new: int) -> dict:
    """Greedy ids of ours vs transformers (free length), per prompt alone and as a batch."""
    ends = lm.end_token_ids

    def cut(row: list[int]) -> list[int]:
        for k, t in enumerate(row):
            if t in ends:
                return row[:k]
        return row

    alone = [cut(hf_generate(lm, [p], False, new, fixed_length=False)[0]) == ours(
        lm, [p], False, new)[0] for p in prompts]
    hf_rows = [cut(r) for r in hf_generate(lm, prompts, False, new, fixed_length=False)]
    batch = [a == b for a, b in zip(hf_rows, ours(lm, prompts, False, new), strict=True)]
    return {"batch1_identical": sum(alone), "batch1_rows": len(alone),
            "batch_identical": sum(batch), "batch_rows": len(batch),
            "lengths": [len(r) for r in hf_rows]}


def time_case(lm: LanguageModel, prompts: list[str], sample: bool, new: int,
              repeats: int) -> dict:
    t_hf, t_ours, c_hf, c_ours = [], [], [], []
    for rep in range(repeats):
        sides = [("hf", t_hf, c_hf), ("ours", t_ours, c_ours)]
        for side, acc, acc_cpu in (sides if rep % 2 == 0 else sides[::-1]):
            start, cpu = time.perf_counter(), time.process_time()
            if side == "hf":
                rows = hf_generate(lm, prompts, sample, new)
                assert all(len(r) == new for r in rows), "transformers stopped early"
            else:
                rows = ours(lm, prompts, sample, new)
                assert max(map(len, rows)) == new, "our loop made fewer forward passes"
            if rep:  # round 0 warms up
                acc.append(time.perf_counter() - start)
                acc_cpu.append(time.process_time() - cpu)
    tokens = len(prompts) * new
    hf_rate = tokens / statistics.median(t_hf)
    our_rate = tokens / statistics.median(t_ours)
    return {"batch": len(prompts), "decoding": f"top-p {TOP_P} T={TEMPERATURE}" if sample
            else "greedy", "hf_s": t_hf, "ours_s": t_ours, "hf_tok_s": hf_rate,
            "ours_tok_s": our_rate, "ratio": our_rate / hf_rate,
            "hf_cpu_s": c_hf, "ours_cpu_s": c_ours,
            "cpu_ratio": statistics.median(c_hf) / statistics.median(c_ours),
            "median_round_ratio": statistics.median(
                [h / o for h, o in zip(t_hf, t_ours, strict=True)])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tw-large")
    parser.add_argument("--new", type=int, default=64, help="new tokens per row")
    parser.add_argument("--repeats", type=int, default=6, help="rounds; the first warms up")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--cases", default="greedy,sampled")
    parser.add_argument("--no-check", dest="check", action="store_false",
                        help="skip the greedy correctness check")
    parser.add_argument("--threads", type=int,
                        help="torch threads (default: torch's own; 1 gives steadier ratios "
                             "on a shared machine)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load(args.model)
    pool = TESTBED_PROMPTS if args.model.startswith("tw-") else ENGLISH_PROMPTS
    batches = [int(b) for b in args.batches.split(",")]
    cases = args.cases.split(",")
    result: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
                    "model": lm.name, "vocab": lm.vocab_size, "new": args.new,
                    "threads": torch.get_num_threads(), "seed": SEED, "prompts": pool}
    print(f"model {lm.name}, V = {lm.vocab_size}, {args.new} new tokens, "
          f"{torch.get_num_threads()} threads, seed {SEED}")
    if args.check:
        check = check_greedy(lm, pool[:max(batches)], args.new)
        result["greedy_check"] = check
        print(f"greedy ids identical to transformers': {check['batch1_identical']}/"
              f"{check['batch1_rows']} prompts alone, {check['batch_identical']}/"
              f"{check['batch_rows']} rows in one batch (lengths {check['lengths']})")
    print("| batch | decoding | transformers tok/s | tokenwise tok/s | ratio (of medians) | "
          "median round ratio | CPU-time ratio |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for batch in batches:
        for case in cases:
            r = time_case(lm, pool[:batch], case == "sampled", args.new, args.repeats)
            rows.append(r)
            print(f"| {batch} | {r['decoding']} | {r['hf_tok_s']:.1f} | {r['ours_tok_s']:.1f} | "
                  f"{r['ratio']:.3f}x | {r['median_round_ratio']:.3f}x | "
                  f"{r['cpu_ratio']:.3f}x |", flush=True)
    result["timing"] = rows
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

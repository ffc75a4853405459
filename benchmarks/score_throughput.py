"""Throughput and memory of `tokenwise.score` against a bare forward pass over the same windows.

Claim checked: on a 20k-token text, `tokenwise.score` (all signals: logprob, entropy,
varentropy, top-5, pieces, offsets) costs at most 10% more time than the bare model forward
passes over the same windows (the floor: `logits_to_keep` set the same way, signals not
computed), and it never holds more than one window's float32 logits at once.

Memory is measured in a fresh process per case, as the peak resident memory above what the
process held just before the case ran (peak reset through /proc/self/clear_refs), on a
random Llama with a 32k vocabulary and a 512-token window, where one window's logits take
62.5 MiB. glibc's mmap threshold is fixed at 128 KiB in those processes
(MALLOC_MMAP_THRESHOLD_): by default it grows after large frees, so freed tensors stay in
the heap and resident memory reports allocator history (we saw 11 MiB to 1.6 GiB for the
same run) instead of what is alive.

Run:
    .venv/bin/python benchmarks/score_throughput.py            # prints a Markdown table
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import tokenwise as tw
from tokenwise.models import LanguageModel, load
from tokenwise.scoring import plan_windows


def make_text(lm: LanguageModel, n_tokens: int) -> str:
    """A deterministic testbed text of at least ``n_tokens`` tokens."""
    from tokenwise.testbed.worlds import CorpusConfig, Testbed

    docs = Testbed(1, corpus=CorpusConfig(fact_repeats=1, markov_docs=200, arithmetic_docs=200,
                                          needle_docs=200)).training_documents()
    text, count = [], 0
    for doc in docs:
        text.append(doc)
        count += len(lm.encode(doc))
        if count >= n_tokens:
            break
    return "".join(text)


def floor_pass(lm: LanguageModel, text: str, window: int, stride: int) -> None:
    """The bare forward passes `score` makes, and nothing else."""
    seq = torch.tensor(lm.encode(text, add_bos=True))  # the tokenizer's own start ids, if any
    for begin, first, end in plan_windows(len(seq) - 1, window, stride):
        lm.forward(seq[begin:end][None], logits_to_keep=end - first + 1)


def timing(model: str, n_tokens: int, repeats: int) -> dict:
    lm = load(model)
    text = make_text(lm, n_tokens)
    n = len(lm.encode(text))
    window, stride = lm.context_length, lm.context_length // 2
    tw.score(lm, text[:2000])  # warm-up
    ours, floor = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        floor_pass(lm, text, window, stride)
        floor.append(time.perf_counter() - t)
        t = time.perf_counter()
        tw.score(lm, text, window=window, stride=stride)
        ours.append(time.perf_counter() - t)
    f, o = statistics.median(floor), statistics.median(ours)
    return {"model": model, "tokens": n, "window": window, "stride": stride,
            "floor_tok_s": n / f, "score_tok_s": n / o, "overhead": o / f - 1}


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def memory_case(case: str, n_tokens: int) -> dict:
    """Run one case in this process; peak RSS above the pre-case level, in MiB."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok_lm = load("tw-small")
    torch.manual_seed(0)
    vocab, window = 32000, 512
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=window, bos_token_id=1, eos_token_id=2)
    lm = LanguageModel(LlamaForCausalLM(cfg), tok_lm.tokenizer, name="random-32k")
    text = make_text(lm, n_tokens)
    floor_pass(lm, text[:3000], window, window // 2)
    tw.score(lm, text[:3000], window=window, stride=window // 2)
    Path("/proc/self/clear_refs").write_text("5")
    before = _rss_kib("VmRSS")
    if case == "floor":
        floor_pass(lm, text, window, window // 2)
    else:
        tw.score(lm, text, window=window, stride=window // 2)
    peak = _rss_kib("VmHWM")
    return {"case": case, "peak_above_start_mib": (peak - before) / 1024,
            "one_window_logits_mib": window * vocab * 4 / 2**20,
            "all_logits_mib": len(lm.encode(text)) * vocab * 4 / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tw-large")
    parser.add_argument("--tokens", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory-case", choices=["floor", "score"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.memory_case:
        print(json.dumps(memory_case(args.memory_case, args.tokens)))
        return
    t = timing(args.model, args.tokens, args.repeats)
    mem = {}
    for case in ("floor", "score"):
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
        out = subprocess.run([sys.executable, __file__, "--memory-case", case, "--tokens",
                              str(args.tokens)], capture_output=True, text=True, check=True,
                             env=env)
        mem[case] = json.loads(out.stdout.strip().splitlines()[-1])
    print("| model | tokens | window/stride | floor tok/s | score tok/s | overhead |")
    print("|---|---|---|---|---|---|")
    print(f"| {t['model']} | {t['tokens']} | {t['window']}/{t['stride']} | "
          f"{t['floor_tok_s']:.0f} | {t['score_tok_s']:.0f} | {100 * t['overhead']:+.1f}% |")
    print()
    print("| case (random Llama, V=32000, window 512) | peak RSS above start | "
          "one window's fp32 logits | all logits of the text |")
    print("|---|---|---|---|")
    for case, r in mem.items():
        print(f"| {case} | {r['peak_above_start_mib']:.1f} MiB | "
              f"{r['one_window_logits_mib']:.1f} MiB | {r['all_logits_mib']:.0f} MiB |")


if __name__ == "__main__":
    main()

"""Throughput and memory of `tokenwise.score` against a bare forward pass over the same windows.

Claim checked: on a long text, `tokenwise.score` (all signals: logprob, entropy, varentropy,
top-5, pieces, offsets) costs at most 10% more time than the bare model forward passes over
the same windows (the floor: `logits_to_keep` set the same way, signals not computed), and it
never holds more than one window's float32 logits at once.

Timing: `--repeats` rounds, each running `score` and the floor once, in alternating order
(score, floor; floor, score; ...) so load drift cancels; printed: tokens/s from the medians,
the overhead from the ratio of medians, the median of the per-round ratios score/floor, and
the overhead in process CPU time (steadier than wall time on a shared machine with
``--threads 1``).

Memory is measured in a fresh process per case, as the peak resident memory above what the
process held just before the case ran (peak reset through /proc/self/clear_refs). For the
default testbed model it runs on a random Llama with a 32k vocabulary and a 512-token window,
where one window's logits take 62.5 MiB; for any other `--model` it runs on that model, with
its `--window`/`--stride` and `--memory-tokens` tokens. glibc's mmap threshold is fixed at
128 KiB in those processes (MALLOC_MMAP_THRESHOLD_): by default it grows after large frees,
so freed tensors stay in the heap and resident memory reports allocator history (we saw
11 MiB to 1.6 GiB for the same run) instead of what is alive.

Run:
    .venv/bin/python benchmarks/score_throughput.py            # testbed, prints Markdown
    .venv/bin/python benchmarks/score_throughput.py --model smollm2-135m --tokens 4000
    .venv/bin/python benchmarks/score_throughput.py --model gemma3-270m --tokens 4000 \
        --window 1024      # V = 262,144: one 1,024-token window's logits are 1 GiB
Real models are Q4 GGUF weights dequantised to float32 (`tokenwise models fetch NAME`).
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


def timing(model: str, n_tokens: int, repeats: int, window: int | None,
           stride: int | None) -> dict:
    """Score and floor, alternating in order each round; seconds of every round kept."""
    lm = load(model)
    text = make_text(lm, n_tokens)
    n = len(lm.encode(text))
    window = window or lm.context_length
    stride = stride or window // 2
    tw.score(lm, text[:2000], window=window, stride=stride)  # warm-up, both paths
    floor_pass(lm, text[:2000], window, stride)
    ours, floor, ours_cpu, floor_cpu = [], [], [], []
    for rep in range(repeats):
        order = (("score", ours, ours_cpu), ("floor", floor, floor_cpu))
        for case, acc, acc_cpu in (order if rep % 2 == 0 else order[::-1]):
            t, c = time.perf_counter(), time.process_time()
            if case == "floor":
                floor_pass(lm, text, window, stride)
            else:
                tw.score(lm, text, window=window, stride=stride)
            acc.append(time.perf_counter() - t)
            acc_cpu.append(time.process_time() - c)
    f, o = statistics.median(floor), statistics.median(ours)
    return {"model": model, "tokens": n, "window": window, "stride": stride,
            "threads": torch.get_num_threads(), "repeats": repeats,
            "floor_s": floor, "score_s": ours, "floor_cpu_s": floor_cpu, "score_cpu_s": ours_cpu,
            "cpu_overhead": statistics.median(ours_cpu) / statistics.median(floor_cpu) - 1,
            "floor_tok_s": n / f, "score_tok_s": n / o, "overhead": o / f - 1,
            "median_round_ratio": statistics.median(
                [a / b for a, b in zip(ours, floor, strict=True)])}


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def memory_case(case: str, model: str, n_tokens: int, window: int | None,
                stride: int | None) -> dict:
    """Run one case in this process; peak RSS above the pre-case level, in MiB."""
    if model == "tw-large":  # the testbed figure: a random Llama with a 32k vocabulary
        from transformers import LlamaConfig, LlamaForCausalLM

        tok_lm = load("tw-small")
        torch.manual_seed(0)
        window, stride = 512, 256
        cfg = LlamaConfig(vocab_size=32000, hidden_size=64, intermediate_size=128,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                          max_position_embeddings=window, bos_token_id=1, eos_token_id=2)
        lm = LanguageModel(LlamaForCausalLM(cfg), tok_lm.tokenizer, name="random-32k")
    else:
        lm = load(model)
        window = window or lm.context_length
        stride = stride or window // 2
    vocab = lm.vocab_size
    text = make_text(lm, n_tokens)
    floor_pass(lm, text[:3000], window, stride)
    tw.score(lm, text[:3000], window=window, stride=stride)
    Path("/proc/self/clear_refs").write_text("5")
    before = _rss_kib("VmRSS")
    if case == "floor":
        floor_pass(lm, text, window, stride)
    else:
        tw.score(lm, text, window=window, stride=stride)
    peak = _rss_kib("VmHWM")
    n = len(lm.encode(text))
    kept = min(n, window)  # the first window scores all its positions
    return {"case": case, "model": lm.name, "vocab": vocab, "tokens": n, "window": window,
            "stride": stride, "peak_above_start_mib": (peak - before) / 1024,
            "one_window_logits_mib": kept * vocab * 4 / 2**20,
            "all_logits_mib": n * vocab * 4 / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tw-large")
    parser.add_argument("--tokens", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--window", type=int, help="default: the model's context length")
    parser.add_argument("--stride", type=int, help="default: window // 2")
    parser.add_argument("--memory-tokens", type=int,
                        help="tokens for the memory cases (default: --tokens)")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--threads", type=int,
                        help="torch threads (default: torch's own; 1 gives steadier ratios "
                             "on a shared machine)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--memory-case", choices=["floor", "score"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads or max(1, torch.get_num_threads()))
    mem_tokens = args.memory_tokens or args.tokens
    if args.memory_case:
        print(json.dumps(memory_case(args.memory_case, args.model, mem_tokens, args.window,
                                     args.stride)))
        return
    result: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv])}
    if not args.skip_timing:
        t = timing(args.model, args.tokens, args.repeats, args.window, args.stride)
        result["timing"] = t
        print(f"{t['threads']} thread(s), {t['repeats']} rounds, score and floor alternating")
        print("| model | tokens | window/stride | floor tok/s | score tok/s | overhead "
              "(ratio of medians) | median round ratio | CPU-time overhead |")
        print("|---|---|---|---|---|---|---|---|")
        print(f"| {t['model']} | {t['tokens']} | {t['window']}/{t['stride']} | "
              f"{t['floor_tok_s']:.0f} | {t['score_tok_s']:.0f} | "
              f"{100 * t['overhead']:+.1f}% | {t['median_round_ratio']:.3f} | "
              f"{100 * t['cpu_overhead']:+.1f}% |")
        print()
    if not args.skip_memory:
        mem = {}
        for case in ("floor", "score"):
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
            cmd = [sys.executable, __file__, "--memory-case", case, "--model", args.model,
                   "--memory-tokens", str(mem_tokens)]
            for flag, value in (("--window", args.window), ("--stride", args.stride)):
                if value:
                    cmd += [flag, str(value)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
            mem[case] = json.loads(out.stdout.strip().splitlines()[-1])
        result["memory"] = mem
        r0 = mem["floor"]
        print(f"| case ({r0['model']}, V={r0['vocab']}, {r0['tokens']} tokens, window "
              f"{r0['window']}/{r0['stride']}) | peak RSS above start | "
              "one window's fp32 logits | all logits of the text |")
        print("|---|---|---|---|")
        for case, r in mem.items():
            print(f"| {case} | {r['peak_above_start_mib']:.1f} MiB | "
                  f"{r['one_window_logits_mib']:.1f} MiB | {r['all_logits_mib']:.0f} MiB |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Peak memory of one training step of an HF Llama, with and without ``patch(model)``.

One forward+backward of a one-layer Llama (V = 32,768, hidden 256, 4 x 512 tokens, fp32) on
the CPU; each case runs in a fresh process and reports its peak RSS above a warm baseline
(a short step first, so allocator and library set-up are not counted). The logits alone of
this batch take 256 MiB. Cases: plain transformers, patched "ce" (fused, no logits),
patched "emo" (logits in recomputed token chunks), "emo" with ``fused=False`` (full logits).

Run: ``python benchmarks/patch_memory.py`` (Unix: uses ``resource``).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time

CASES = ("plain", "patched", "emo", "emo-full")


def run_case(mode: str) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tokenwise.training.patch import patch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=32768, hidden_size=256, intermediate_size=512,
                      num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, tie_word_embeddings=False,
                      attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg).train()
    if mode == "patched":
        patch(model)
    elif mode == "emo":
        patch(model, loss="emo")
    elif mode == "emo-full":
        patch(model, loss="emo", fused=False)
    ids = torch.randint(0, 32768, (4, 512))
    model(ids[:, :8], labels=ids[:, :8]).loss.backward()
    model.zero_grad(set_to_none=False)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    loss = model(ids, labels=ids).loss
    loss.backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"| {mode} | {peak - base:.0f} | {loss.item():.6f} | {seconds:.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=CASES, help="run one case in this process")
    args = parser.parse_args()
    if args.case:
        run_case(args.case)
        return
    print("| case | peak above warm baseline, MiB | loss | seconds |")
    print("|---|---|---|---|")
    for mode in CASES:
        subprocess.run([sys.executable, __file__, "--case", mode], check=True)


if __name__ == "__main__":
    main()

"""Peak memory of one training step of an HF causal LM, with and without ``patch(model)``.

One forward+backward on the CPU (fp32, 1 thread unless ``--threads``); each case runs in a
fresh process and reports its peak resident memory above the level just before the measured
step, after a short warm-up step (allocator and library set-up, weights and gradient buffers
are not counted). The peak is reset through /proc/self/clear_refs before the step, so what
loading the model took does not hide it, and glibc's mmap threshold is fixed at 128 KiB in
every case (MALLOC_MMAP_THRESHOLD_), so freed tensors leave resident memory instead of
staying in a grown heap.

Testbed (default): a random one-layer Llama (V = 32,768, hidden 256), 4 x 512 tokens; the
logits alone of this batch take 256 MiB. Cases: plain transformers, patched "ce" (fused, no
logits), patched "emo" (logits in recomputed token chunks), "emo" with ``fused=False``.

Real model (``--model gemma3-270m --batch 4 --seq 1024``): Gemma-3-270M, V = 262,144 (Q4 GGUF
weights dequantised to float32, not the bf16 original), token ids drawn uniformly with seed 0;
cases plain and patched, and on request "body": the decoder alone with a loss from its last
hidden states, the activations any head loss sits on. ``--checkpointing`` turns gradient
checkpointing on in every case. The logits alone take 4 GiB at 4 x 1,024 and plain peaks at
about 17 GiB, so before a plain real-model case the script waits (polling every 60 s) until
``--need-gb`` GB are available (half of that plus 1 GB before the others). Both losses are
printed; they must agree to 1e-4.

Run:
    .venv/bin/python benchmarks/patch_memory.py
    .venv/bin/python benchmarks/patch_memory.py --model gemma3-270m --batch 4 --seq 1024
    .venv/bin/python benchmarks/patch_memory.py --model gemma3-270m --batch 4 --seq 1024 \
        --cases body,plain,patched --checkpointing
(Linux: reads /proc/self/status and /proc/meminfo.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

TESTBED_CASES = ("plain", "patched", "emo", "emo-full")
REAL_CASES = ("plain", "patched")
ALL_CASES = (*TESTBED_CASES, "body")


def _kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def _model(name: str):
    import torch

    if name == "testbed":
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=32768, hidden_size=256, intermediate_size=512,
                          num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=512, tie_word_embeddings=False,
                          attn_implementation="sdpa")
        return LlamaForCausalLM(cfg)
    from tokenwise.models import load

    return load(name).hf_model


def run_case(mode: str, model_name: str, batch: int, seq: int, checkpointing: bool,
             threads: int) -> dict:
    import torch

    from tokenwise.training.patch import patch

    torch.set_num_threads(threads)
    model = _model(model_name).float().train()
    if checkpointing:
        model.config.use_cache = False
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if mode == "patched":
        patch(model)
    elif mode == "emo":
        patch(model, loss="emo")
    elif mode == "emo-full":
        patch(model, loss="emo", fused=False)
    vocab = model.config.vocab_size
    if model_name != "testbed":  # the testbed draws its ids right after its seeded init
        torch.manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq))

    def step(x: torch.Tensor) -> torch.Tensor:
        if mode == "body":  # the decoder alone, no head: what any loss sits on
            return model.model(input_ids=x).last_hidden_state.square().mean()
        return model(x, labels=x).loss

    step(ids[:, :8]).backward()
    for param in model.parameters():  # every gradient buffer exists before the measured step
        if param.grad is None:
            param.grad = torch.zeros_like(param)
    model.zero_grad(set_to_none=False)
    Path("/proc/self/clear_refs").write_text("5")
    before = _kib("VmRSS")
    start = time.perf_counter()
    loss = step(ids)
    loss.backward()
    seconds = time.perf_counter() - start
    peak = _kib("VmHWM")
    return {"case": mode, "model": model_name, "vocab": vocab, "batch": batch, "seq": seq,
            "checkpointing": checkpointing, "threads": threads,
            "peak_above_start_mib": (peak - before) / 1024, "rss_before_mib": before / 1024,
            "loss": loss.item(), "seconds": seconds,
            "logits_mib": batch * seq * vocab * 4 / 2**20}


def _available_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError("MemAvailable")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="testbed",
                        help="testbed (random one-layer Llama) or a model name, e.g. gemma3-270m")
    parser.add_argument("--batch", type=int, help="rows (testbed 4)")
    parser.add_argument("--seq", type=int, help="tokens per row (testbed 512)")
    parser.add_argument("--cases", help="comma-separated, from " + ", ".join(ALL_CASES)
                        + " (body: the decoder alone, loss from its last hidden states)")
    parser.add_argument("--checkpointing", action="store_true",
                        help="gradient checkpointing on in every case")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--need-gb", type=float, default=17.0,
                        help="available memory to wait for before a plain real-model case")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--case", choices=ALL_CASES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    batch = args.batch or 4
    seq = args.seq or 512
    if args.case:
        print(json.dumps(run_case(args.case, args.model, batch, seq, args.checkpointing,
                                  args.threads)), flush=True)
        return
    real = args.model != "testbed"
    cases = args.cases.split(",") if args.cases else list(REAL_CASES if real else TESTBED_CASES)
    results = []
    print(f"model {args.model}, {batch} x {seq} tokens, ids seed 0, {args.threads} thread(s), "
          f"fp32, gradient checkpointing {'on' if args.checkpointing else 'off'}")
    print("| case | peak above start, MiB | loss | seconds |")
    print("|---|---|---|---|")
    for mode in cases:
        # a real model's full-logits cases take about 17 GiB at 4 x 1,024, the others 9 GiB
        need = args.need_gb if mode in ("plain", "emo-full") else args.need_gb / 2 + 1
        while real and (avail := _available_gb()) < need:
            print(f"({avail:.1f} GB available, waiting for {need:g})", file=sys.stderr,
                  flush=True)
            time.sleep(60)
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
        cmd = [sys.executable, __file__, "--case", mode, "--model", args.model, "--batch",
               str(batch), "--seq", str(seq), "--threads", str(args.threads)]
        out = subprocess.run(cmd + ["--checkpointing"] * args.checkpointing, env=env,
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"| {mode} | {r['peak_above_start_mib']:.0f} | {r['loss']:.6f} | "
              f"{r['seconds']:.1f} |", flush=True)
    by_case = {r["case"]: r for r in results}
    if "plain" in by_case and "patched" in by_case:
        plain, patched = by_case["plain"], by_case["patched"]
        ratio = patched["peak_above_start_mib"] / plain["peak_above_start_mib"]
        diff = abs(patched["loss"] - plain["loss"])
        print(f"patched / plain peak: {ratio:.3f}x; |loss difference| {diff:.2e} "
              f"({'within' if diff <= 1e-4 else 'NOT within'} 1e-4); logits alone "
              f"{plain['logits_mib']:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps({"command": " ".join([Path(sys.executable).name,
                                                              *sys.argv]),
                                         "results": results}, indent=2))


if __name__ == "__main__":
    main()

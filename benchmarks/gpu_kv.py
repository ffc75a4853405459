"""KV presses and quantised caches on a device, checked against the same runs on the CPU.

For every press in ``tokenwise.kv.PRESSES`` (budget 25% of the prompt), two presses that
also compress while decoding (``every=8``), the question-aware chunked prefill (SnapKV,
expected attention and H2O with ``chunk_size=32`` and the question as a probe), and
``QuantizedKVCache`` at 2 and 4 bits (KIVI), this reads a few fixed testbed needle prompts
into the cache with ``tokenwise.kv.prefill`` on the device and decodes greedily (the
decode loop passes the true positions, as ``tokenwise.generate`` does), then does the same
on the CPU and prints, per method:

* ``tokens``: prompts whose generated tokens equal the CPU's, and the first step that
  differs otherwise;
* ``dlogit``: the largest absolute difference of the first step's logits (after prefill);
* ``cache_B``: the bytes the cache holds at the end (``cache_report``'s ``cache_bytes``,
  summed over the prompts), ``=`` when the CPU's cache holds as many (different counts mean
  the device evicted other tokens);
* ``ms/run``: wall time of one run over all prompts (median of ``--repeats``, after a warm
  run, ``torch.cuda.synchronize()`` around it), beside the full cache's (timed first and
  again last, in the same process) and their ratio.

Each method also goes once through ``tokenwise.generate(..., kv=...)`` on the device (the
user's path, a few tokens), whose tokens must start like the loop's. A method that raises
on the device is reported with its traceback and the others go on; the exit code is 1 if
any did (or 2 if the model could not even be loaded). Token mismatches are reported, not
failed on (``--strict`` fails on them too): a float32 run on a GPU sums in another order
than the CPU, so a near tie can flip a greedy token.

Every dtype in ``--dtypes`` is checked (default float32, the exact comparison, and float16,
what ``load("tw-reader", device="cuda")`` gives, the weights' own dtype) against the CPU in
the same dtype. Everything is offline: the built-in ``tw-reader`` and the testbed's needle
prompts ship in the repository.

Run::

    python3 benchmarks/gpu_kv.py --device cuda               # about 30 s on a GPU
    .venv/bin/python benchmarks/gpu_kv.py --device cpu --quick
    .venv/bin/python benchmarks/gpu_kv.py --device cpu --json /tmp/gpu_kv.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from tokenwise import kv
from tokenwise.generation.kv_report import cache_report
from tokenwise.models import load
from tokenwise.testbed.needle import NeedleWorld


@dataclass
class Prompt:
    """One needle prompt: its ids, the question's length and the needle line's positions."""

    text: str
    ids: list[int]
    question_tokens: int
    needle: list[int]


@dataclass
class Run:
    """What one method did on one device: per prompt, tokens, first logits and bytes."""

    tokens: list[list[int]] = field(default_factory=list)
    first: list[torch.Tensor] = field(default_factory=list)
    cache_bytes: int = 0
    full_bytes: int = 0


def prompts(lm: Any, distractors: list[int]) -> list[Prompt]:
    """Fixed needle prompts (seeded), with the question's length and the needle's span."""
    out = []
    for n in distractors:
        item = NeedleWorld(0).item(random.Random(n), n)
        ids = lm.encode(item.prompt, add_bos=True)
        n_ctx = len(lm.encode(item.context, add_bos=True))
        before = item.context.split(item.needle)[0]
        start = len(lm.encode(before, add_bos=True))
        end = len(lm.encode(before + item.needle, add_bos=True))
        out.append(Prompt(item.prompt, ids, len(ids) - n_ctx, list(range(start, end))))
    return out


def methods(p: Prompt) -> dict[str, Any]:
    """Every method for one prompt (the question-aware ones read its question's length, the
    oracle its needle's span); ``None`` is the full cache."""
    b = 0.25
    out: dict[str, Any] = {"full": None}
    for name in kv.PRESSES:
        out[name] = kv.get(name, budget=b, keep=p.needle) if name == "oracle" \
            else kv.get(name, budget=b)
    out["snapkv_every8"] = kv.SnapKV(b, every=8)
    out["h2o_every8"] = kv.H2O(b, every=8)
    q = p.question_tokens
    out["snapkv_qchunk32"] = kv.SnapKV(b, window=8, chunk_size=32, question_tokens=q)
    out["expected_attention_qchunk32"] = kv.ExpectedAttention(b, window=8, chunk_size=32,
                                                              question_tokens=q)
    out["h2o_qchunk32"] = kv.H2O(b, chunk_size=32, question_tokens=q)
    out["kivi2"] = kv.KIVI(2)
    out["kivi4"] = kv.KIVI(4)
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def full_bytes_of(cache: Any) -> int:
    """Bytes of a plain transformers cache's keys and values."""
    return sum(t.numel() * t.element_size() for layer in cache.layers
               for t in (layer.keys, layer.values) if t is not None)


@torch.inference_mode()
def greedy(lm: Any, p: Prompt, method: Any, new_tokens: int) -> tuple[list[int], torch.Tensor,
                                                                      int, int]:
    """Greedy decoding of ``new_tokens`` tokens (end tokens do not stop it): the tokens, the
    first step's logits (float32, on the CPU), and the cache's bytes and full-cache bytes at
    the end. The loop itself never waits for the device: tokens are read back once, after."""
    device = lm.device
    if method is None:
        out = lm.forward(torch.tensor([p.ids], device=device), use_cache=True, logits_to_keep=1)
        cache, last = out.cache, out.logits[:, -1]
    else:
        cache, last = kv.prefill(lm, p.ids, method)
    first = last[0].float()
    chosen = [last.argmax(-1)]
    pos = torch.full((1, 1), len(p.ids), dtype=torch.long, device=device)
    for _ in range(new_tokens - 1):
        out = lm.forward(chosen[-1].view(1, 1), cache=cache, position_ids=pos, use_cache=True)
        cache, pos = out.cache, pos + 1
        chosen.append(out.logits[:, -1].argmax(-1))
    tokens = torch.cat(chosen).tolist()
    if method is None:
        held = full = full_bytes_of(cache)
    else:
        report = cache_report(cache, len(p.ids))
        held, full = report["cache_bytes"], report["full_bytes"]
        if isinstance(cache, kv.CompressedCache):
            cache.close()
    return tokens, first.cpu(), held, full


def run(lm: Any, ps: list[Prompt], name: str, new_tokens: int) -> Run:
    r = Run()
    for p in ps:
        tokens, first, held, full = greedy(lm, p, methods(p)[name], new_tokens)
        r.tokens.append(tokens)
        r.first.append(first)
        r.cache_bytes += held
        r.full_bytes += full
    return r


def timed(lm: Any, ps: list[Prompt], name: str, new_tokens: int, repeats: int) -> float:
    """Median seconds of one run over all prompts (a warm run before, not counted)."""
    run(lm, ps, name, new_tokens)
    times = []
    for _ in range(repeats):
        sync(lm.device)
        t0 = time.perf_counter()
        run(lm, ps, name, new_tokens)
        sync(lm.device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def generate_check(lm: Any, p: Prompt, name: str, expect: list[int]) -> str | None:
    """``tokenwise.generate`` on the device: its tokens must start like the loop's (it stops
    at an end token); a message when they do not."""
    import tokenwise as tw

    method = methods(p)[name]
    g = tw.generate(lm, p.text, kv=method, max_new_tokens=4)
    got = [t.id for t in g.tokens]
    if got != expect[:len(got)]:
        return f"tokenwise.generate gave {got}, the loop {expect[:len(got)]}"
    return None


def compare(dev: Run, ref: Run) -> tuple[int, list[int], float]:
    """Prompts with equal tokens, the first differing step of the others, the largest
    first-step logit difference."""
    same, diverge = 0, []
    for a, b in zip(dev.tokens, ref.tokens, strict=True):
        if a == b:
            same += 1
        else:
            diverge.append(next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y))
    dlogit = max(float((a - b).abs().max()) for a, b in zip(dev.first, ref.first, strict=True))
    return same, diverge, dlogit


def check_dtype(dtype: str, device: torch.device, args: argparse.Namespace,
                results: dict[str, Any]) -> tuple[int, int]:
    """Every method in ``dtype`` on ``device`` against the CPU; returns (crashes, mismatches)."""
    print(f"\n## {dtype} on {device} vs cpu  (model {args.model}, {args.new_tokens} new tokens "
          f"per prompt, {args.repeats} timed repeats)")
    try:
        lm = load(args.model, device=str(device), dtype=dtype)
        ref_lm = lm if device.type == "cpu" else load(args.model, device="cpu", dtype=dtype)
    except Exception:  # report whatever the load raised, then stop
        traceback.print_exc(file=sys.stdout)
        results[dtype] = {"load_error": traceback.format_exc()}
        return 1, 0
    ps = prompts(ref_lm, args.distractors)
    print("prompts: " + ", ".join(f"{len(p.ids)} tokens (question {p.question_tokens})"
                                  for p in ps))
    names = list(methods(ps[0]))
    if args.methods:
        names = ["full"] + [n for n in names if n in args.methods and n != "full"]
    header = (f"{'method':<28} {'tokens':<14} {'dlogit':>9} {'cache_B':>10} {'':1} "
              f"{'full_B':>10} {'ms/run':>9} {'x_full':>7}")
    print(header)
    crashes = mismatches = 0
    rows: dict[str, Any] = {}
    full_ms = None
    for name in names:
        row: dict[str, Any] = {}
        try:
            ref = run(ref_lm, ps, name, args.new_tokens)
        except Exception:
            print(f"{name:<28} CRASHED on the cpu (reference)")
            traceback.print_exc(file=sys.stdout)
            crashes += 1
            rows[name] = {"crash": "cpu", "traceback": traceback.format_exc()}
            continue
        try:
            dev = run(lm, ps, name, args.new_tokens)
            msg = None if name == "full" else generate_check(lm, ps[0], name, dev.tokens[0])
            sec = timed(lm, ps, name, args.new_tokens, args.repeats)
        except Exception:
            print(f"{name:<28} CRASHED on {device}")
            traceback.print_exc(file=sys.stdout)
            crashes += 1
            rows[name] = {"crash": str(device), "traceback": traceback.format_exc()}
            continue
        same, diverge, dlogit = compare(dev, ref)
        if name == "full":
            full_ms = sec * 1e3
        if same < len(ps):
            mismatches += 1
        tok = f"{same}/{len(ps)}" + (f" @{min(diverge)}" if diverge else "")
        eq = "=" if dev.cache_bytes == ref.cache_bytes else "!"
        ratio = f"{sec * 1e3 / full_ms:.2f}" if full_ms else "-"
        print(f"{name:<28} {tok:<14} {dlogit:>9.2e} {dev.cache_bytes:>10} {eq:1} "
              f"{dev.full_bytes:>10} {sec * 1e3:>9.1f} {ratio:>7}")
        if msg:
            print(f"{'':<28} {msg}")
            mismatches += 1
        if eq == "!":
            print(f"{'':<28} cpu cache holds {ref.cache_bytes} bytes")
        row.update(tokens_match=same, prompts=len(ps), first_divergence=diverge,
                   max_abs_dlogit=dlogit, cache_bytes=dev.cache_bytes,
                   cpu_cache_bytes=ref.cache_bytes, full_bytes=dev.full_bytes,
                   ms_per_run=sec * 1e3, generate_check=msg)
        rows[name] = row
    if full_ms is not None and "full" in rows:
        again = timed(lm, ps, "full", args.new_tokens, args.repeats) * 1e3
        print(f"{'full (timed again, last)':<28} {'':<14} {'':>9} {'':>10} {'':1} {'':>10} "
              f"{again:>9.1f} {again / full_ms:>7.2f}")
        rows["full"]["ms_per_run_last"] = again
    results[dtype] = {"device": str(device), "rows": rows,
                      "prompts": [len(p.ids) for p in ps]}
    return crashes, mismatches


def _fp32_matmul() -> str:
    """How CUDA float32 matmuls run ("ieee", or "tf32" when allowed: then float32 logits
    differ more from the CPU's); "?" if this torch says neither way."""
    try:
        precision = getattr(torch.backends.cuda.matmul, "fp32_precision", None)
        if isinstance(precision, str) and precision != "none":
            return precision
        return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
    except Exception:
        return "?"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="where to run the checked runs: cpu, cuda or cuda:N (the reference "
                         "always runs on the cpu)")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float16"],
                    help="model dtypes to check, each against the cpu in the same dtype")
    ap.add_argument("--model", default="tw-reader", help="a built-in model (offline)")
    ap.add_argument("--quick", action="store_true",
                    help="one prompt, 6 new tokens, 1 timed repeat, float32 only")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per method (median)")
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--distractors", type=int, nargs="+", default=[7, 12, 15],
                    help="one needle prompt per count of distractor lines (121, 189, 230 "
                         "tokens for tw-reader)")
    ap.add_argument("--methods", nargs="+", help="only these methods (full always runs)")
    ap.add_argument("--strict", action="store_true", help="also fail on token mismatches")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    if args.quick:
        args.distractors, args.new_tokens, args.repeats = args.distractors[:1], 6, 1
        args.dtypes = args.dtypes[:1]
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"--device {args.device}: no CUDA device here", file=sys.stdout)
        return 2
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)}, float32 matmul {_fp32_matmul()})"
             if device.type == "cuda" else "")
          + f", cpu threads {torch.get_num_threads()}")
    warnings.simplefilter("ignore")  # the budget-covers-everything notes of short prompts
    t0 = time.perf_counter()
    results: dict[str, Any] = {"device": str(device), "args": vars(args)}
    crashes = mismatches = 0
    for dtype in args.dtypes:
        c, m = check_dtype(dtype, device, args, results)
        crashes, mismatches = crashes + c, mismatches + m
    took = time.perf_counter() - t0
    print(f"\n{crashes} crash(es), {mismatches} method(s) with a token mismatch; "
          f"{took:.1f} s in all")
    results.update(crashes=crashes, mismatches=mismatches, seconds=took)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    return 1 if crashes or (args.strict and mismatches) else 0


if __name__ == "__main__":
    sys.exit(main())

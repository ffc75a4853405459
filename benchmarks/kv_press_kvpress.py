"""The kvpress peer (NVIDIA kvpress 0.5.5) on the prompts and budgets of ``kv_press.py real``.

Runs in its own virtual environment (kvpress pins its own transformers), on the same
SmolLM2-135M-Instruct weights (the Q4 GGUF dequantised by tokenwise, read from its converted
folder) and the same token ids (``kv_press_real_items.json``, written by
``kv_press.py real``). Each press compresses as kvpress does: after the whole pass, through
its forward hooks. Question-agnostic: the context is compressed, then the question is read
(kvpress's pipeline); question-aware: context and question are read and compressed together.

``probe`` measures one method's peak process RSS in a fresh process (ru_maxrss minus the value
after loading and a warm-up pass), as ``kv_press.py memory`` does for ours.

Its quantised cache is transformers' ``QuantizedCache`` (quanto backend, 2 bits), the one
kvpress's pipeline accepts: it quantises the whole prompt at prefill (no full-precision window
for the prompt) and keys along transformers' default axis. Its bytes are counted from the
quanto tensors (packed codes + float32 scales and shifts) against fp16 of the same elements.

Setting up the venv (torch first, from the local CPU wheel; any other torch spec pulls GBs
of CUDA packages; kvpress must not upgrade it, check with ``pip install --dry-run``)::

    python3 -m venv .venv-kvpress
    .venv-kvpress/bin/pip install torch==2.13.0
    .venv-kvpress/bin/pip install kvpress==0.5.5 optimum-quanto==0.2.7

Commands::

    .venv-kvpress/bin/python benchmarks/kv_press_kvpress.py accuracy \\
        --items /work/notes/results/kv_press_real_items.json --out /work/notes/results/kv_press
    .venv-kvpress/bin/python benchmarks/kv_press_kvpress.py memory \\
        --items /work/notes/results/kv_press_memory_item.json --index 0 \\
        --out /work/notes/results/kv_press
"""

from __future__ import annotations

import argparse
import glob
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache


def model_dir() -> str:
    for path in glob.glob(str(Path.home() / ".cache/tokenwise/converted/v1/*/config.json")):
        if json.loads(Path(path).read_text()).get("model_type") == "llama":
            return str(Path(path).parent)
    raise SystemExit("no converted SmolLM2 folder under ~/.cache/tokenwise/converted")


def load():
    path = model_dir()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                 attn_implementation="sdpa").eval()
    return model, AutoTokenizer.from_pretrained(path)


def make_press(name: str, keep: float):
    from kvpress import ExpectedAttentionPress, KnormPress, SnapKVPress, StreamingLLMPress

    ratio = 1.0 - keep  # kvpress's compression_ratio is the share removed
    return {"snapkv": lambda: SnapKVPress(compression_ratio=ratio, window_size=32),
            "expected_attention": lambda: ExpectedAttentionPress(compression_ratio=ratio),
            "streaming": lambda: StreamingLLMPress(compression_ratio=ratio, n_sink=4),
            "key_norm": lambda: KnormPress(compression_ratio=ratio)}[name]()


def quant_cache(model):
    from transformers import QuantizedCache

    return QuantizedCache("quanto", model.config, nbits=2, q_group_size=32, residual_length=32)


def _flat_bytes(t) -> int:
    if hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(_flat_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def cache_bytes(cache) -> tuple[int, int]:
    """(stored bytes, fp16 bytes of the same elements) of a DynamicCache or QuantizedCache."""
    stored = fp16 = 0
    for lay in cache.layers:
        for name in ("_quantized_keys", "_quantized_values"):
            q = getattr(lay, name, None)
            if q is not None:
                stored += _flat_bytes(q)
                fp16 += q.numel() * 2
        for t in (lay.keys, lay.values):
            if isinstance(t, torch.Tensor) and t.numel():
                stored += t.numel() * t.element_size()
                fp16 += t.numel() * 2
    return stored, fp16


def answer(model, tok, ids: list[int], n_ctx: int, press, aware: bool, max_new: int = 6,
           quant: bool = False):
    # quanto's tensors fail under inference_mode ("Inference tensors do not track version
    # counter"), so the quantised cache runs under no_grad
    ctx = torch.no_grad() if quant else torch.inference_mode()
    with ctx:
        return _answer(model, tok, ids, n_ctx, press, aware, max_new, quant)


def _answer(model, tok, ids, n_ctx, press, aware, max_new, quant):
    cache = quant_cache(model) if quant else DynamicCache()
    first = ids if aware else ids[:n_ctx]
    with press(model) if press is not None else _null():
        out = model.model(input_ids=torch.tensor([first]), past_key_values=cache)
    hidden = out.last_hidden_state[:, -1:]
    if not aware:
        out = model.model(input_ids=torch.tensor([ids[n_ctx:]]), past_key_values=cache,
                          position_ids=torch.arange(n_ctx, len(ids))[None])
        hidden = out.last_hidden_state[:, -1:]
    kept = cache.get_seq_length()
    nbytes = cache_bytes(cache)
    toks = []
    nxt = int(model.lm_head(hidden)[0, -1].argmax())
    for step in range(max_new):
        if nxt == tok.eos_token_id:
            break
        toks.append(nxt)
        if step == max_new - 1:
            break
        out = model(input_ids=torch.tensor([[nxt]]), past_key_values=cache,
                    position_ids=torch.tensor([[len(ids) + step]]))
        nxt = int(out.logits[0, -1].argmax())
    answer.last_bytes = nbytes  # (stored, fp16) after the prompt
    return tok.decode(toks, skip_special_tokens=True).strip(), kept


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def part_accuracy(args: argparse.Namespace) -> None:
    model, tok = load()
    items = json.loads(Path(args.items).read_text())[:args.limit]
    rows: dict[str, dict[str, list]] = {}

    def run(label: str, it: dict, press, aware: bool, quant: bool = False) -> None:
        t0 = time.perf_counter()
        text, kept = answer(model, tok, it["ids"], it["n_ctx"], press, aware, quant=quant)
        r = rows.setdefault(label, {"correct": [], "seconds": [], "kept": [], "bytes": [],
                                    "fp16": []})
        r["correct"].append(int(it["answer"] in text))
        r["seconds"].append(time.perf_counter() - t0)
        r["kept"].append(kept)
        stored, fp16 = answer.last_bytes
        r["bytes"].append(stored)
        r["fp16"].append(fp16)

    for n, it in enumerate(items):
        t0 = time.time()
        run("full@1.0", it, None, True)
        for name in args.presses:
            for keep in args.keep:
                for aware in (True, False):
                    if name != "snapkv" and not aware:
                        continue
                    label = f"kvpress_{name}{'' if aware else '_agnostic'}@{keep}"
                    run(label, it, make_press(name, keep), aware)
        if args.quant:
            run("quanto2@g32r32", it, None, True, quant=True)
        print(f"item {n + 1}/{len(items)} {time.time() - t0:.1f}s", flush=True)
    full = rows["full@1.0"]
    summary = {}
    for k, v in rows.items():
        summary[k] = {"n": len(v["correct"]), "accuracy": sum(v["correct"]) / len(v["correct"]),
                      "correct": v["correct"],
                      "seconds_mean": sum(v["seconds"]) / len(v["seconds"]),
                      "kept_tokens_mean": sum(v["kept"]) / len(v["kept"]),
                      # stored bytes vs the full fp32 cache, and vs fp16 of the same elements
                      "bytes_vs_full": sum(b / f for b, f in zip(v["bytes"], full["bytes"],
                                                                 strict=True)) / len(v["bytes"]),
                      "bytes_vs_fp16": sum(b / f for b, f in zip(v["bytes"], v["fp16"],
                                                                 strict=True)) / len(v["bytes"])}
    out = Path(args.out)
    path = out.with_name(f"{out.name}_kvpress.json")
    path.write_text(json.dumps({"kvpress": "0.5.5", "items": len(items), "keep": args.keep,
                                "summary": summary}, indent=1))
    print(f"wrote {path}")


def probe(method: str, items_path: str, index: int) -> dict:
    model, tok = load()
    it = json.loads(Path(items_path).read_text())[index]
    with torch.no_grad():
        model.model(input_ids=torch.tensor([it["ids"][:8]]), past_key_values=DynamicCache())
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.time()
    press = make_press("snapkv", 0.25) if method == "snapkv25" else None
    text, kept = answer(model, tok, it["ids"], it["n_ctx"], press, True,
                        quant=method == "quanto2")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stored, fp16 = answer.last_bytes
    return {"method": f"kvpress_{method}", "prompt_tokens": len(it["ids"]),
            "answer_ok": it["answer"] in text, "kept_tokens": kept,
            "cache_bytes_after_prompt": stored, "cache_fp16_bytes": fp16,
            "peak_rss_over_start_mb": (peak - base) / 1024, "seconds": time.time() - t0}


def part_memory(args: argparse.Namespace) -> None:
    rows = []
    for method in ("full", "snapkv25", "quanto2"):
        cmd = [sys.executable, __file__, "probe", "--method", method, "--items", args.items,
               "--index", str(args.index)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    out = Path(args.out)
    path = out.with_name(f"{out.name}_kvpress_memory.json")
    path.write_text(json.dumps({"kvpress": "0.5.5", "rows": rows}, indent=1))
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=["accuracy", "memory", "probe"])
    parser.add_argument("--items", default="benchmarks/results/kv_press_real_items.json")
    parser.add_argument("--out", default="benchmarks/results/kv_press")
    parser.add_argument("--keep", type=float, nargs="+", default=[0.25])
    parser.add_argument("--presses", nargs="+",
                        default=["snapkv", "expected_attention", "streaming"])
    parser.add_argument("--limit", type=int, default=None, help="first N items only")
    parser.add_argument("--no-quant", dest="quant", action="store_false",
                        help="skip transformers' 2-bit QuantizedCache (quanto)")
    parser.add_argument("--method", default="full")
    parser.add_argument("--index", type=int, default=-1)
    args = parser.parse_args()
    if args.part == "probe":
        print(json.dumps(probe(args.method, args.items, args.index)))
        return
    {"accuracy": part_accuracy, "memory": part_memory}[args.part](args)


if __name__ == "__main__":
    main()

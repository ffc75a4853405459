"""The kvpress peer (NVIDIA kvpress 0.5.5) on the prompts and budgets of ``kv_press.py real``.

Runs in its own virtual environment (kvpress pins its own transformers), on the same
SmolLM2-135M-Instruct weights (the Q4 GGUF dequantised by tokenwise, read from its converted
folder) and the same token ids (``kv_press_real_items.json``, written by
``kv_press.py real``). Each press compresses as kvpress does: after the whole pass, through
its forward hooks. Question-agnostic: the context is compressed, then the question is read
(kvpress's pipeline); question-aware: context and question are read and compressed together.

``probe`` measures one method's peak process RSS in a fresh process (ru_maxrss minus the value
after loading and a warm-up pass), as ``kv_press.py memory`` does for ours.

Commands::

    .venv-kvpress/bin/python benchmarks/kv_press_kvpress.py accuracy \\
        --items /work/notes/results/kv_press_real_items.json --out /work/notes/results/kv_press
    .venv-kvpress/bin/python benchmarks/kv_press_kvpress.py memory --length 2000 \\
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


@torch.inference_mode()
def answer(model, tok, ids: list[int], n_ctx: int, press, aware: bool, max_new: int = 6):
    cache = DynamicCache()
    first = ids if aware else ids[:n_ctx]
    with press(model) if press is not None else _null():
        out = model.model(input_ids=torch.tensor([first]), past_key_values=cache)
    hidden = out.last_hidden_state[:, -1:]
    if not aware:
        out = model.model(input_ids=torch.tensor([ids[n_ctx:]]), past_key_values=cache,
                          position_ids=torch.arange(n_ctx, len(ids))[None])
        hidden = out.last_hidden_state[:, -1:]
    kept = cache.get_seq_length()
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
    return tok.decode(toks, skip_special_tokens=True).strip(), kept


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def part_accuracy(args: argparse.Namespace) -> None:
    model, tok = load()
    items = json.loads(Path(args.items).read_text())[:args.limit]
    rows: dict[str, list[int]] = {}
    for n, it in enumerate(items):
        t0 = time.time()
        text, _ = answer(model, tok, it["ids"], it["n_ctx"], None, True)
        rows.setdefault("full@1.0", []).append(int(it["answer"] in text))
        for name in args.presses:
            for keep in args.keep:
                for aware in (True, False):
                    if name != "snapkv" and not aware:
                        continue
                    label = f"kvpress_{name}{'' if aware else '_agnostic'}@{keep}"
                    text, _ = answer(model, tok, it["ids"], it["n_ctx"], make_press(name, keep),
                                     aware)
                    rows.setdefault(label, []).append(int(it["answer"] in text))
        print(f"item {n + 1}/{len(items)} {time.time() - t0:.1f}s", flush=True)
    summary = {k: {"n": len(v), "accuracy": sum(v) / len(v), "correct": v}
               for k, v in rows.items()}
    out = Path(args.out)
    path = out.with_name(f"{out.name}_kvpress.json")
    path.write_text(json.dumps({"kvpress": "0.5.5", "items": len(items), "keep": args.keep,
                                "summary": summary}, indent=1))
    print(f"wrote {path}")


@torch.inference_mode()
def probe(method: str, items_path: str, index: int) -> dict:
    model, tok = load()
    it = json.loads(Path(items_path).read_text())[index]
    model.model(input_ids=torch.tensor([it["ids"][:8]]), past_key_values=DynamicCache())
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.time()
    press = None if method == "full" else make_press("snapkv", 0.25)
    text, kept = answer(model, tok, it["ids"], it["n_ctx"], press, True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"method": f"kvpress_{method}", "prompt_tokens": len(it["ids"]),
            "answer_ok": it["answer"] in text, "kept_tokens": kept,
            "peak_rss_over_start_mb": (peak - base) / 1024, "seconds": time.time() - t0}


def part_memory(args: argparse.Namespace) -> None:
    rows = []
    for method in ("full", "snapkv25"):
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
    parser.add_argument("--method", default="full")
    parser.add_argument("--index", type=int, default=-1)
    args = parser.parse_args()
    if args.part == "probe":
        print(json.dumps(probe(args.method, args.items, args.index)))
        return
    {"accuracy": part_accuracy, "memory": part_memory}[args.part](args)


if __name__ == "__main__":
    main()

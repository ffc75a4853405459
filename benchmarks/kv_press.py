"""KV-cache compression: needle QA accuracy vs cache budget, needle recall, true bytes, memory.

What it measures (``tokenwise.kv``):

* ``testbed``: tw-reader on the testbed's needle contexts (1-15 distractors). For every press
  and budget (10/25/50/75% of the prompt and fixed token budgets): reader accuracy,
  retention vs the full cache with a paired bootstrap interval, and the recall of the needle
  line's tokens in the kept cache (mean over layers and KV heads; independent of the reader).
  SnapKV is run question-aware (the window holds the question) and question-agnostic (the
  context is compressed before the question is read). KIVI 2/4/8 and SAQ: accuracy and true
  bytes (packed codes + fp16 minima/scales + the full-precision tail) vs fp16.
* ``real``: the same on SmolLM2-135M-Instruct (Q4 GGUF weights dequantised) with real English
  text (the licence texts in /usr/share/common-licenses) of 1k-4k tokens and a planted needle.
* ``memory``: peak process RSS (one subprocess per method, ru_maxrss minus the RSS after
  loading) and the cache's own peak bytes, for one long SmolLM2 prompt: full cache vs presses
  in one pass vs chunked prefill, and KIVI.
* ``chunked``: accuracy, needle recall and time of the memory part's eviction settings
  (SnapKV window 32 in one pass and with 256-token chunked prefill, StreamingLLM chunked) on
  the real part's items, so the memory figures have an accuracy beside them; plus the
  question-aware chunked prefill (``kv.prefill(..., question=...)`` with a chunked press:
  each chunk is compressed by a probe of the question read after it) for SnapKV and
  expected attention, whose budget is 25% of the context with the question kept on top.
  ``--methods`` runs a subset.
* ``speed``: a pilot of decode time, ours / full cache ratios from interleaved repeats (the
  lead re-runs timings on a quiet machine).

Each prompt is read once into a cache that keeps everything and captures every query; each
press is then applied to a copy (``CompressedCache.compressed_copy``, tested equal to reading
the prompt with that press) and decoded greedily.

Commands (the run behind the figures)::

    .venv/bin/python benchmarks/kv_press.py testbed --out /work/notes/results/kv_press
    .venv/bin/python benchmarks/kv_press.py real --out /work/notes/results/kv_press
    .venv/bin/python benchmarks/kv_press.py memory --out /work/notes/results/kv_press
    .venv/bin/python benchmarks/kv_press.py speed --out /work/notes/results/kv_press
    .venv/bin/python benchmarks/kv_press.py chunked --out /work/notes/results/kv_press
    # question-aware chunked prefill (reads <out>_real_items.json, as the chunked part does)
    .venv/bin/python benchmarks/kv_press.py chunked --out /work/notes/results/kv_press_q
    .venv/bin/python benchmarks/kv_press.py memory --methods snapkv25_chunk256 \
        snapkv25_chunk256_q --out /work/notes/results/kv_press_q
    # Gemma-3-270M (hybrid: sliding-window layers keep their window, full ones are pressed)
    .venv/bin/python benchmarks/kv_press.py items --model gemma3-270m --per-length 4 \
        --out /work/notes/results/kv_gemma
    .venv/bin/python benchmarks/kv_press.py chunked --model gemma3-270m --methods full \
        snapkv25_w32 snapkv25_w32_chunk256 snapkv25_w32_chunk256_q \
        --out /work/notes/results/kv_gemma
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

RATIOS = (0.1, 0.25, 0.5, 0.75)
LICENCES = ("GPL-3", "GFDL-1.3", "Apache-2.0", "MPL-2.0", "LGPL-2.1", "Artistic")
NAMES = ("Elena", "Marcus", "Priya", "Tobias", "Ingrid", "Kenji", "Amara", "Lucas", "Sofia",
         "Dmitri", "Hana", "Oskar", "Leila", "Mateo", "Nadia", "Rafael")


def presses(window: int, token_budgets: tuple[int, ...], needle: list[int],
            heavy_budgets: tuple[Any, ...] | None = None,
            ratios: tuple[float, ...] = RATIOS) -> list[tuple[str, Any, bool]]:
    """``(label, press, agnostic)`` for every press and budget."""
    from tokenwise import kv

    budgets: list[Any] = [*ratios, *token_budgets]
    out: list[tuple[str, Any, bool]] = []
    for b in budgets:
        out += [
            ("streaming", kv.StreamingLLM(b, sinks=4), False),
            ("snapkv", kv.SnapKV(b, window=window), False),
            ("snapkv_agnostic", kv.SnapKV(b, window=window, question_aware=False), True),
            ("expected_attention", kv.ExpectedAttention(b, window=window), False),
            ("key_norm", kv.KeyNorm(b), False),
            ("critic", kv.Critic(b, window=window), False),
            ("random", kv.RandomPress(b, seed=0), False),
            ("oracle", kv.Oracle(b, keep=needle), False),
        ]
        if heavy_budgets is None or b in heavy_budgets:
            out.append(("h2o", kv.H2O(b, recent=8), False))
    return out


def quant_specs(group: int, residual: int) -> list[tuple[str, Any]]:
    from tokenwise import kv

    return [("kivi2", kv.KIVI(2, group, residual)), ("kivi4", kv.KIVI(4, group, residual)),
            ("kivi8", kv.KIVI(8, group, residual)),
            ("saq_8_4_2", kv.SAQ((8, 4, 2), (2 * group, 6 * group), group, residual))]


@torch.inference_mode()
def greedy(lm: Any, cache: Any, logits: torch.Tensor, start: int, max_new: int,
           stop: str = "\n") -> str:
    """Greedy answer from ``logits`` on, decoding into ``cache`` at true positions."""
    toks: list[int] = []
    nxt = int(logits[0].argmax())
    for step in range(max_new):
        if nxt in lm.end_token_ids:
            break
        toks.append(nxt)
        text = lm.decode(toks, skip_special_tokens=True)
        if stop and stop in text.lstrip():
            break
        if step == max_new - 1:
            break
        out = lm.forward(torch.tensor([[nxt]]), None, cache=cache,
                         position_ids=torch.tensor([[start + step]]), use_cache=True)
        nxt = int(out.logits[0, -1].argmax())
    text = lm.decode(toks, skip_special_tokens=True).strip()
    return text.split(stop)[0].strip() if stop else text


def _kept(pos: torch.Tensor, needle: list[int]) -> float:
    want = torch.tensor(needle, device=pos.device)
    return float(torch.isin(want, pos).float().mean())


def needle_recall(cache: Any, needle: list[int]) -> float:
    """Share of the needle's (layer, head, position) triples kept, over the pressed layers
    (sliding-window layers of a hybrid model keep the model's own window, not pressed)."""
    vals = [_kept(layer.positions[0, h], needle) for layer in cache.layers
            if not getattr(layer, "is_sliding", False)
            for h in range(layer.positions.shape[1])]
    return sum(vals) / len(vals)


def run_items(lm: Any, items: list[dict], window: int, token_budgets: tuple[int, ...],
              check, max_new: int, group: int, residual: int, log,
              heavy_budgets: tuple[Any, ...] | None = None,
              ratios: tuple[float, ...] = RATIOS, on_item=None) -> dict:
    """Every item through the full cache, every press/budget and every quantised cache."""
    from tokenwise import kv

    rows: dict[str, dict[str, Any]] = {}
    for n, it in enumerate(items):
        ids, n_ctx, needle = it["ids"], it["n_ctx"], it["needle"]
        t0 = time.time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            source, last = kv.prefill(lm, ids, kv.H2O(1.0))  # keeps all, every query
        full = source.compressed_copy(kv.KeyNorm(1.0))
        full_bytes = full.nbytes() - sum(lay.positions.numel() * 8 for lay in full.layers)
        ans = greedy(lm, full, last, len(ids), max_new)
        _add(rows, "full", "1.0", check(ans, it), 1.0, full_bytes, full_bytes)
        q_ids = torch.tensor([ids[n_ctx:]])
        for label, press, agnostic in presses(window, token_budgets, needle, heavy_budgets,
                                              ratios):
            if agnostic:
                cache = source.compressed_copy(press, upto=n_ctx)
                rec = needle_recall(cache, needle)
                cache.hold = True
                out = lm.forward(q_ids, None, cache=cache,
                                 position_ids=torch.arange(n_ctx, len(ids))[None],
                                 use_cache=True, logits_to_keep=1)
                cache.hold = False
                logits = out.logits[:, -1]
            else:
                cache = source.compressed_copy(press)
                rec = needle_recall(cache, needle)
                logits = last
            kv_bytes = sum(lay.keys.numel() * lay.keys.element_size() * 2
                           for lay in cache.layers)
            ans = greedy(lm, cache, logits, len(ids), max_new)
            budget = press.budget if isinstance(press.budget, float) else f"{press.budget}tok"
            _add(rows, label, str(budget), check(ans, it), rec, kv_bytes, full_bytes)
        for label, spec in quant_specs(group, residual):
            qcache = kv.QuantizedKVCache(spec, lm)
            for i, layer in enumerate(full.layers):
                n_prompt = len(ids)
                qcache.update(layer.keys[:, :, :n_prompt], layer.values[:, :, :n_prompt], i)
            stored = qcache.nbytes()
            fp16 = qcache.fp16_bytes()
            ans = greedy(lm, qcache, last, len(ids), max_new)
            _add(rows, label, f"g{group}r{residual}", check(ans, it), 1.0, stored, full_bytes,
                 fp16=fp16)
        log(f"item {n + 1}/{len(items)} ({len(ids)} tokens) {time.time() - t0:.1f}s "
            f"full={rows['full']['1.0']['correct'][-1]}")
        if on_item is not None:
            on_item(rows, n + 1)
    return rows


def _add(rows: dict, label: str, budget: str, ok: bool, rec: float, nbytes: int,
         full_bytes: int, fp16: int | None = None) -> None:
    r = rows.setdefault(label, {}).setdefault(budget, {"correct": [], "recall": [],
                                                       "bytes_ratio": [], "fp16_ratio": []})
    r["correct"].append(int(ok))
    r["recall"].append(rec)
    r["bytes_ratio"].append(nbytes / full_bytes)
    if fp16 is not None:
        r["fp16_ratio"].append(nbytes / fp16)


def summarise(rows: dict, seed: int, n_boot: int = 2000) -> dict:
    """Accuracy, retention (paired bootstrap 95% interval), recall and bytes per config."""
    base = torch.tensor(rows["full"]["1.0"]["correct"], dtype=torch.float)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(base), (n_boot, len(base)), generator=gen)
    out: dict[str, Any] = {}
    for label, per in rows.items():
        for budget, r in per.items():
            c = torch.tensor(r["correct"], dtype=torch.float)
            ratio = float(c.mean() / base.mean()) if base.mean() > 0 else float("nan")
            denom = base[idx].mean(1)
            boot = c[idx].mean(1)[denom > 0] / denom[denom > 0]  # resamples with a correct base
            lo, hi = (torch.quantile(boot, torch.tensor([0.025, 0.975])).tolist()
                      if boot.numel() else (float("nan"), float("nan")))
            out[f"{label}@{budget}"] = {
                "press": label, "budget": budget, "n": len(c), "accuracy": float(c.mean()),
                "retention": ratio, "retention_ci95": [lo, hi],
                "needle_recall": sum(r["recall"]) / len(r["recall"]),
                "bytes_vs_full": sum(r["bytes_ratio"]) / len(r["bytes_ratio"]),
                "bytes_vs_fp16": (sum(r["fp16_ratio"]) / len(r["fp16_ratio"])
                                  if r["fp16_ratio"] else None),
            }
    return out


def testbed_items(lm: Any, per_count: int, seed: int) -> list[dict]:
    from tokenwise.testbed.needle import DISTRACTOR_COUNTS, NeedleWorld

    world = NeedleWorld(0)
    rng = random.Random(f"kv-press/{seed}")
    items = []
    for count in DISTRACTOR_COUNTS:
        for _ in range(per_count):
            it = world.item(rng, count)
            start = it.context.index(it.needle)
            before = lm.encode(it.context[:start], add_bos=True)
            line = lm.encode(it.needle, add_bos=False)
            after = lm.encode(it.context[start + len(it.needle):], add_bos=False)
            question = lm.encode(it.prompt[len(it.context):], add_bos=False)
            ids = before + line + after + question
            items.append({"ids": ids, "n_ctx": len(before + line + after),
                          "needle": list(range(len(before), len(before) + len(line))),
                          "answer": it.answer, "distractors": count})
    return items


def english_text() -> str:
    parts = []
    for name in LICENCES:
        path = Path("/usr/share/common-licenses") / name
        if path.exists():
            parts.append(path.read_text(errors="ignore"))
    if not parts:
        raise SystemExit("no English text found under /usr/share/common-licenses")
    text = "\n".join(parts)
    return "\n".join(line.strip() for line in text.splitlines())


def real_items(lm: Any, lengths: tuple[int, ...], per_length: int, seed: int,
               chat: bool = True) -> list[dict]:
    """Prompts of text of about ``length`` tokens with a planted needle, then a question:
    chat prompts (SmolLM2-Instruct) or, with ``chat=False`` (a base model such as
    Gemma-3-270M), the completion form ``...document...\n\nQuestion: What is the secret
    number of NAME?\nAnswer: The secret number of NAME is`` after the BOS token. The same
    seed draws the same names, numbers, passages and depths for both forms."""
    tok = lm.tokenizer
    rng = random.Random(f"kv-press-real/{seed}")
    text = english_text()
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    para_ids = [tok(p + "\n\n", add_special_tokens=False)["input_ids"] for p in paragraphs]
    if chat:
        rendered = tok.apply_chat_template([{"role": "user", "content": "SPLITHERE"}],
                                           tokenize=False, add_generation_prompt=True)
        pre, post = rendered.split("SPLITHERE")
        pre_ids = tok(pre + "Read the document, then answer the question.\n\n",
                      add_special_tokens=False)["input_ids"]
    else:
        pre_ids = [tok.bos_token_id] + tok(
            "Read the document, then answer the question.\n\n",
            add_special_tokens=False)["input_ids"]
    items = []
    for length in lengths:
        for _ in range(per_length):
            name = rng.choice(NAMES)
            code = str(rng.randint(1000, 9999))
            needle = f"The secret number of {name} is {code}.\n\n"
            start = rng.randrange(len(paragraphs))
            body: list[list[int]] = []
            n = 0
            i = start
            while n < length:
                body.append(para_ids[i % len(paragraphs)])
                n += len(body[-1])
                i += 1
            at = rng.randrange(1, max(2, len(body) - 1))
            needle_ids = tok(needle, add_special_tokens=False)["input_ids"]
            before = pre_ids + [t for p in body[:at] for t in p]
            after = [t for p in body[at:] for t in p]
            # the answer's opening is part of the prompt, so the number comes first
            q_text = (f"Question: What is the secret number of {name}? Answer with the "
                      f"number only.{post}The secret number of {name} is" if chat else
                      f"Question: What is the secret number of {name}?\nAnswer: The secret "
                      f"number of {name} is")
            question = tok(q_text, add_special_tokens=False)["input_ids"]
            ids = before + needle_ids + after + question
            items.append({"ids": ids, "n_ctx": len(before) + len(needle_ids) + len(after),
                          "needle": list(range(len(before), len(before) + len(needle_ids))),
                          "answer": code, "length": length,
                          "depth": round(at / len(body), 2)})
    return items


def items_path(args: argparse.Namespace) -> Path:
    """The real items the chunked part reads: ``<out>_real_items.json`` for SmolLM2 (as the
    real part writes it), ``<out>_<model>_items.json`` for another model (``items`` part)."""
    if args.model == "smollm2-135m":
        return Path(f"{args.out}_real_items.json")
    return Path(f"{args.out}_{args.model}_items.json")


def part_items(args: argparse.Namespace) -> None:
    """Write the real items for ``--model`` (completion form for a base model) and stop."""
    from tokenwise.models import load

    lm = load(args.model)
    items = real_items(lm, tuple(args.lengths), args.per_length, args.seed,
                       chat=args.model == "smollm2-135m")
    path = items_path(args)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(items))
    print(f"{len(items)} items -> {path}")


def write(out: Path, part: str, payload: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.with_name(f"{out.name}_{part}.json")
    path.write_text(json.dumps(payload, indent=1))
    print(f"wrote {path}", flush=True)


def part_testbed(args: argparse.Namespace) -> None:
    from tokenwise.models import load

    torch.manual_seed(args.seed)
    lm = load("tw-reader")
    items = testbed_items(lm, args.per_count, args.seed)
    tokens = tuple(args.tokens if args.tokens is not None else (32,))
    rows = run_items(lm, items, window=args.window, token_budgets=tokens,
                     check=lambda a, it: a == it["answer"], max_new=5, group=16,
                     residual=16, log=lambda m: print(m, flush=True) if args.verbose else None)
    summary = summarise(rows, args.seed)
    by_count: dict[str, dict[str, float]] = {}
    for key, per in rows.items():
        for budget, r in per.items():
            for count in sorted({it["distractors"] for it in items}):
                hits = [c for c, it in zip(r["correct"], items, strict=True)
                        if it["distractors"] == count]
                by_count.setdefault(f"{key}@{budget}", {})[str(count)] = sum(hits) / len(hits)
    write(Path(args.out), "testbed", {
        "model": "tw-reader", "items": len(items), "per_count": args.per_count,
        "seed": args.seed, "window": args.window, "kivi": {"group": 16, "residual": 16},
        "mean_prompt_tokens": sum(len(it["ids"]) for it in items) / len(items),
        "summary": summary, "accuracy_by_distractors": by_count, "rows": rows})


def part_real(args: argparse.Namespace) -> None:
    from tokenwise.models import load

    torch.manual_seed(args.seed)
    lm = load("smollm2-135m")
    items = real_items(lm, tuple(args.lengths), args.per_length, args.seed)
    tokens = tuple(args.tokens if args.tokens is not None else (256,))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}_real_items.json").write_text(json.dumps(items))

    def save(rows: dict, done: int) -> None:  # after every item: a slow run leaves results
        write(Path(args.out), "real", {
            "model": "smollm2-135m (Q4 GGUF weights dequantised to float32; differ from bf16)",
            "items": done, "items_planned": len(items), "lengths": args.lengths,
            "per_length": args.per_length, "seed": args.seed, "window": args.window,
            "kivi": {"group": 32, "residual": 32},
            "prompt_tokens": [len(it["ids"]) for it in items[:done]],
            "full_correct": rows["full"]["1.0"]["correct"],
            "summary": summarise(rows, args.seed), "rows": rows})

    run_items(lm, items, window=args.window, token_budgets=tokens,
              check=lambda a, it: it["answer"] in a, max_new=6, group=32, residual=32,
              log=lambda m: print(m, flush=True), heavy_budgets=(0.25,),
              ratios=tuple(args.ratios), on_item=save)


CHUNKED = ("full", "snapkv25_w32", "snapkv25_w32_chunk256", "streaming25_chunk256",
           "snapkv25_w32_chunk256_q", "expected25_w32", "expected25_w32_chunk256_q",
           "snapkv25_w32_chunk256_q_matched")


def chunked_setting(method: str, it: dict) -> tuple[Any, list[int], list[int] | None]:
    """``(press, ids, question)`` for a method of the chunked part: ``_q`` methods read the
    context in chunks with the question as a probe after each (the question apart), their
    budget 25% of the context with the question on top; ``_q_matched`` keeps as many tokens
    in all as the one-pass rows (25% of the whole prompt, question included)."""
    from tokenwise import kv

    chunk = 256 if "chunk256" in method else None
    if method == "full":  # keeps everything: the reference the presses are retained against
        return kv.KeyNorm(1.0), it["ids"], None
    if method.endswith("_matched"):
        n_q = len(it["ids"]) - it["n_ctx"]
        total = -(-len(it["ids"]) // 4)  # ceil(0.25 * prompt), as the one-pass budget
        spec = kv.SnapKV(total - n_q, window=32, chunk_size=chunk)
        return spec, it["ids"][:it["n_ctx"]], it["ids"][it["n_ctx"]:]
    if method.startswith("snapkv"):
        spec = kv.SnapKV(0.25, window=32, chunk_size=chunk)
    elif method.startswith("expected"):
        spec = kv.ExpectedAttention(0.25, window=32, chunk_size=chunk)
    else:
        spec = kv.StreamingLLM(0.25, chunk_size=chunk)
    if method.endswith("_q"):
        return spec, it["ids"][:it["n_ctx"]], it["ids"][it["n_ctx"]:]
    return spec, it["ids"], None


@torch.inference_mode()
def part_chunked(args: argparse.Namespace) -> None:
    """Accuracy of the memory part's settings (SnapKV window 32, chunked prefill) on the real
    part's items: with plain chunks, the chunks before the question are compressed before it
    is read, so chunked SnapKV is question-agnostic for them; the ``_q`` methods give
    :func:`tokenwise.kv.prefill` the question apart, so each chunk is compressed by a probe
    of the question read right after it."""
    from tokenwise import kv
    from tokenwise.models import load

    lm = load(args.model)
    items = json.loads(items_path(args).read_text())[:args.limit]
    methods = args.methods or CHUNKED
    unknown = sorted(set(methods) - set(CHUNKED))
    if unknown:
        raise SystemExit(f"--methods {unknown}: allowed {', '.join(CHUNKED)}")
    rows: dict[str, dict[str, list]] = {}
    for n, it in enumerate(items):
        t0 = time.time()
        for method in methods:
            spec, ids, question = chunked_setting(method, it)
            t1 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cache, logits = kv.prefill(lm, ids, spec, question=question)
            ans = greedy(lm, cache, logits, len(it["ids"]), 6)
            r = rows.setdefault(method, {"correct": [], "seconds": [], "recall": [],
                                         "cache_peak_tokens": [], "kept_tokens": [],
                                         "prefill_tokens": [], "peak_by_kind": [],
                                         "held_by_kind": [], "bytes_by_kind": []})
            r["correct"].append(int(it["answer"] in ans))
            r["seconds"].append(time.perf_counter() - t1)
            r["recall"].append(needle_recall(cache, it["needle"]))
            r["cache_peak_tokens"].append(cache.peak_tokens)
            r["kept_tokens"].append(cache.get_seq_length())
            r["prefill_tokens"].append(cache.prefill_tokens)
            r["peak_by_kind"].append(dict(cache.peak_by_kind))
            r["held_by_kind"].append(cache.held_by_kind())
            r["bytes_by_kind"].append(cache.bytes_by_kind())
            cache.close()
        print(f"item {n + 1}/{len(items)} ({len(it['ids'])} tokens) {time.time() - t0:.1f}s",
              flush=True)
        save_chunked(args, items, rows, n + 1)


def save_chunked(args: argparse.Namespace, items: list[dict], rows: dict, done: int) -> None:
    """Write the chunked part's summary and rows (after every item: a slow run leaves
    results)."""
    summary = {m: {"n": len(r["correct"]), "correct": sum(r["correct"]),
                   "accuracy": sum(r["correct"]) / len(r["correct"]),
                   "needle_recall": sum(r["recall"]) / len(r["recall"]),
                   "seconds_mean": sum(r["seconds"]) / len(r["seconds"]),
                   "cache_peak_tokens_max": max(r["cache_peak_tokens"]),
                   "kept_tokens_mean": sum(r["kept_tokens"]) / len(r["kept_tokens"]),
                   "cache_peak_by_kind_max": {k: max(p[k] for p in r["peak_by_kind"])
                                              for k in r["peak_by_kind"][0]},
                   "held_by_kind_mean": {k: sum(p[k] for p in r["held_by_kind"])
                                         / len(r["held_by_kind"])
                                         for k in r["held_by_kind"][0]}}
               for m, r in rows.items()}
    model = ("smollm2-135m (Q4 GGUF weights dequantised to float32)"
             if args.model == "smollm2-135m" else args.model)
    write(Path(args.out), "chunked", {
        "model": model, "items": done,
        "items_planned": len(items), "budget": 0.25, "window": 32, "chunk": 256,
        "note": "_q methods: question-aware chunked prefill, budget 25% of the context with "
                "the question kept whole on top (_q_matched: 25% of the whole prompt in all, "
                "question included); the others: 25% of the whole prompt",
        "summary": summary, "rows": rows})


METHODS = ("full", "snapkv25", "snapkv25_chunk256", "streaming25_chunk256", "kivi2",
           "kivi2_chunk256", "snapkv25_chunk256_q")


@torch.inference_mode()
def probe(method: str, length: int, seed: int) -> dict:
    """One method on one long prompt in this process: RSS and cache bytes."""
    from tokenwise import kv
    from tokenwise.models import load

    lm = load("smollm2-135m")
    item = real_items(lm, (length,), 1, seed)[0]
    ids = item["ids"]
    lm.forward(torch.tensor([ids[:8]]), use_cache=True)  # warm-up: kernels, allocator
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    import psutil

    rss0 = psutil.Process().memory_info().rss
    chunk = 512 if "chunk512" in method else 256 if "chunk256" in method else None
    t0 = time.time()
    if method == "full":
        out = lm.forward(torch.tensor([ids]), use_cache=True, logits_to_keep=1)
        cache, logits = out.cache, out.logits[:, -1]
        cache_peak = sum(lay.keys.numel() * lay.keys.element_size() * 2 for lay in cache.layers)
    else:
        if method.startswith("snapkv"):
            spec = kv.SnapKV(0.25, window=32, chunk_size=chunk)
        elif method.startswith("streaming"):
            spec = kv.StreamingLLM(0.25, chunk_size=chunk)
        else:
            spec = kv.KIVI(2, 32, 32, chunk_size=chunk)
        if method.endswith("_q"):  # question-aware chunks: the question apart
            cache, logits = kv.prefill(lm, ids[:item["n_ctx"]], spec,
                                       question=ids[item["n_ctx"]:])
        else:
            cache, logits = kv.prefill(lm, ids, spec)
        cache_peak = cache.peak_bytes
    ans = greedy(lm, cache, logits, len(ids), 8)
    elapsed = time.time() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"method": method, "prompt_tokens": len(ids), "answer_ok": item["answer"] in ans,
            "peak_rss_over_start_mb": (peak - base) / 1024,
            "rss_after_mb_over_start": (psutil.Process().memory_info().rss - rss0) / 2**20,
            "cache_peak_bytes": cache_peak,
            "cache_final_bytes": (cache.nbytes() if hasattr(cache, "nbytes") else
                                  sum(lay.keys.numel() * lay.keys.element_size() * 2
                                      for lay in cache.layers)),
            "seconds": elapsed}


def part_memory(args: argparse.Namespace) -> None:
    from tokenwise.models import load

    # the probe's prompt, for the kvpress peer's own probe (kv_press_kvpress.py memory)
    item = real_items(load("smollm2-135m"), (args.length,), 1, args.seed)[0]
    Path(f"{args.out}_memory_item.json").write_text(json.dumps([item]))
    results = []
    methods = args.methods or METHODS
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"--methods {unknown}: allowed {', '.join(METHODS)}")
    for method in methods:
        cmd = [sys.executable, __file__, "probe", "--method", method, "--length",
               str(args.length), "--seed", str(args.seed)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        print(row, flush=True)
        results.append(row)
    write(Path(args.out), "memory", {
        "model": "smollm2-135m (Q4 GGUF weights dequantised to float32)", "seed": args.seed,
        "length": args.length, "note": "ru_maxrss of a fresh process per method, minus its "
        "value after loading and a warm-up pass; the cache's own peak is counted in bytes",
        "rows": results})


@torch.inference_mode()
def part_speed(args: argparse.Namespace) -> None:
    from tokenwise import kv
    from tokenwise.models import load

    lm = load("smollm2-135m")
    ids = real_items(lm, (args.length,), 1, args.seed)[0]["ids"]
    prompt = torch.tensor([ids])
    # one prefill, reused: each method decodes from a fresh copy of its cache
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source, last = kv.prefill(lm, ids, kv.SnapKV(1.0, window=32))
    full_ref = lm.forward(prompt, use_cache=True, logits_to_keep=1)

    def fresh(method: str):
        if method == "full":
            import copy

            return copy.deepcopy(full_ref.cache)
        if method == "snapkv25":
            return source.compressed_copy(kv.SnapKV(0.25, window=32))
        q = kv.QuantizedKVCache(kv.KIVI(2, 32, 32), lm)
        for i, layer in enumerate(source.layers):
            q.update(layer.keys, layer.values, i)
        return q

    times: dict[str, list[float]] = {"full": [], "snapkv25": [], "kivi2": []}
    for _ in range(args.repeats):
        for method in times:
            cache = fresh(method)
            t0 = time.perf_counter()
            nxt = torch.tensor([[int(last.argmax())]])
            for step in range(args.decode):
                out = lm.forward(nxt, None, cache=cache,
                                 position_ids=torch.tensor([[len(ids) + step]]), use_cache=True)
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            times[method].append(time.perf_counter() - t0)
    med = {m: sorted(v)[len(v) // 2] for m, v in times.items()}
    ratios = {m: med[m] / med["full"] for m in med}
    print("decode time ratio vs full (median of interleaved repeats):", ratios, flush=True)
    write(Path(args.out), "speed", {"pilot": True, "length": len(ids), "decode": args.decode,
                                    "repeats": args.repeats, "seconds": times,
                                    "ratio_vs_full": ratios,
                                    "note": "loaded shared machine; the lead re-runs timings"})


def part_report(args: argparse.Namespace) -> None:
    """Markdown tables from the JSON results that exist."""
    out = Path(args.out)
    for part in ("testbed", "real"):
        path = out.with_name(f"{out.name}_{part}.json")
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        print(f"\n### {part}: {data['model']}, {data['items']} items\n")
        print("| press | budget | accuracy | retention [95% CI] | needle recall | bytes vs full "
              "| bytes vs fp16 |")
        print("|---|---|---|---|---|---|---|")
        for r in data["summary"].values():
            lo, hi = r["retention_ci95"]
            fp16 = "" if r["bytes_vs_fp16"] is None else f"{r['bytes_vs_fp16']:.3f}"
            print(f"| {r['press']} | {r['budget']} | {r['accuracy']:.3f} | "
                  f"{r['retention']:.2f} [{lo:.2f}, {hi:.2f}] | {r['needle_recall']:.2f} | "
                  f"{r['bytes_vs_full']:.3f} | {fp16} |")
    for name in ("memory", "kvpress_memory"):
        path = out.with_name(f"{out.name}_{name}.json")
        if path.exists():
            print(f"\n### {name}\n")
            for row in json.loads(path.read_text())["rows"]:
                print(row)
    path = out.with_name(f"{out.name}_kvpress.json")
    if path.exists():
        print("\n### kvpress accuracy\n")
        for key, r in json.loads(path.read_text())["summary"].items():
            print(f"| {key} | {r['accuracy']:.3f} | n={r['n']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=["testbed", "real", "memory", "speed", "probe",
                                         "chunked", "items", "report"])
    parser.add_argument("--model", default="smollm2-135m",
                        help="chunked / items: the model (gemma3-270m: completion-form items "
                             "in <out>_gemma3-270m_items.json, written by the items part)")
    parser.add_argument("--out", default="benchmarks/results/kv_press")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-count", type=int, default=50)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1000, 2000, 4000])
    parser.add_argument("--per-length", type=int, default=8)
    parser.add_argument("--length", type=int, default=4000)
    parser.add_argument("--method", default="full")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decode", type=int, default=32)
    parser.add_argument("--ratios", type=float, nargs="+", default=list(RATIOS),
                        help="ratio budgets of the real part")
    parser.add_argument("--tokens", type=int, nargs="*", default=None,
                        help="fixed token budgets (default: 32 testbed, 256 real)")
    parser.add_argument("--limit", type=int, default=None,
                        help="chunked: the first N items of the real part")
    parser.add_argument("--methods", nargs="+", default=None,
                        help="chunked / memory: run only these methods")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    if args.part == "probe":
        print(json.dumps(probe(args.method, args.length, args.seed)))
        return
    {"testbed": part_testbed, "real": part_real, "memory": part_memory,
     "speed": part_speed, "chunked": part_chunked, "items": part_items,
     "report": part_report}[args.part](args)


if __name__ == "__main__":
    main()

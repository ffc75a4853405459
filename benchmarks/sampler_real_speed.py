"""Per-call cost of the samplers on real next-token logits, against transformers' warpers.

Issue 17, item 4 (samplers on real logits). ``benchmarks/sampler_cost.py`` times the samplers
on ``randn * 3`` logits; this script takes the logits from real pretrained models instead:
SmolLM2-135M-Instruct (V = 49,152) and Gemma-3-270M (V = 262,144), both loaded from the
tokenwise cache (Q4 GGUF weights dequantised to float32; figures differ from the bf16
originals). For each model it runs eight fixed English texts through the model and keeps

* the next-token logits after each text (the last position): batch 1 is the first text's
  row, batch 8 all eight rows; these are timed;
* the logits at every position of the eight texts: on these it checks that ours and the
  transformers warper of the same name keep the same tokens (``isneginf`` masks equal, row
  by row; for Temperature the values are compared).

Pairs: TopH(0.4) / ``TopHLogitsWarper(0.4)``, TopP(0.9), TopK(50), MinP(0.1),
Typical(0.95), Temperature(0.7). Our TopH uses its default ``rule="reference"`` (the
published code's rule, top_n = 100); transformers' ``TopHLogitsWarper`` renormalises the top
100 first, so its kept sets may differ where the top-100 mass is well below 1 (see
``tokenwise.sampling.TopH``); the check reports how often.

Timing: each pair is timed in alternation, round by round (median of ``--repeats`` calls
each, every function called once untimed first), one pair at a time, with ``--threads``
torch threads. The ratio ours / transformers is the figure to read; absolute times on a
shared CPU move between runs.

Run (defaults are the full run; the pilot used ``--repeats 15``):
    .venv/bin/python benchmarks/sampler_real_speed.py
    .venv/bin/python benchmarks/sampler_real_speed.py --model smollm2-135m --repeats 15
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import transformers
from transformers.generation import logits_process as hf

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sampler_cost: the same timer
from sampler_cost import medians_ms
from tokenwise import sampling
from tokenwise.models import load

MODELS = ("smollm2-135m", "gemma3-270m")

#: Eight fixed texts; the logits after each are the batch-8 rows (the first is batch 1).
TEXTS = (
    "The lighthouse keeper had not spoken to anyone in three years, until the morning a boat",
    "When I was twelve, my grandmother gave me a small wooden box and told me never to",
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return",
    "Most people think the invention that changed the world was the printing press, but",
    "The recipe calls for two cups of flour, one egg, and a pinch of",
    "In 1969, the first humans landed on the",
    "She opened the door slowly and saw",
)


def pairs() -> list[tuple[str, sampling.Sampler, object]]:
    """(label, ours, transformers' warper) for each sampler both libraries have."""
    return [
        ("top_h (alpha 0.4)", sampling.TopH(0.4), hf.TopHLogitsWarper(0.4)),
        ("top_p (0.9)", sampling.TopP(0.9), hf.TopPLogitsWarper(0.9)),
        ("top_k (50)", sampling.TopK(50), hf.TopKLogitsWarper(50)),
        ("min_p (0.1)", sampling.MinP(0.1), hf.MinPLogitsWarper(0.1)),
        ("typical (0.95)", sampling.Typical(0.95), hf.TypicalLogitsWarper(0.95)),
        ("temperature (0.7)", sampling.Temperature(0.7), hf.TemperatureLogitsWarper(0.7)),
    ]


@torch.inference_mode()
def real_logits(lm) -> tuple[torch.Tensor, torch.Tensor]:
    """(last-position logits (8, V), every-position logits (N, V)) of ``TEXTS``, float32."""
    last, every = [], []
    for text in TEXTS:
        ids = torch.tensor([lm.encode(text, add_bos=True)])
        logits = lm.forward(ids).logits[0].float()  # (T, V)
        last.append(logits[-1])
        every.append(logits)
    return torch.stack(last).contiguous(), torch.cat(every).contiguous()


@torch.inference_mode()
def agreement(every: torch.Tensor) -> list[dict]:
    """Per pair: rows where ours and transformers keep the same tokens, and mean kept sizes."""
    out = []
    for label, ours, theirs in pairs():
        a, b = ours(every), theirs(None, every.clone())
        if label.startswith("temperature"):
            same = torch.isclose(a, b, rtol=1e-6, atol=0).all(-1)
        else:
            same = (a.isneginf() == b.isneginf()).all(-1)
        kept_a = (~a.isneginf()).sum(-1).float()
        kept_b = (~b.isneginf()).sum(-1).float()
        row = {"sampler": label, "rows": int(every.shape[0]), "rows_equal": int(same.sum()),
               "mean_kept_ours": round(float(kept_a.mean()), 2),
               "mean_kept_transformers": round(float(kept_b.mean()), 2),
               "max_abs_kept_diff": int((kept_a - kept_b).abs().max())}
        if label.startswith("top_h"):
            # transformers renormalises the top 100 first: our rule on logits cut to the top
            # 100 should then keep exactly its set, and rows that differ should be the ones
            # whose top-100 mass is furthest below 1
            top = every.topk(100, dim=-1)
            cut = torch.full_like(every, float("-inf")).scatter(-1, top.indices, top.values)
            row["rows_equal_on_top100_renormalised"] = int(
                (ours(cut).isneginf() == b.isneginf()).all(-1).sum())
            mass = every.softmax(-1).gather(-1, top.indices).sum(-1)
            row["top100_mass_rows_equal"] = round(float(mass[same].mean()), 4)
            if (~same).any():
                row["top100_mass_rows_differing"] = round(float(mass[~same].mean()), 4)
        out.append(row)
    return out


@torch.inference_mode()
def timings(last: torch.Tensor, repeats: int) -> list[dict]:
    out = []
    for batch in (1, 8):
        x = last[:batch].contiguous()
        for label, ours, theirs in pairs():
            # transformers' warpers return new tensors, as ours do: no copy on either side
            t_ours, t_hf = medians_ms([lambda o=ours, x=x: o(x),
                                       lambda h=theirs, x=x: h(None, x)],
                                      repeats)
            out.append({"batch": batch, "sampler": label, "ours_ms": t_ours,
                        "transformers_ms": t_hf, "ratio": t_ours / t_hf})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=MODELS, action="append",
                        help="model to take logits from (repeatable; default both)")
    parser.add_argument("--repeats", type=int, default=100, help="timed calls per sampler")
    parser.add_argument("--no-timings", action="store_true",
                        help="only the kept-set agreement tables")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: the shared 2-core CPU thrashes with more)")
    parser.add_argument("--seed", type=int, default=0, help="torch seed (nothing is random)")
    parser.add_argument("--json", default="sampler_real_speed.json",
                        help="where to write the results")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    models = args.model or list(MODELS)
    result = {"command": " ".join(["benchmarks/sampler_real_speed.py", *sys.argv[1:]]),
              "repeats": args.repeats, "threads": args.threads, "seed": args.seed,
              "torch": torch.__version__, "transformers": transformers.__version__,
              "machine": platform.machine(), "weights": "Q4 GGUF dequantised to float32",
              "models": {}}
    for name in models:
        t0 = time.perf_counter()
        lm = load(name)
        last, every = real_logits(lm)
        del lm
        entropy = torch.special.entr(every.softmax(-1)).sum(-1)
        print(f"\n## {name}: V = {every.shape[1]}, {every.shape[0]} positions "
              f"(mean entropy {float(entropy.mean()):.2f} nats); Q4 GGUF weights, differ from "
              "the bf16 originals", flush=True)
        agree = agreement(every)
        print("| sampler | positions | same kept set as transformers | mean kept ours | "
              "mean kept transformers | max kept diff |")
        print("|---|---|---|---|---|---|")
        for a in agree:
            print(f"| {a['sampler']} | {a['rows']} | {a['rows_equal']} / {a['rows']} | "
                  f"{a['mean_kept_ours']} | {a['mean_kept_transformers']} | "
                  f"{a['max_abs_kept_diff']} |", flush=True)
        for a in agree:
            if "rows_equal_on_top100_renormalised" in a:
                print(f"  top_h: ours on logits cut to the top 100 (transformers' renormalising)"
                      f" keeps its set on {a['rows_equal_on_top100_renormalised']} / {a['rows']}"
                      f" rows; mean top-100 mass {a['top100_mass_rows_equal']} where the sets "
                      f"agree, {a.get('top100_mass_rows_differing', '-')} where they differ")
        times = [] if args.no_timings else timings(last, args.repeats)
        if times:
            print("\n| logits | sampler | ours ms | transformers ms | ours / transformers |")
            print("|---|---|---|---|---|")
        for t in times:
            print(f"| ({t['batch']}, {every.shape[1]}) | {t['sampler']} | {t['ours_ms']:.3f} | "
                  f"{t['transformers_ms']:.3f} | {t['ratio']:.2f}x |", flush=True)
        result["models"][name] = {"vocab": int(every.shape[1]), "positions": int(every.shape[0]),
                                  "mean_entropy_nats": float(entropy.mean()),
                                  "agreement": agree, "timings": times,
                                  "wall_s": time.perf_counter() - t0}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()

"""Diversity against coherence of Top-H, min-p and top-p on a real model at high temperature.

Issue 17, item 4 (samplers on real logits). The Top-H paper (Baghaei et al., 2025) claims that
at high temperature Top-H keeps text coherent where min-p and top-p drift, at similar
diversity. This script checks the direction of that claim on real pretrained models:

* Generator: SmolLM2-135M-Instruct (``tw.load("smollm2-135m")``), as plain completion (no
  chat template): each prompt is the opening of a story or an essay and the model continues
  it. ``--samples`` continuations per prompt are generated in one batch through
  ``tokenwise.generate`` with ``--max-new-tokens`` new tokens, row ``j`` of prompt ``i`` seeded
  ``seed * 10**6 + 1000 * i + j`` (the same seeds for every sampler and temperature).
* Samplers, each after temperature (transformers' order, and what the Top-H reference's
  ``alpaca_generate.py`` gets from its pipeline: the Top-H processor decides its mask from
  ``softmax(z / T)`` and the sampled distribution is that mask over ``softmax(z / T)``):
  ``Chain([Temperature(T), TopH(0.4)])`` (reference rule, top_n = 100: the paper's and
  METHODS.md's default), ``Chain([Temperature(T), MinP(0.1)])``,
  ``Chain([Temperature(T), TopP(0.9)])``, at T = 1.0 / 1.5 / 2.0.
* Diversity: distinct-2 and distinct-3 over the continuations of one prompt (distinct
  n-grams / all n-grams, n-grams taken within each continuation and pooled over the
  ``--samples`` of the prompt), on SmolLM2's generated token ids and on lower-cased
  whitespace words; averaged over the prompts.
* Coherence: each continuation's perplexity under the other real model, Gemma-3-270M (a base
  model, V = 262,144): the prompt and continuation are re-tokenised with Gemma's tokenizer and
  ``tokenwise.scoring.token_surprisal`` scores the continuation's tokens given Gemma's start
  token and the prompt. Per text ``log ppl`` = mean surprisal (nats); a configuration's
  figure is ``exp(mean log ppl)`` over its texts (the geometric mean of the perplexities,
  with a 95% interval from 1.96 standard errors of the mean log ppl) and the median
  perplexity. Only the first ``--score-samples`` continuations of each prompt are scored
  (Gemma's 262k-wide head is the cost on a CPU); diversity uses all of them. SmolLM2's own
  perplexity of its text (its logprobs at temperature 1, from the generation records) is
  shown beside it.

Both models are Q4 GGUF weights dequantised to float32: the figures differ from the bf16
originals.

Run (defaults are the full run: 47 min on the shared, loaded 2-core VM, one torch thread):
    .venv/bin/python benchmarks/sampler_real_diversity.py
    .venv/bin/python benchmarks/sampler_real_diversity.py --prompts 1 --samples 8 \\
        --max-new-tokens 12 --score-samples 4 --temperatures 1.0 2.0   # a pilot
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

import tokenwise as tw
from tokenwise import sampling
from tokenwise.scoring import token_surprisal

#: Openings of stories and essays, written for this benchmark.
PROMPTS = (
    "The lighthouse keeper had not spoken to anyone in three years, until the morning a boat "
    "washed up on the rocks with",
    "When I was twelve, my grandmother gave me a small wooden box and told me never to open "
    "it. Last week, I finally",
    "The city of glass rose out of the desert at dawn, and the travellers who saw it first",
    "Most people think the invention that changed the world was the printing press, but I "
    "believe it was",
    "The last train out of the valley left at midnight, and everyone on board was hiding",
    "Why do we dream? For centuries, philosophers and scientists have argued that",
    "The robot had been built to sort letters, but one rainy afternoon it decided to",
    "There is a small bakery at the end of my street where the owner never",
)


SAMPLERS = ("top_h", "min_p", "top_p")


def samplers(temperature: float, alpha: float, min_p: float, top_p: float,
             names: tuple[str, ...] = SAMPLERS) -> dict:
    """The samplers named in ``names``, each after ``Temperature(temperature)``."""
    temp = sampling.Temperature(temperature)
    made = {
        "top_h": (f"top_h ({alpha})", lambda: sampling.TopH(alpha)),
        "min_p": (f"min_p ({min_p})", lambda: sampling.MinP(min_p)),
        "top_p": (f"top_p ({top_p})", lambda: sampling.TopP(top_p)),
    }
    return {made[n][0]: sampling.Chain([temp, made[n][1]()]) for n in names}


def distinct_n(sequences: list[list], n: int) -> float:
    """Distinct n-grams over all n-grams, n-grams taken within each sequence and pooled.

    Example:
        >>> distinct_n([[1, 2, 3], [1, 2, 4]], 2)
        0.75
    """
    grams = [tuple(s[i:i + n]) for s in sequences for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def split_ids(lm, prompt: str, text: str) -> tuple[list[int], list[int]]:
    """(prompt ids, continuation ids) under ``lm``'s tokenizer: the pair's own tokenisation
    when it begins with the prompt's ids, else each encoded alone."""
    p = lm.encode(prompt)
    full = lm.encode(prompt + text)
    if full[:len(p)] == p:
        return p, full[len(p):]
    return p, lm.encode(text)


def summarise(log_ppls: list[float]) -> dict:
    n = len(log_ppls)
    mean = statistics.fmean(log_ppls)
    se = statistics.stdev(log_ppls) / math.sqrt(n) if n > 1 else float("nan")
    return {"n_scored": n, "ppl_geomean": math.exp(mean),
            "ppl_lo": math.exp(mean - 1.96 * se), "ppl_hi": math.exp(mean + 1.96 * se),
            "ppl_median": statistics.median(math.exp(x) for x in log_ppls)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=4,
                        help=f"how many of the {len(PROMPTS)} openings to use (the first N)")
    parser.add_argument("--samples", type=int, default=64, help="continuations per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 1.5, 2.0])
    parser.add_argument("--alpha", type=float, default=0.4, help="Top-H alpha")
    parser.add_argument("--min-p", type=float, default=0.1)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--samplers", nargs="+", choices=SAMPLERS, default=list(SAMPLERS),
                        help="which samplers to run (e.g. min_p alone with another --min-p, "
                             "to match another sampler's diversity)")
    parser.add_argument("--score-samples", type=int, default=16,
                        help="continuations per prompt scored by Gemma (the first N)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: the shared 2-core CPU thrashes with more)")
    parser.add_argument("--json", default="sampler_real_diversity.json")
    parser.add_argument("--texts", default="sampler_real_texts.jsonl",
                        help="every continuation with its scores, one JSON line each")
    args = parser.parse_args()
    if not 1 <= args.prompts <= len(PROMPTS):
        parser.error(f"--prompts {args.prompts}: allowed 1..{len(PROMPTS)}")
    if not 1 <= args.score_samples <= args.samples:
        parser.error(f"--score-samples {args.score_samples}: allowed 1..{args.samples}")
    torch.set_num_threads(args.threads)
    command = " ".join(["benchmarks/sampler_real_diversity.py", *sys.argv[1:]])
    print(f"command: {command}\nseed {args.seed}; Q4 GGUF weights, differ from the bf16 "
          "originals", flush=True)
    t_start = time.perf_counter()
    smol, gemma = tw.load("smollm2-135m"), tw.load("gemma3-270m")
    prompts = PROMPTS[:args.prompts]
    result = {"command": command, "args": vars(args), "prompts": prompts,
              "generator": "smollm2-135m (plain completion, no chat template)",
              "scorer": "gemma3-270m", "weights": "Q4 GGUF dequantised to float32",
              "torch": torch.__version__, "rows": []}
    Path(args.texts).parent.mkdir(parents=True, exist_ok=True)
    texts_out = open(args.texts, "w")  # noqa: SIM115  (written as the run goes)
    lines = ["| T | sampler | distinct-2 (tokens) | distinct-3 (tokens) | distinct-2 (words) | "
             "distinct-3 (words) | Gemma ppl (geo. mean, 95% CI) | Gemma ppl median | "
             "SmolLM2 self ppl | mean new tokens | ended by EOS |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for temperature in args.temperatures:
        for label, sampler in samplers(temperature, args.alpha, args.min_p, args.top_p,
                                       tuple(args.samplers)).items():
            t0 = time.perf_counter()
            d = {"tok2": [], "tok3": [], "w2": [], "w3": []}
            log_ppls, self_log_ppls, lengths, eos = [], [], [], 0
            for i, prompt in enumerate(prompts):
                seeds = [args.seed * 10**6 + 1000 * i + j for j in range(args.samples)]
                gens = tw.generate(smol, [prompt] * args.samples, sampler,
                                   max_new_tokens=args.max_new_tokens, seed=seeds)
                ids = [[t.id for t in g.tokens] for g in gens]
                words = [g.text.lower().split() for g in gens]
                d["tok2"].append(distinct_n(ids, 2))
                d["tok3"].append(distinct_n(ids, 3))
                d["w2"].append(distinct_n(words, 2))
                d["w3"].append(distinct_n(words, 3))
                for j, g in enumerate(gens):
                    lengths.append(len(g.tokens))
                    eos += g.finish_reason == "eos"
                    row = {"T": temperature, "sampler": label, "prompt": i, "seed": seeds[j],
                           "text": g.text, "finish": g.finish_reason}
                    if g.tokens:
                        self_lp = -statistics.fmean(t.logprob for t in g.tokens)
                        self_log_ppls.append(self_lp)
                        row["smol_log_ppl"] = self_lp
                    if j < args.score_samples:
                        p_ids, c_ids = split_ids(gemma, prompt, g.text)
                        if c_ids:
                            lp = float(token_surprisal(gemma, c_ids, prefix=p_ids).mean())
                            log_ppls.append(lp)
                            row["gemma_log_ppl"] = lp
                    texts_out.write(json.dumps(row) + "\n")
                texts_out.flush()
            s = summarise(log_ppls)
            rec = {"T": temperature, "sampler": label,
                   **{k: statistics.fmean(v) for k, v in d.items()},
                   "per_prompt": d, **s,
                   "smol_self_ppl_geomean": math.exp(statistics.fmean(self_log_ppls)),
                   "mean_new_tokens": statistics.fmean(lengths),
                   "ended_by_eos": eos, "texts": len(lengths),
                   "wall_s": time.perf_counter() - t0}
            result["rows"].append(rec)
            lines.append(
                f"| {temperature:g} | {label} | {rec['tok2']:.3f} | {rec['tok3']:.3f} | "
                f"{rec['w2']:.3f} | {rec['w3']:.3f} | {s['ppl_geomean']:.1f} "
                f"({s['ppl_lo']:.1f}-{s['ppl_hi']:.1f}) | {s['ppl_median']:.1f} | "
                f"{rec['smol_self_ppl_geomean']:.1f} | {rec['mean_new_tokens']:.1f} | "
                f"{eos} / {len(lengths)} |")
            print(lines[-1], f"  [{rec['wall_s']:.0f} s]", flush=True)
            result["wall_s"] = time.perf_counter() - t_start
            Path(args.json).write_text(json.dumps(result, indent=1))  # kept if a later one dies
    texts_out.close()
    print("\n" + "\n".join(lines))
    print(f"\nwall {result['wall_s']:.0f} s; wrote {args.json} and {args.texts}")


if __name__ == "__main__":
    main()

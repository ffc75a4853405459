"""What per-token entropy costs on vLLM: decoding tokens/s by the way entropy is obtained.

One engine on a built-in model (tw-large by default, float32) with tokenwise's
``EntropyRecorder`` registered and full-vocabulary logprobs allowed; the same seeded
requests (``--prompts`` prompts x ``--tokens`` tokens at temperature 1, EOS ignored so
every route decodes the same number of tokens) are decoded with:

- ``none``: no logprobs (the baseline);
- ``chosen``: ``logprobs=0`` (the chosen token's logprob only; what ``sample_answers`` uses);
- ``full (vLLM only)``: ``logprobs=-1`` with ``flat_logprobs=True``, output not reduced
  (what vLLM itself spends shipping and detokenizing the full vocabulary);
- ``full -> generate_with_stats``: ``route="logprobs"``, the above plus tokenwise's
  reduction to entropy/varentropy and its records;
- ``in-engine -> generate_with_stats``: ``route="engine"``: the recorder computes the two
  numbers on the worker, read back with one ``collective_rpc``.

Each route runs ``--repeats`` times after a warm-up (routes interleaved, so drift in the
shared machine's load hits all alike); the median tokens/s is reported with the ratio to the
baseline and what crosses the process boundaries per token (V = vocabulary size).

Run (needs vLLM):
    /work/venv-vllm/bin/python benchmarks/vllm_entropy.py [--model tw-large] [--prompts 8]
        [--tokens 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

# testbed-style prompts (facts, arithmetic, code lines)
PROMPTS = ["Q: What is the job of Ana Velmora?\nA:", "7+5=", "The code of Tavoun is",
           "Q: Where was Brelix Steilar born?\nA:", "12*3=", "Q: What is the pet of Gaitre "
           "Neisei?\nA:", "The code of Grugri is", "Q: What is 2+3?\nA:"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tw-large")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    import tokenwise.vllm as tv
    from tokenwise.models import builtin_path

    t0 = time.perf_counter()
    llm = LLM(model=str(builtin_path(args.model)), gpu_memory_utilization=0.3,
              max_model_len=256, enforce_eager=True, dtype="float32", seed=0, max_logprobs=-1,
              logits_processors=[tv.EntropyRecorder], worker_extension_cls=tv.WORKER_EXTENSION)
    startup = time.perf_counter() - t0
    model = tv.as_vllm_model(llm)
    vocab = model.vocab_size
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.prompts)]
    encoded = [TokensPrompt(prompt_token_ids=model.encode(p, add_bos=True)) for p in prompts]

    def params(**kw) -> SamplingParams:
        return SamplingParams(temperature=1.0, seed=args.seed, max_tokens=args.tokens,
                              ignore_eos=True, **kw)

    def plain(**kw):
        def run() -> int:
            outs = llm.generate(encoded, params(**kw), use_tqdm=False)
            return sum(len(o.outputs[0].token_ids) for o in outs)
        return run

    def with_stats(route: str):
        def run() -> int:
            gens = tv.generate_with_stats(llm, prompts, params(), route=route)
            assert all(len(g.tokens) == args.tokens for g in gens)
            return sum(len(g.tokens) for g in gens)
        return run

    routes = {
        "none": (plain(), "0"),
        "chosen (logprobs=0)": (plain(logprobs=0, flat_logprobs=True), "~12 B"),
        "full (vLLM only, logprobs=-1)": (plain(logprobs=-1, flat_logprobs=True),
                                          f"~12 V B = {12 * vocab / 1024:.0f} KiB"),
        "full -> generate_with_stats": (with_stats("logprobs"),
                                        f"~12 V B = {12 * vocab / 1024:.0f} KiB"),
        "in-engine -> generate_with_stats": (with_stats("engine"), "~12 B + 16 B"),
    }
    for run, _ in routes.values():  # warm-up
        run()
    times: dict[str, list[float]] = {name: [] for name in routes}
    for _ in range(args.repeats):
        for name, (run, _) in routes.items():
            t = time.perf_counter()
            n = run()
            times[name].append(n / (time.perf_counter() - t))
    base = statistics.median(times["none"])
    print(f"\nvLLM {args.model} (V = {vocab}), start-up {startup:.1f} s, {args.prompts} prompts "
          f"x {args.tokens} tokens, median of {args.repeats}\n")
    print("| route | tokens/s | vs none | per token across each process hop |")
    print("|---|---:|---:|---|")
    for name, (_, size) in routes.items():
        med = statistics.median(times[name])
        print(f"| {name} | {med:.0f} | {med / base:.2f}x | {size} |")


if __name__ == "__main__":  # the engine spawns processes
    main()

"""Throughput of vLLM with and without tokenwise's logits processors (tokenwise.vllm.processors).

Three cases on the same prompts with the same per-request seeds (temperature 1, EOS
ignored so every request makes exactly ``--tokens`` tokens):

* ``none``: an engine with no tokenwise processor registered;
* ``unused``: an engine with every class in ``PROCESSORS`` registered, requests without
  ``extra_args``;
* ``top_h``: the same engine, every request with ``extra_args={"top_h": alpha}``.

Both engines are up at once and the cases run interleaved, ``--repeats`` rounds (after a
warm-up round), so a busy machine slows all of them alike; the table gives the median and
the best round. Start-up is the wall time of ``LLM(...)`` for each engine.

Run (in the vLLM venv; ``.venv-vllm`` in CI, ``/work/venv-vllm`` on the dev machine):
    HF_HUB_OFFLINE=1 python benchmarks/vllm_processors.py --model tw-large --prompts 32 \\
        --tokens 64 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time


def _engine(path: str, processors: list, memory: float):
    from vllm import LLM

    t0 = time.perf_counter()
    llm = LLM(model=path, logits_processors=processors, gpu_memory_utilization=memory,
              max_model_len=256, enforce_eager=True, dtype="float32", seed=0)
    return llm, time.perf_counter() - t0


def _apply_cost_ms(batch: int, vocab: int, alpha: float, repeats: int = 200) -> float:
    """Median wall time of TopHLogitsProcessor.apply on a full batch that asked for it."""
    import torch
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate

    from tokenwise.vllm.processors import TopHLogitsProcessor

    proc = TopHLogitsProcessor(None, torch.device("cpu"), False)
    params = SamplingParams(extra_args={"top_h": alpha})
    proc.update_state(BatchUpdate(batch, [], [(i, params, [], []) for i in range(batch)], []))
    logits = torch.randn(batch, vocab, generator=torch.Generator().manual_seed(0)) * 3
    times = []
    for _ in range(repeats):
        work = logits.clone()
        t0 = time.perf_counter()
        proc.apply(work)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tw-large", help="a built-in model name")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per prompt")
    parser.add_argument("--repeats", type=int, default=5, help="measured rounds")
    parser.add_argument("--alpha", type=float, default=0.4, help="Top-H alpha (top_h case)")
    parser.add_argument("--memory", type=float, default=0.2,
                        help="gpu_memory_utilization of each of the two engines")
    args = parser.parse_args()

    from vllm import SamplingParams

    from tokenwise.models import builtin_path
    from tokenwise.vllm.processors import PROCESSORS

    path = str(builtin_path(args.model))
    prompts = [f"Q: Where was person {i} born?\nA:" if i % 2 else f"{i}+{2 * i + 3}="
               for i in range(args.prompts)]

    plain, start_plain = _engine(path, [], args.memory)
    ours, start_ours = _engine(path, list(PROCESSORS), args.memory)

    def params(extra):
        return [SamplingParams(temperature=1.0, seed=i, max_tokens=args.tokens, ignore_eos=True,
                               extra_args=extra) for i in range(args.prompts)]

    cases = {
        "none": (plain, params(None)),
        "unused": (ours, params(None)),
        "top_h": (ours, params({"top_h": args.alpha})),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for round_ in range(args.repeats + 1):  # round 0 warms up (first generate is slow)
        for name, (llm, sampling) in cases.items():
            t0 = time.perf_counter()
            outs = llm.generate(prompts, sampling, use_tqdm=False)
            elapsed = time.perf_counter() - t0
            made = sum(len(o.outputs[0].token_ids) for o in outs)
            assert made == args.prompts * args.tokens, made
            if round_:
                times[name].append(elapsed)

    total = args.prompts * args.tokens
    base = statistics.median(times["none"])
    step_ms = _apply_cost_ms(args.prompts, ours.llm_engine.model_config.get_vocab_size(),
                             args.alpha)
    print(f"vLLM logits-processor overhead: {args.model}, {args.prompts} prompts x "
          f"{args.tokens} tokens, {args.repeats} interleaved rounds after a warm-up\n")
    print(f"start-up: no processors {start_plain:.1f} s; PROCESSORS registered "
          f"{start_ours:.1f} s\n")
    print("| case | median s | tokens/s (median) | tokens/s (best) | time / none, same round "
          "(median) |")
    print("|---|---|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        paired = statistics.median(t / b for t, b in zip(ts, times["none"], strict=True))
        print(f"| {name} | {med:.3f} | {total / med:.0f} | {total / min(ts):.0f} | "
              f"{paired:.3f} |")
    step = 1000 * base / args.tokens
    print(f"\nTop-H processor apply() on a ({args.prompts}, vocab) batch, in this process: "
          f"{step_ms:.3f} ms per decode step ({100 * step_ms / step:.1f}% of the median "
          f"{step:.2f} ms step without processors)")
    print("\nper-round seconds: " + "; ".join(
        f"{name} " + ", ".join(f"{t:.3f}" for t in ts) for name, ts in times.items()))


if __name__ == "__main__":
    main()

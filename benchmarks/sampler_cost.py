"""Per-step cost of the samplers against transformers' warpers and the Top-H reference loop.

Claims checked (issue: entropy-aware decoding): on float32 logits of shape (8, 32000) and
(8, 128000), TopH costs at most 1.2x transformers' TopHLogitsWarper and is at least 10x
faster than the Top-H reference implementation's loop. The reference
(ErfanBaghaei/Top-H-Decoding, ``logit_processor.py``) takes one row per call (it asserts
batch size 1) and, per candidate token, updates its running entropy and mass with a handful
of 0-d tensor operations in base 2 and compares two tensors (a host sync); it then builds a
boolean mask from a Python list of kept indices and masks a clone of the scores.
``published_top_h_loop`` performs those same operations (our code, re-written from it) so
the time is the reference's; ``lean_top_h_loop`` is the same rule with plain Python floats,
a kinder baseline shown beside it. Both are checked to keep exactly TopH's set first. The
other samplers are timed beside the transformers warper of the same name. Also: how many
tokens each TopH rule keeps on random ``randn * s`` logits over 32000 tokens and on the
built-in tw-large model's real next-token distributions (testbed).

Ours and transformers' warper are timed in alternation (median of each); the reference loops
after them. Run:
    .venv/bin/python benchmarks/sampler_cost.py
    .venv/bin/python benchmarks/sampler_cost.py --sizes-only   # the kept-set tables alone
    python3 benchmarks/sampler_cost.py --device cuda
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from transformers.generation import logits_process as hf

from tokenwise import sampling


def published_top_h_loop(logits: torch.Tensor, alpha: float = 0.4, top_n: int = 100,
                         temperature: float = 1.0) -> torch.Tensor:
    """The published Top-H processor's work: a call per row, 0-d tensor updates per token."""
    out = []
    for row in range(logits.shape[0]):
        scores = logits[row : row + 1]  # (1, V): the reference handles one row per call
        probs = torch.softmax(scores / temperature, dim=-1)
        top_p, top_i = torch.topk(probs[0], top_n, largest=True, sorted=True)
        mass = top_p.sum()
        share = top_p / mass
        tau = ((-(share * torch.log2(share)).sum() - torch.log2(mass)) * mass) * alpha
        kept = []
        running = -top_p[0] * torch.log2(top_p[0])
        sigma = top_p[0]
        for k in range(top_n):
            kept.append(top_i[k])
            if k + 1 == top_n:
                break
            nxt = top_p[k + 1]
            running = running - nxt * torch.log2(nxt)
            sigma = sigma + nxt
            # the reference compares H/sigma + log2(sigma) with tau/sigma + log2(sigma)
            if running / sigma + torch.log2(sigma) > tau / sigma + torch.log2(sigma):
                break
        keep = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
        keep[torch.stack(kept)] = True
        masked = scores.clone()
        masked[:, ~keep] = float("-inf")
        out.append(masked)
    return torch.cat(out)


def lean_top_h_loop(logits: torch.Tensor, alpha: float = 0.4, top_n: int = 100,
                    temperature: float = 1.0) -> torch.Tensor:
    """The same rule with Python floats: one row at a time, one host read per token."""
    out = torch.full_like(logits, float("-inf"))
    for row in range(logits.shape[0]):
        probs = torch.softmax(logits[row] / temperature, dim=-1)
        top_p, top_i = torch.topk(probs, min(top_n, probs.shape[-1]))
        contrib = -top_p * torch.log(top_p)
        tau = alpha * contrib.sum()
        total = 0.0
        keep = [int(top_i[0])]
        for j in range(1, top_p.shape[0]):
            total += float(contrib[j - 1])
            if total + float(contrib[j]) > float(tau):
                break
            keep.append(int(top_i[j]))
        out[row, keep] = logits[row, keep]
    return out


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def medians_ms(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Median ms of each function, timed in turn round by round, so drifting clocks hit all
    alike (each called once first, untimed)."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times, strict=True):
            _sync()
            t = time.perf_counter()
            fn()
            _sync()
            out.append(time.perf_counter() - t)
    return [1000 * statistics.median(t) for t in times]


def cost_table(repeats: int, device: str = "cpu", top_h_only: bool = False) -> list[str]:
    pairs = [
        ("top_h (alpha 0.4)", sampling.TopH(0.4), hf.TopHLogitsWarper(0.4)),
        ("top_p (0.9)", sampling.TopP(0.9), hf.TopPLogitsWarper(0.9)),
        ("min_p (0.05)", sampling.MinP(0.05), hf.MinPLogitsWarper(0.05)),
        ("typical (0.95)", sampling.Typical(0.95), hf.TypicalLogitsWarper(0.95)),
        ("epsilon (3e-4)", sampling.Epsilon(3e-4), hf.EpsilonLogitsWarper(3e-4)),
        ("eta (3e-4)", sampling.Eta(3e-4), hf.EtaLogitsWarper(3e-4, device=device)),
    ]
    if top_h_only:
        pairs = pairs[:1]
    lines = ["| logits | sampler | ours ms | transformers ms | ours / transformers | "
             "reference (published) ms | reference / ours | lean loop ms | lean / ours |",
             "|---|---|---|---|---|---|---|---|---|"]
    for vocab in (32000, 128000):
        logits = (torch.randn(8, vocab, generator=torch.Generator().manual_seed(0)) * 3).to(device)
        for label, ours, theirs in pairs:
            t_ours, t_hf = medians_ms([lambda o=ours, x=logits: o(x),
                                            # transformers' warpers return new tensors (no
                                            # copy needed; one here would bill it to them)
                                       lambda h=theirs, x=logits: h(None, x)],
                                      repeats)
            ref = "| | | | "
            if label.startswith("top_h"):
                mask = ours(logits).isneginf()
                for loop in (published_top_h_loop, lean_top_h_loop):
                    if not torch.equal(loop(logits).isneginf(), mask):
                        raise SystemExit(f"{loop.__name__} keeps another set than TopH")
                few = max(3, repeats // 5)
                t_pub, = medians_ms([lambda x=logits: published_top_h_loop(x)], few)
                t_lean, = medians_ms([lambda x=logits: lean_top_h_loop(x)], few)
                ref = (f"| {t_pub:.2f} | {t_pub / t_ours:.1f}x | {t_lean:.2f} | "
                       f"{t_lean / t_ours:.1f}x ")
            lines.append(f"| (8, {vocab}) | {label} | {t_ours:.2f} | {t_hf:.2f} | "
                         f"{t_ours / t_hf:.2f}x {ref}|")
    return lines


@torch.inference_mode()
def random_top_h_sizes(alpha: float = 0.4, vocab: int = 32000, rows: int = 64) -> list[str]:
    """Mean kept-set size of each TopH rule, with and without the top-n cap, and of
    transformers' warper, on ``randn * s`` logits (seed 11) for s = 1, 2, 3."""
    gen = torch.Generator().manual_seed(11)
    variants = [("reference", 100), ("reference", None), ("bound", 100), ("bound", None)]
    lines = [f"| logits (alpha {alpha}, {rows} rows, V = {vocab}) | "
             + " | ".join(f"{rule}, top_n={top_n}" for rule, top_n in variants)
             + " | transformers |",
             "|---" * (len(variants) + 2) + "|"]
    for scale in (1.0, 2.0, 3.0):
        logits = torch.randn(rows, vocab, generator=gen) * scale
        sizes = [(~sampling.TopH(alpha, rule=rule, top_n=top_n)(logits).isneginf()).sum(-1)
                 for rule, top_n in variants]
        sizes.append((~hf.TopHLogitsWarper(alpha)(None, logits).isneginf()).sum(-1))
        lines.append(f"| randn * {scale:g} | "
                     + " | ".join(f"{float(s.float().mean()):.1f}" for s in sizes) + " |")
    return lines


@torch.inference_mode()
def top_h_sizes() -> list[str]:
    """Mean kept-set size of each TopH rule on tw-large's distributions over testbed text."""
    from tokenwise.models import load
    from tokenwise.testbed.worlds import CorpusConfig, Testbed

    lm = load("tw-large")
    docs = Testbed(2, corpus=CorpusConfig(fact_repeats=1, markov_docs=60, arithmetic_docs=60,
                                          needle_docs=60)).training_documents()[:120]
    rows = []
    for doc in docs:
        ids = torch.tensor([lm.encode(doc, add_bos=True)[: lm.context_length]])
        rows.append(lm.forward(ids).logits[0].float())
    logits = torch.cat(rows)  # (N, V)
    entropy = torch.special.entr(logits.softmax(-1)).sum(-1)
    lines = ["| positions | mean entropy (nats) | rule | alpha | mean kept | median kept |",
             "|---|---|---|---|---|---|"]
    for alpha in (0.2, 0.4, 0.8):
        for rule in ("reference", "bound"):
            kept = (~sampling.TopH(alpha, rule=rule)(logits).isneginf()).sum(-1).float()
            lines.append(f"| {logits.shape[0]} | {float(entropy.mean()):.2f} | {rule} | {alpha} | "
                         f"{float(kept.mean()):.2f} | {float(kept.median()):.0f} |")
        hf_kept = (~hf.TopHLogitsWarper(alpha)(None, logits.clone()).isneginf()).sum(-1).float()
        lines.append(f"| {logits.shape[0]} | {float(entropy.mean()):.2f} | transformers | "
                     f"{alpha} | {float(hf_kept.mean()):.2f} | {float(hf_kept.median()):.0f} |")
    return lines


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (timings only)")
    parser.add_argument("--top-h-only", action="store_true",
                        help="time TopH and the two reference loops only (no other samplers, "
                             "no kept-set table)")
    parser.add_argument("--repeats", type=int, default=100, help="timed calls per sampler")
    parser.add_argument("--sizes-only", action="store_true",
                        help="only the TopH kept-set tables (random logits, then tw-large)")
    args = parser.parse_args()
    if args.sizes_only:
        print("\n".join(random_top_h_sizes()))
        print()
        print("\n".join(top_h_sizes()))
        return
    print(f"device: {args.device}")
    print("\n".join(cost_table(repeats=args.repeats, device=args.device,
                               top_h_only=args.top_h_only)))
    if args.device == "cpu" and not args.top_h_only:
        print()
        print("\n".join(random_top_h_sizes()))
        print()
        print("\n".join(top_h_sizes()))


if __name__ == "__main__":
    main()

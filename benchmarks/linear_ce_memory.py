"""Memory and time of the fused linear cross-entropy against the plain loss and its peers.

Claims checked (issue 8): on a CPU at N=4096 tokens, D=1024, V=65536 in fp32, the fused loss's
forward+backward needs at most 1.2x the gradients' own size (grad_e + grad_c = 272 MiB) of memory
beyond its inputs, and takes at most 0.85x the time of plain ``F.cross_entropy(e @ c.T, y)``.
``cut-cross-entropy``'s ``impl="torch_compile"`` (its only CPU implementation) runs beside them.

Each run is a fresh process (cases take turns, round by round): the inputs are allocated and
every code path warmed up on a tiny problem first, then the peak resident set is reset
(``/proc/self/clear_refs``) and the baseline RSS read; the peak RSS of one forward+backward
minus that baseline is the memory figure (the largest over the rounds). Time is the median
forward+backward over ``--repeats`` rounds.

The data (``--logits``): ``uniform`` is a randomly initialised model (logits ~N(0, 1), loss ~ ln V),
where no gradient entry is negligible, the worst case for CCE-style filtering; ``peaked`` is a
trained-model-like softmax (Zipf unigram prior plus context noise, targets lifted to a fixed
logit; see ``_inputs``), where most vocabulary columns of a token block are negligible. Both our
loss and cut-cross-entropy's filter on the same data. The parent prints the data's mean loss and
entropy and the share of vocabulary columns the filter keeps; ours' children print the share of
gradient entries they actually formed.

On a GPU (``--device cuda``; Gemma-2-like N=8192, D=2304, V=256000 in bf16 by default) the
cases are ours (Triton), cut-cross-entropy's ``cce`` and Liger-Kernel's fused loss when
installed, with memory from ``torch.cuda.max_memory_allocated``.

Run:
    .venv/bin/python benchmarks/linear_ce_memory.py
    .venv/bin/python benchmarks/linear_ce_memory.py --logits peaked
    .venv/bin/python benchmarks/linear_ce_memory.py --device cuda
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

MIB = 1024 * 1024
CPU_CASES = ["plain", "ours", "ours_recompute", "cce_torch_compile"]
# also runnable with --cases: ours_nofilter (filter_eps=None: what the filter saves, same data);
# the recompute path's own uses: ours_none (reduction="none", backward with an upstream gradient
# of ones) and ours_lse (mean loss plus a z-loss built outside from the returned lse, so a
# gradient flows through the lse), each also as *_nofilter
RECOMPUTE_CASES = ["ours_none", "ours_none_nofilter", "ours_lse", "ours_lse_nofilter"]
CUDA_CASES = ["plain", "ours", "cce", "liger"]


# --------------------------------------------------------------------------------------------
# the losses
# --------------------------------------------------------------------------------------------


def loss_fn(case: str) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    if case == "plain":
        return lambda e, c, t: F.cross_entropy((e @ c.T).float(), t)
    if case in ("ours", "ours_recompute", "ours_nofilter"):
        from tokenwise.training import linear_cross_entropy

        gif = False if case == "ours_recompute" else None
        eps = None if case == "ours_nofilter" else "auto"
        return lambda e, c, t: linear_cross_entropy(e, c, t, grad_in_forward=gif, filter_eps=eps)
    if case in RECOMPUTE_CASES:
        from tokenwise.training import linear_cross_entropy

        eps = None if case.endswith("_nofilter") else "auto"
        if case.startswith("ours_none"):
            # .sum() hands every token an upstream gradient of 1
            return lambda e, c, t: linear_cross_entropy(e, c, t, reduction="none",
                                                        filter_eps=eps).sum()

        def with_lse(e: torch.Tensor, c: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            loss, lse = linear_cross_entropy(e, c, t, return_lse=True, filter_eps=eps)
            return loss + 1e-4 * lse.square().mean()

        return with_lse
    if case in ("cce_torch_compile", "cce"):
        from cut_cross_entropy import linear_cross_entropy as cce_lce

        impl = "torch_compile" if case == "cce_torch_compile" else "cce"
        return lambda e, c, t: cce_lce(e, c, t, impl=impl)
    if case == "liger":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        module = LigerFusedLinearCrossEntropyLoss()
        return lambda e, c, t: module(c, e, t)
    raise ValueError(f"unknown case {case!r}")


# --------------------------------------------------------------------------------------------
# one case, in its own process
# --------------------------------------------------------------------------------------------


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> None:
    # "5" resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def _inputs(n: int, d: int, v: int, dtype: torch.dtype, device: str, seed: int = 0,
            logits: str = "uniform", peak: tuple[float, float, float] = (2.5, -7.0, 2.0)):
    """Benchmark data. ``uniform``: e ~ N(0, 1/D), c ~ N(0, 1), uniform targets, so the logits are
    ~N(0, 1) and the loss is about ln V (a randomly initialised model; nothing can be filtered).

    ``peaked`` (a trained-model-like softmax), with ``peak = (beta, delta, gamma)``: every row's
    logits are ``beta * log pi_j + gamma * g_ij`` off the target and ``delta + gamma * g_it`` at
    it, where ``pi`` is a Zipf(1) unigram distribution over the vocabulary in a random order, the
    targets are drawn from ``pi``, and ``g`` is standard normal context noise. Realised as
    ``e @ c.T`` with ``c = [log pi, x]`` (x ~ N(0, 1), D - 1 columns) and ``e = [beta, (delta -
    beta log pi_t) x_t / (D - 1) + gamma n / sqrt(D - 1)]`` (n ~ N(0, 1)), so the target's own
    row carries its logit up to about ``delta`` whatever its frequency, as a trained model does.
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    if logits == "uniform":
        e = (torch.randn(n, d, generator=gen, device=device) / d**0.5).to(dtype)
        c = torch.randn(v, d, generator=gen, device=device).to(dtype)
        t = torch.randint(0, v, (n,), generator=gen, device=device)
        return e.requires_grad_(), c.requires_grad_(), t
    if logits != "peaked":
        raise ValueError(f"logits must be 'uniform' or 'peaked', got {logits!r}")
    beta, delta, gamma = peak
    ranks = torch.randperm(v, generator=gen, device=device).double() + 1.0
    log_pi = -ranks.log()
    log_pi -= torch.logsumexp(log_pi, 0)  # (V,) Zipf(1), random vocabulary order
    t = torch.multinomial(log_pi.exp(), n, replacement=True, generator=gen)  # (N,)
    x = torch.randn(v, d - 1, generator=gen, device=device)  # (V, D-1)
    c = torch.cat([log_pi.float()[:, None], x], 1)  # (V, D)
    pull = (delta - beta * log_pi[t]).float()[:, None] / (d - 1)  # (N, 1)
    noise = torch.randn(n, d - 1, generator=gen, device=device) * (gamma / (d - 1) ** 0.5)
    e = torch.cat([torch.full((n, 1), beta, device=device), pull * x[t] + noise], 1)  # (N, D)
    return e.to(dtype).requires_grad_(), c.to(dtype).requires_grad_(), t


def softmax_stats(e: torch.Tensor, c: torch.Tensor, t: torch.Tensor, eps: float,
                  block: int = 128) -> dict:
    """Mean loss and entropy (nats) of the data, and the fraction of vocabulary columns that the
    column filter keeps per ``block``-row token block (some ``|p - onehot| >= eps``)."""
    loss = ent = kept = 0.0
    blocks = 0
    with torch.no_grad():
        for i0 in range(0, e.shape[0], block):
            logp = (e[i0:i0 + block].float() @ c.float().T).log_softmax(1)  # (b, V)
            rows = torch.arange(logp.shape[0])
            tgt = t[i0:i0 + block]
            loss -= logp[rows, tgt].sum().item()
            ent -= (logp.exp() * logp).sum().item()
            off = logp.clone()
            off[rows, tgt] = float("-inf")
            keep = off.amax(0) >= math.log(eps)
            keep[tgt[logp[rows, tgt] <= math.log1p(-eps)]] = True
            kept += keep.float().mean().item()
            blocks += 1
    return {"loss": loss / e.shape[0], "entropy": ent / e.shape[0], "kept": kept / blocks}


def run_case(case: str, n: int, d: int, v: int, dtype: torch.dtype, device: str,
             repeats: int, logits: str = "uniform",
             peak: tuple[float, float, float] = (2.5, -7.0, 2.0)) -> dict:
    fn = loss_fn(case)
    # warm-up: load kernels, compile, fill thread pools, on a problem too small to matter
    we, wc, wt = _inputs(64, d, 512, dtype, device, seed=1, logits=logits, peak=peak)
    for _ in range(2):
        fn(we, wc, wt).backward()
    del we, wc, wt
    e, c, t = _inputs(n, d, v, dtype, device, logits=logits, peak=peak)
    if device == "cuda":
        # once at the real shape, untimed: Triton tunes its tiles for a new shape (and its
        # benchmarking allocates a cache-flush buffer), which belongs to neither figure
        fn(e, c, t).backward()
        e.grad = c.grad = None
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        _reset_peak_rss()
        base = _rss_bytes("VmRSS")
    times, peak, loss_value = [], 0, float("nan")
    for _ in range(repeats):
        e.grad = c.grad = None
        gc.collect()
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = fn(e, c, t)
        loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        loss_value = loss.item()
        del loss
        peak = max(peak, torch.cuda.max_memory_allocated() if device == "cuda"
                   else _rss_bytes("VmHWM"))
    kept = tiles = configs = None
    if case.startswith("ours"):
        from tokenwise.training.linear_ce import _FILTER_STATS

        _FILTER_STATS.reset()
        if device == "cuda":
            from tokenwise.training import linear_ce_triton

            linear_ce_triton.TILE_STATS.reset()
        e.grad = c.grad = None
        fn(e, c, t).backward()  # once more, untimed, to read how much the filter kept
        kept = _FILTER_STATS.kept / _FILTER_STATS.total if _FILTER_STATS.total else None
        if device == "cuda":
            stats = linear_ce_triton.TILE_STATS
            tiles = {"tiles": stats.tiles, "kept": stats.kept} if stats.tiles else None
            configs = {f"{kind} {operands}": str(tuner.best_config)
                       for (kind, operands), tuner in linear_ce_triton._TUNERS.items()
                       if getattr(tuner, "best_config", None) is not None}
    grad_bytes = e.grad.numel() * e.grad.element_size() + c.grad.numel() * c.grad.element_size()
    return {"case": case, "peak_mib": (peak - base) / MIB, "time_s": statistics.median(times),
            "times_s": times, "loss": loss_value, "grad_mib": grad_bytes / MIB,
            "kept": kept, "tiles": tiles, "configs": configs}


# --------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------


def _available(case: str, device: str) -> str | None:
    """None if the case can run, else why not."""
    try:
        if case.startswith("cce"):
            import cut_cross_entropy  # noqa: F401
        if case == "liger":
            import liger_kernel  # noqa: F401
        if case == "ours" and device == "cuda":
            from tokenwise.training import linear_ce_triton

            if not linear_ce_triton.available():
                return "triton is not importable"
    except ImportError as err:
        return f"not installed ({err.name})"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--n", type=int)
    parser.add_argument("--d", type=int)
    parser.add_argument("--v", type=int)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=3, help="rounds (one process per case each)")
    parser.add_argument("--inner", type=int,
                        help="timed forward+backward passes inside each process (median); "
                        "default 1 on a CPU, 5 on a GPU, where one pass takes milliseconds and "
                        "the first pays for kernel caches")
    parser.add_argument("--cases", nargs="+")
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads in each case (default: torch's own choice)")
    parser.add_argument("--logits", choices=["uniform", "peaked"], default="uniform",
                        help="uniform: random init, loss ~ ln V (worst case for filtering); "
                        "peaked: trained-model-like softmax (see _inputs)")
    parser.add_argument("--peak", type=float, nargs=3, default=[2.5, -7.0, 2.0],
                        metavar=("BETA", "DELTA", "GAMMA"),
                        help="peaked data: Zipf prior scale, target logit, noise std")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    n = args.n or (8192 if cuda else 4096)
    d = args.d or (2304 if cuda else 1024)
    v = args.v or (256000 if cuda else 65536)
    dtype = getattr(torch, args.dtype or ("bfloat16" if cuda else "float32"))

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        result = run_case(args.child, n, d, v, dtype, args.device, args.repeats, args.logits,
                          tuple(args.peak))
        print("RESULT " + json.dumps(result))
        return 0

    if cuda and not torch.cuda.is_available():
        print("skipped: --device cuda needs a CUDA device, and torch sees none")
        return 0
    cases = args.cases or (CUDA_CASES if cuda else CPU_CASES)
    inner = args.inner or (5 if cuda else 1)
    grad_mib = (n * d + v * d) * torch.finfo(dtype).bits / 8 / MIB
    print(f"device={args.device} N={n} D={d} V={v} dtype={dtype} repeats={args.repeats} "
          f"inner={inner} threads={torch.get_num_threads()} logits={args.logits}"
          f"{' peak=' + str(args.peak) if args.logits == 'peaked' else ''}; "
          f"gradients' own size {grad_mib:.0f} MiB")
    if not cuda:
        from tokenwise.training import resolve_filter_eps

        se, sc, st = _inputs(n, d, v, dtype, args.device, logits=args.logits,
                             peak=tuple(args.peak))
        stats = softmax_stats(se, sc, st, resolve_filter_eps("auto", dtype))
        del se, sc, st
        print(f"data: mean loss {stats['loss']:.2f} nats, mean entropy {stats['entropy']:.2f} "
              f"nats, vocabulary columns kept by the filter per 128-row block "
              f"{100 * stats['kept']:.1f}%", flush=True)
    runnable = []
    for case in cases:
        why = _available(case, args.device)
        if why:
            print(f"  {case}: skipped ({why})")
        else:
            runnable.append(case)
    # round-robin: one fresh process per case per round, so load drifting on a shared machine
    # hits every case alike
    runs: dict[str, list[dict]] = {case: [] for case in runnable}
    for round_no in range(args.repeats):
        for case in runnable:
            cmd = [sys.executable, os.path.abspath(__file__), "--child", case, "--device",
                   args.device, "--n", str(n), "--d", str(d), "--v", str(v), "--dtype",
                   str(dtype).removeprefix("torch."), "--repeats", str(inner),
                   "--logits", args.logits,
                   "--peak", *map(str, args.peak)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                print(f"  {case}: failed ({' | '.join(tail)})")
                continue
            one = json.loads(lines[-1].removeprefix("RESULT "))
            runs[case].append(one)
            kept = "" if one["kept"] is None else f", gradient entries kept {one['kept']:.3f}"
            if one.get("tiles"):
                kept += f", tiles kept {one['tiles']['kept']} of {one['tiles']['tiles']}"
            if one.get("configs"):
                kept += f", tiles chosen {one['configs']}"
            print(f"  round {round_no + 1} {case}: peak {one['peak_mib']:.0f} MiB, "
                  f"{one['time_s']:.4f} s, loss {one['loss']:.5f}{kept}", flush=True)
    results = []
    for case, got in runs.items():
        if got:
            results.append({"case": case, "peak_mib": max(r["peak_mib"] for r in got),
                            "time_s": statistics.median(r["time_s"] for r in got),
                            "times_s": [r["time_s"] for r in got]})

    by_case = {r["case"]: r for r in results}
    plain = by_case.get("plain")
    print()
    print(f"| case | peak beyond inputs (MiB) | / gradients ({grad_mib:.0f} MiB) | "
          "fwd+bwd median (s) | time / plain |")
    print("|---|---|---|---|---|")
    for r in results:
        ratio = f"{r['time_s'] / plain['time_s']:.2f}" if plain else "n/a"
        print(f"| {r['case']} | {r['peak_mib']:.0f} | {r['peak_mib'] / grad_mib:.2f} | "
              f"{r['time_s']:.4f} ({', '.join(f'{x:.4f}' for x in r['times_s'])}) | {ratio} |")
    ours = by_case.get("ours")
    cce, liger = by_case.get("cce"), by_case.get("liger")
    if cuda and ours and cce:  # issue 25's targets, same run, same GPU
        print(f"\ntarget time <= 1.0x cce: "
              f"{'met' if ours['time_s'] <= cce['time_s'] else 'NOT met'} "
              f"({ours['time_s'] / cce['time_s']:.2f}x); target memory <= 1.05x gradients: "
              f"{'met' if ours['peak_mib'] <= 1.05 * grad_mib else 'NOT met'} "
              f"({ours['peak_mib'] / grad_mib:.2f}x)"
              + (f"; faster than Liger: {'yes' if ours['time_s'] < liger['time_s'] else 'NO'} "
                 f"({ours['time_s'] / liger['time_s']:.2f}x its time)" if liger else ""))
    if ours and plain and not cuda:
        mem_ok = ours["peak_mib"] <= 1.2 * grad_mib
        time_ok = ours["time_s"] <= 0.85 * plain["time_s"]
        print(f"\ntarget memory <= 1.2x gradients: {'met' if mem_ok else 'NOT met'} "
              f"({ours['peak_mib'] / grad_mib:.2f}x); target time <= 0.85x plain: "
              f"{'met' if time_ok else 'NOT met'} ({ours['time_s'] / plain['time_s']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

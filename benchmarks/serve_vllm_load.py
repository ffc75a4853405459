"""Load test of `tokenwise serve --engine vllm` against the embedded engine (same load).

The load of ``benchmarks/serve_load.py``: ``--clients`` asyncio clients (the real
``openai.AsyncOpenAI``) each send ``--requests`` chat completions one after another
(seeded sampling at temperature 1, ``max_tokens`` tokens, logprobs on, so every token's
entropy is computed: on vLLM from full-vocabulary logprobs). Each engine runs in its own
server process on loopback (tw-small, float32). Asserted per engine: zero errors, every
request answered once with as many logprob entries as completion tokens. Answers are not
compared between engines: the same seed draws from another random stream in vLLM.
Reported: server start-up seconds, p50/p99 latency, requests/s, tokens/s, and the ratios.

Run (needs vLLM; the vLLM venv has both engines):
    /work/venv-vllm/bin/python benchmarks/serve_vllm_load.py [--clients 16] [--requests 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import KEY, free_port, run_clients, workload

VLLM_ARGS = ["--engine", "vllm", "--gpu-memory-utilization", "0.3", "--max-model-len", "256",
             "--dtype", "float32", "--enforce-eager"]


def start(engine: str, port: int, threads: int, max_rows: int) -> tuple[subprocess.Popen,
                                                                         float]:
    args = ["--model", "tw-small", "--port", str(port), "--api-key", KEY, "--log-level",
            "warning", "--max-batch-rows", str(max_rows)]
    if engine == "vllm":
        args += VLLM_ARGS
    code = "import sys; from tokenwise.cli.serve import serve_command; serve_command(sys.argv[1:])"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    began = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, *args], env=env)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).is_success:
                return proc, time.perf_counter() - began
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"{engine} server exited with {proc.returncode}")
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{engine} server did not start within 600 s")


def measure(engine: str, plan: list, max_tokens: int, threads: int, max_rows: int) -> dict:
    port = free_port()
    proc, startup = start(engine, port, threads, max_rows)
    url = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(run_clients(url, [[("7+5=", 1)]] * 4, max_tokens))  # warm-up
        result = asyncio.run(run_clients(url, plan, max_tokens))
        server = httpx.get(url + "/tokenwise/stats", headers={"Authorization": f"Bearer {KEY}"},
                           timeout=10).json()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    lat = np.array(result["latencies"])
    tokens = sum(n for _, n in result["answers"].values())
    return {"engine": engine, "startup_s": startup, "requests": sum(len(r) for r in plan),
            "answered": len(result["answers"]), "n_errors": len(result["errors"]),
            "errors": result["errors"][:5], "wall_s": result["wall"],
            "p50_s": float(np.percentile(lat, 50)), "p99_s": float(np.percentile(lat, 99)),
            "requests_per_s": len(lat) / result["wall"], "tokens_per_s": tokens / result["wall"],
            "completion_tokens": tokens, "server_stats": server}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=5, help="per client")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per server")
    parser.add_argument("--max-rows", type=int, default=64, help="most sequences per batch")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    plan = workload(args.clients, args.requests)
    results = {}
    for engine in ("tokenwise", "vllm"):
        r = measure(engine, plan, args.max_tokens, args.threads, args.max_rows)
        results[engine] = r
        print(f"{engine:9s}: start-up {r['startup_s']:.1f} s | {r['answered']}/{r['requests']} "
              f"answered, {r['n_errors']} errors | p50 {1000 * r['p50_s']:.0f} ms, "
              f"p99 {1000 * r['p99_s']:.0f} ms | {r['requests_per_s']:.1f} req/s, "
              f"{r['tokens_per_s']:.0f} tok/s")
    ours, theirs = results["tokenwise"], results["vllm"]
    results["ratio"] = {"throughput_vllm_over_tokenwise":
                        theirs["requests_per_s"] / ours["requests_per_s"],
                        "p50_tokenwise_over_vllm": ours["p50_s"] / theirs["p50_s"]}
    print(f"vllm vs tokenwise engine: throughput x"
          f"{results['ratio']['throughput_vllm_over_tokenwise']:.2f}, p50 latency /"
          f"{results['ratio']['p50_tokenwise_over_vllm']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    for r in (ours, theirs):
        assert r["n_errors"] == 0, r["errors"]
        assert r["answered"] == r["requests"], "requests lost"


if __name__ == "__main__":
    main()

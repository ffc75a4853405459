"""Load test of `tokenwise serve`: concurrent OpenAI clients, batching on vs off.

For each mode the server runs in its own process on loopback (tw-small); ``--clients``
asyncio clients (the real ``openai.AsyncOpenAI``) each send ``--requests`` chat completions
one after another (seeded sampling, ``max_tokens`` tokens, logprobs on). Asserted, per
mode: zero errors; every request answered exactly once, with as many logprob entries as
completion tokens; and every answer equal to the same prompt and seed decoded alone in this
process (so batching neither loses nor mixes up anything). Reported: p50/p99 latency,
requests/s and tokens/s, the server's mean batch size; then the on/off ratios.

Run:
    .venv/bin/python benchmarks/serve_load.py [--clients 32] [--requests 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import openai

import tokenwise as tw
from tokenwise.sampling import Temperature

QUESTIONS = ["Where was Tavoun born?", "What is the pet of Brelix?", "7+5=", "31+18=",
             "Who is the friend of Velmora?", "What does Trodrous do?"]
KEY = "bench-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, batching: bool, threads: int) -> subprocess.Popen:
    args = ["--model", "tw-small", "--port", str(port), "--api-key", KEY, "--log-level",
            "warning", "--max-batch-rows", "64"]
    if not batching:
        args.append("--no-batching")
    code = "import sys; from tokenwise.cli.serve import serve_command; serve_command(sys.argv[1:])"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code, *args], env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).is_success:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not start within 120 s")


def workload(clients: int, requests: int) -> list[list[tuple[str, int]]]:
    """Per client, its (question, seed) requests."""
    return [[(QUESTIONS[(c + r) % len(QUESTIONS)], 1000 * c + r) for r in range(requests)]
            for c in range(clients)]


async def run_clients(url: str, plan: list[list[tuple[str, int]]], max_tokens: int) -> dict:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=300)
    latencies: list[float] = []
    answers: dict[int, tuple[str, int]] = {}
    errors: list[str] = []

    async def one_client(requests: list[tuple[str, int]]) -> None:
        for question, seed in requests:
            start = time.perf_counter()
            try:
                r = await client.chat.completions.create(
                    model="tw-small", messages=[{"role": "user", "content": question}],
                    max_tokens=max_tokens, temperature=1.0, seed=seed, logprobs=True)
            except openai.APIError as exc:
                errors.append(f"seed {seed}: {exc}")
                continue
            latencies.append(time.perf_counter() - start)
            choice = r.choices[0]
            n_lp = len(choice.logprobs.content) if choice.logprobs else 0
            if n_lp != r.usage.completion_tokens or choice.finish_reason not in ("stop",
                                                                                  "length"):
                errors.append(f"seed {seed}: incomplete answer ({n_lp} logprobs, "
                              f"{r.usage.completion_tokens} tokens, {choice.finish_reason})")
            if seed in answers:
                errors.append(f"seed {seed}: answered twice")
            answers[seed] = (choice.message.content, r.usage.completion_tokens)

    start = time.perf_counter()
    await asyncio.gather(*(one_client(reqs) for reqs in plan))
    wall = time.perf_counter() - start
    await client.close()
    return {"latencies": latencies, "answers": answers, "errors": errors, "wall": wall}


def solo_answers(plan: list[list[tuple[str, int]]], max_tokens: int) -> dict[int, str]:
    """Every request decoded in this process (tw.generate, same prompt format and seed)."""
    lm = tw.load("tw-small")
    flat = [req for reqs in plan for req in reqs]
    out = {}
    for i in range(0, len(flat), 64):
        chunk = flat[i:i + 64]
        gens = tw.generate(lm, [f"Q: {q}\nA:" for q, _ in chunk], Temperature(1.0),
                           seed=[s for _, s in chunk], max_new_tokens=max_tokens, stop="\n")
        out.update({s: g.text for (_, s), g in zip(chunk, gens, strict=True)})
    return out


def measure(batching: bool, plan: list, max_tokens: int, threads: int,
            reference: dict[int, str]) -> dict:
    port = free_port()
    proc = start_server(port, batching, threads)
    url = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(run_clients(url, [[(QUESTIONS[0], 1)]] * 4, max_tokens))  # warm-up
        result = asyncio.run(run_clients(url, plan, max_tokens))
        server_stats = httpx.get(url + "/tokenwise/stats",
                                 headers={"Authorization": f"Bearer {KEY}"}).json()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    expected = sum(len(reqs) for reqs in plan)
    wrong = [s for s, (text, _) in result["answers"].items() if text != reference[s]]
    lat = np.array(result["latencies"])
    tokens = sum(n for _, n in result["answers"].values())
    return {"batching": batching, "requests": expected, "answered": len(result["answers"]),
            "errors": result["errors"][:5], "n_errors": len(result["errors"]),
            "mismatched": len(wrong), "wall_s": result["wall"],
            "p50_s": float(np.percentile(lat, 50)), "p99_s": float(np.percentile(lat, 99)),
            "requests_per_s": len(lat) / result["wall"], "tokens_per_s": tokens / result["wall"],
            "completion_tokens": tokens,
            "mean_batch_rows": server_stats["mean_batch_rows"],
            "engine_busy_s": server_stats["engine_busy_s"],
            "largest_batch": server_stats["largest_batch"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=20, help="per client")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    plan = workload(args.clients, args.requests)
    reference = solo_answers(plan, args.max_tokens)
    results = {}
    for batching in (True, False):
        r = measure(batching, plan, args.max_tokens, args.threads, reference)
        results["on" if batching else "off"] = r
        print(f"batching {'on ' if batching else 'off'}: {r['answered']}/{r['requests']} "
              f"answered, {r['n_errors']} errors, {r['mismatched']} differ from solo | "
              f"p50 {1000 * r['p50_s']:.0f} ms, p99 {1000 * r['p99_s']:.0f} ms | "
              f"{r['requests_per_s']:.1f} req/s, {r['tokens_per_s']:.0f} tok/s | "
              f"mean batch {r['mean_batch_rows']:.1f} rows (largest {r['largest_batch']}), "
              f"engine busy {r['engine_busy_s']:.1f} s of {r['wall_s']:.1f} s")
    on, off = results["on"], results["off"]
    results["ratio"] = {"throughput_on_over_off": on["requests_per_s"] / off["requests_per_s"],
                        "p50_off_over_on": off["p50_s"] / on["p50_s"],
                        "p99_off_over_on": off["p99_s"] / on["p99_s"]}
    print(f"batching on vs off: throughput x{results['ratio']['throughput_on_over_off']:.2f}, "
          f"p50 latency /{results['ratio']['p50_off_over_on']:.2f}, "
          f"p99 latency /{results['ratio']['p99_off_over_on']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    for r in (on, off):
        assert r["n_errors"] == 0, r["errors"]
        assert r["answered"] == r["requests"], "requests lost"
        assert r["mismatched"] == 0, "answers differ from solo decoding"


if __name__ == "__main__":
    main()

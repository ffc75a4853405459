"""Load test of `tokenwise serve`: concurrent OpenAI clients, batching on vs off.

For each mode the server runs in its own process on loopback (tw-small); ``--clients``
asyncio clients (the real ``openai.AsyncOpenAI``) each send ``--requests`` chat completions
one after another (seeded sampling, ``max_tokens`` tokens, logprobs on). Asserted, per
mode: zero errors; every request answered exactly once, with as many logprob entries as
completion tokens; and every answer equal to the same prompt and seed decoded alone in this
process (so batching neither loses nor mixes up anything). Reported: p50/p99 latency,
requests/s and tokens/s, the server's mean batch size; then the on/off ratios.

``--compare-metrics`` measures what ``GET /metrics`` costs instead: two servers (tw-small,
batching on), one with metrics and one with ``--no-metrics``, both up for the whole run;
``--rounds`` rounds, each sending the same workload to both, one after the other, the order
alternating (on, off; off, on; ...), so that the machine's drift hits both alike. While the
metrics server works, a scraper reads ``/metrics`` every ``--scrape-every`` seconds (the
collection is part of the cost). Asserted: zero errors, every request answered, the two
servers' answers identical, and the scraped token and request counters equal to what the
clients received. Reported: each round's throughput ratio (metrics on / off, requests/s)
and their median, min and max.

Run:
    .venv/bin/python benchmarks/serve_load.py [--clients 32] [--requests 20] [--json out.json]
    .venv/bin/python benchmarks/serve_load.py --compare-metrics [--rounds 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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


def start_server(port: int, batching: bool, threads: int,
                 metrics: bool = True) -> subprocess.Popen:
    args = ["--model", "tw-small", "--port", str(port), "--api-key", KEY, "--log-level",
            "warning", "--max-batch-rows", "64"]
    if not batching:
        args.append("--no-batching")
    if not metrics:
        args.append("--no-metrics")
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


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``url``'s ``/metrics``: (name, sorted labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    r = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    r.raise_for_status()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def counted(samples: dict, name: str, **labels: str) -> float:
    """Sum of ``name`` over the series whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


async def scraping(url: str, every_s: float, stop: asyncio.Event) -> int:
    """Read ``/metrics`` every ``every_s`` seconds until ``stop``; how many scrapes."""
    done = 0
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}) as http:
        while not stop.is_set():
            (await http.get(url + "/metrics", timeout=30)).raise_for_status()
            done += 1
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
    return done


async def scraped_round(url: str, plan: list, max_tokens: int, every_s: float) -> dict:
    """One round of the workload, with a scraper beside it when ``every_s`` > 0."""
    stop = asyncio.Event()
    scraper = asyncio.ensure_future(scraping(url, every_s, stop)) if every_s > 0 else None
    try:
        result = await run_clients(url, plan, max_tokens)
    finally:
        stop.set()
    result["scrapes"] = await scraper if scraper is not None else 0
    return result


def metrics_cost_us(requests: int = 3000, tokens: int = 16) -> dict[str, float]:
    """In-process microseconds the metrics add per request and per scrape (no server): the
    backend wrapper over one request's events (``tokens`` token events and a finish, plain
    and streamed), the middleware around a trivial ASGI app, and one scrape's rendering.
    A steadier figure than the throughput ratio on a busy machine: multiplied by the
    requests per second it is the share of one core the metrics take."""
    from types import SimpleNamespace

    from tokenwise.serving.engine import FinishEvent, TokenEvent
    from tokenwise.serving.logprobs import WireToken
    from tokenwise.serving.metrics import MetricsMiddleware, ServingMetrics

    metrics = ServingMetrics(["tw-small"])
    token = TokenEvent(WireToken(7, "a", [97], -0.5, 1.2), "a")
    finish = FinishEvent("length", "", "a" * tokens, tokens)

    async def events():
        for _ in range(tokens):
            yield 0, token
        yield 0, finish

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def nothing(message):
        return None

    scope = {"type": "http", "path": "/v1/chat/completions", "method": "POST"}
    middleware = MetricsMiddleware(app, metrics)
    metrics.known_paths = frozenset({"/v1/chat/completions"})

    async def timed(stream: bool | None) -> float:
        plan = SimpleNamespace(model="tw-small", kind="chat", stream=bool(stream),
                               prompt_tokens=[12], choices=1)
        start = time.perf_counter()
        for _ in range(requests):
            if stream is None:
                async for _ in events():
                    pass
            else:
                async for _ in metrics.measure(plan, events()):
                    pass
        return (time.perf_counter() - start) / requests * 1e6

    async def timed_http(target) -> float:
        start = time.perf_counter()
        for _ in range(requests):
            await target(dict(scope), None, nothing)
        return (time.perf_counter() - start) / requests * 1e6

    async def all_of_it() -> dict[str, float]:
        bare = min([await timed(None) for _ in range(3)])
        plain = min([await timed(False) for _ in range(3)]) - bare
        streamed = min([await timed(True) for _ in range(3)]) - bare
        http = min([await timed_http(middleware) for _ in range(3)]) - \
            min([await timed_http(app) for _ in range(3)])
        return {"wrapper_plain_us": plain, "wrapper_streamed_us": streamed,
                "middleware_us": http}

    out = asyncio.run(all_of_it())
    start = time.perf_counter()
    for _ in range(100):
        metrics.render()
    out["scrape_render_us"] = (time.perf_counter() - start) / 100 * 1e6
    out["tokens_per_request"] = tokens
    return out


def cpu_seconds(pid: int) -> float | None:
    """CPU seconds (user + system, all threads) a process has used; None off Linux."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def compare_metrics(plan: list, max_tokens: int, threads: int, rounds: int,
                    every_s: float) -> dict:
    """Throughput with metrics on vs off: two servers, interleaved rounds."""
    ports = {"on": free_port(), "off": free_port()}
    procs = {mode: start_server(port, True, threads, metrics=mode == "on")
             for mode, port in ports.items()}
    urls = {mode: f"http://127.0.0.1:{port}" for mode, port in ports.items()}
    per_round: list[dict] = []
    answers: dict[str, dict[int, tuple[str, int]]] = {"on": {}, "off": {}}
    errors: list[str] = []
    try:
        for url in urls.values():
            asyncio.run(run_clients(url, [[(QUESTIONS[0], 1)]] * 4, max_tokens))  # warm-up
        before = scrape(urls["on"])
        for k in range(rounds):
            row = {}
            for mode in (("on", "off") if k % 2 == 0 else ("off", "on")):
                every = every_s if mode == "on" else 0.0
                cpu = cpu_seconds(procs[mode].pid)
                r = asyncio.run(scraped_round(urls[mode], plan, max_tokens, every))
                cpu_after = cpu_seconds(procs[mode].pid)
                used = None if cpu is None or cpu_after is None else cpu_after - cpu
                errors += [f"{mode} round {k}: {e}" for e in r["errors"]]
                if k == 0:
                    answers[mode] = r["answers"]
                elif r["answers"] != answers[mode]:
                    errors.append(f"{mode} round {k}: answers differ from round 0")
                row[mode] = {"requests_per_s": len(r["latencies"]) / r["wall"],
                             "tokens_per_s": sum(n for _, n in r["answers"].values()) / r["wall"],
                             "p50_s": float(np.percentile(r["latencies"], 50)),
                             "wall_s": r["wall"], "answered": len(r["answers"]),
                             "scrapes": r["scrapes"], "server_cpu_s": used}
            row["ratio"] = row["on"]["requests_per_s"] / row["off"]["requests_per_s"]
            if used is not None:  # server CPU per request, on / off (> 1: metrics cost CPU)
                row["cpu_ratio"] = row["on"]["server_cpu_s"] / row["off"]["server_cpu_s"]
            per_round.append(row)
            print(f"round {k}: on {row['on']['requests_per_s']:.1f} req/s, off "
                  f"{row['off']['requests_per_s']:.1f} req/s, on/off {row['ratio']:.3f} "
                  f"({row['on']['scrapes']} scrapes); server CPU on/off "
                  f"{row.get('cpu_ratio', float('nan')):.3f}", flush=True)
        after = scrape(urls["on"])
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(timeout=30)
    expected = sum(len(reqs) for reqs in plan)
    if answers["on"] != answers["off"]:
        errors.append("the metrics server's answers differ from the other's")
    tokens = sum(n for _, n in answers["on"].values()) * rounds
    grew = {name: counted(after, name, **labels) - counted(before, name, **labels)
            for name, labels in (("tokenwise_completion_tokens_total", {}),
                                 ("tokenwise_http_requests_total",
                                  {"endpoint": "/v1/chat/completions", "status": "200"}))}
    if grew["tokenwise_completion_tokens_total"] != tokens:
        errors.append(f"scraped completion tokens {grew['tokenwise_completion_tokens_total']}"
                      f" != {tokens} received")
    if grew["tokenwise_http_requests_total"] != expected * rounds:
        errors.append(f"scraped requests {grew['tokenwise_http_requests_total']} != "
                      f"{expected * rounds} sent")
    ratios = np.array([row["ratio"] for row in per_round])
    cpu = np.array([row["cpu_ratio"] for row in per_round if "cpu_ratio" in row])
    if cpu.size:
        cpu_summary = {"cpu_ratio_median": float(np.median(cpu)),
                       "cpu_ratio_min": float(cpu.min()), "cpu_ratio_max": float(cpu.max())}
    else:
        cpu_summary = {}
    return {**cpu_summary,"rounds": per_round, "requests_per_round": expected, "errors": errors[:5],
            "n_errors": len(errors), "scrape_every_s": every_s,
            "ratio_median": float(np.median(ratios)), "ratio_min": float(ratios.min()),
            "ratio_quartiles": [float(np.percentile(ratios, 25)),
                                float(np.percentile(ratios, 75))],
            "ratio_max": float(ratios.max()),
            "ratio_pooled": sum(r["on"]["requests_per_s"] for r in per_round)
            / sum(r["off"]["requests_per_s"] for r in per_round),
            "counted": grew}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=20, help="per client")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--compare-metrics", action="store_true",
                        help="measure GET /metrics' cost (on vs off) instead of batching's")
    parser.add_argument("--rounds", type=int, default=8,
                        help="--compare-metrics: interleaved rounds")
    parser.add_argument("--scrape-every", type=float, default=1.0,
                        help="--compare-metrics: seconds between scrapes (0: none)")
    args = parser.parse_args()
    plan = workload(args.clients, args.requests)
    if args.compare_metrics:
        run_compare(args, plan)
        return
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


def run_compare(args: argparse.Namespace, plan: list) -> None:
    """``--compare-metrics``: print, write and check the on/off comparison."""
    cost = metrics_cost_us(tokens=args.max_tokens)
    print(f"in-process metrics cost per request: wrapper {cost['wrapper_plain_us']:.1f} us "
          f"(streamed {cost['wrapper_streamed_us']:.1f} us), middleware "
          f"{cost['middleware_us']:.1f} us; one scrape {cost['scrape_render_us']:.0f} us",
          flush=True)
    r = compare_metrics(plan, args.max_tokens, args.threads, args.rounds, args.scrape_every)
    r["in_process_cost_us"] = cost
    per_request = cost["wrapper_plain_us"] + cost["middleware_us"]
    rps = float(np.median([row["off"]["requests_per_s"] for row in r["rounds"]]))
    # the event loop's added work per second of serving, from the in-process cost
    r["predicted_overhead"] = per_request * 1e-6 * rps + \
        (cost["scrape_render_us"] * 1e-6 / args.scrape_every if args.scrape_every > 0 else 0.0)
    r["settings"] = {"clients": args.clients, "requests": args.requests,
                     "max_tokens": args.max_tokens, "threads": args.threads,
                     "rounds": args.rounds, "scrape_every_s": args.scrape_every,
                     "model": "tw-small", "batching": True}
    print(f"metrics on / off throughput over {args.rounds} rounds: median "
          f"{r['ratio_median']:.3f} (min {r['ratio_min']:.3f}, max {r['ratio_max']:.3f}), "
          f"pooled {r['ratio_pooled']:.3f}; server CPU per round on / off: median "
          f"{r.get('cpu_ratio_median', float('nan')):.3f} (min "
          f"{r.get('cpu_ratio_min', float('nan')):.3f}, max "
          f"{r.get('cpu_ratio_max', float('nan')):.3f}); {r['n_errors']} errors; predicted "
          f"from the in-process cost: {100 * r['predicted_overhead']:.3f}% of a core")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2) + "\n")
    assert r["n_errors"] == 0, r["errors"]


if __name__ == "__main__":
    main()

"""Soak test of `tokenwise serve`: a mixed workload from many clients for a long time.

The server runs as a subprocess (``tokenwise serve`` on loopback, an API key, warnings only)
so that its resident memory can be read from ``/proc/<pid>/status``. ``--clients`` asyncio
clients (httpx, one shared connection pool) each send one request after another, with no
pause, for ``--duration-s`` seconds. Each request's kind is drawn (seeded) from a fixed mix:

* chat and completions, plain and streamed (``stream_options.include_usage``);
* ``n > 1`` with ``logprobs`` / ``top_logprobs``; completions with two prompts, ``echo``;
* ``tokenwise.compress`` (every compression method), ``tokenwise.uncertainty`` (every
  estimator the server offers), ``tokenwise.ead`` (when a second model with the same
  vocabulary is served);
* bad requests (unknown field, wrong type, out-of-range numbers, unknown model, bad JSON,
  missing key, ...): a 4xx is expected, a 5xx or a 200 is not;
* clients that leave: a stream closed after its first chunks, a plain request abandoned
  after a fraction of a second.

Every request's kind, status, latency and error kind is recorded (``<out>.requests.jsonl``);
every ``--sample-s`` seconds the server's RSS, its CPU seconds and the machine's load
average. An error is *unexpected* when the client did not cause it: any 5xx, an error event
inside a stream, a dropped connection, a client time-out, a malformed answer (wrong number
of choices, missing logprobs or ``tokenwise`` fields, a stream without ``[DONE]``), or a bad
request that was accepted. 429s (backpressure) are counted apart.

Reported (JSON at ``--out``, a PNG at ``--png``): requests answered, errors by kind, p50/p99
latency of the answered good requests per minute and per kind, the machine's load per
minute, RSS over time, and the targets: 0 unexpected errors; p99 of the last window within
1.2x of the first window *after warm-up* (``[warmup, warmup + window)`` vs
``[duration - window, duration)``; the raw first window ``[0, window)`` is reported too);
RSS growth after warm-up < 5% (median RSS over the minute after warm-up vs over the last
minute; the least-squares slope after warm-up is reported beside it). Latencies on a shared
machine move with its load: read the p99 ratio beside the load averages of both windows.

Run (the soak in BENCHMARKS.md; built-in models):
    nice -n 5 .venv/bin/python benchmarks/serve_soak.py --duration-s 1800 --clients 32 \\
        --out soak.json --png soak.png
A real model (Q4 GGUF weights dequantised, loaded offline from ~/.cache/tokenwise; half
the heavy requests, shorter answers):
    nice -n 5 .venv/bin/python benchmarks/serve_soak.py --model smollm2-135m \\
        --duration-s 600 --max-tokens 6 --mix uncertainty=3 --mix compress=3 \\
        --warmup-s 120 --window-s 240 --out soak_real.json --png soak_real.png

The server runs with ``OMP_NUM_THREADS=1`` (``--threads``): on a machine shared with other
jobs, torch's spinning intra-op threads made decoding an order of magnitude slower.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

KEY = "soak-key"
REPO = Path(__file__).resolve().parents[1]

QUESTIONS = ["Where was Tavoun born?", "What is the pet of Brelix?", "7+5=", "31+18=",
             "Who is the friend of Velmora?", "What does Trodrous do?",
             "What is the capital of France?", "Name a colour of the sky."]
CONTEXT = ("Tavoun was born in Velmora, a town by the river. Brelix keeps a cat called Miro and "
           "works as a baker. Trodrous repairs clocks in the old market, and Velmora's friend "
           "is Osk, who sails. The market opens at seven and closes at noon on Sundays. ")
COMPRESS_METHODS = ["extractive", "generative", "perplexity", "selective_context",
                    "token_classifier"]
UNCERTAINTY_METHODS = ["discrete_semantic_entropy", "eigenscore",
                       "maximum_sequence_probability", "mean_token_entropy",
                       "num_semantic_sets", "predictive_entropy",
                       "predictive_entropy_normalised", "semantic_entropy", "semantic_volume"]

#: kind -> weight of the mix (ead is dropped when no EAD pair is served)
MIX = {"chat": 16, "chat_stream": 14, "completion": 9, "completion_stream": 8,
       "chat_n_logprobs": 8, "completion_logprobs": 6, "compress": 6, "uncertainty": 6,
       "ead": 6, "bad": 11, "disconnect_stream": 5, "disconnect_plain": 3}
#: statuses a bad request may get (401 missing key, 404 unknown model, 405 wrong method)
BAD_OK = {400, 401, 404, 405, 413, 422}


@dataclass
class Rec:
    """One request's outcome."""

    t: float  # seconds since the soak began, at send
    kind: str
    status: int | None
    latency: float
    error: str | None = None  # None: as expected
    expected: bool = True
    detail: str | None = None
    sub: str | None = None  # which bad request / which option


@dataclass
class Sample:
    t: float
    rss_mb: float
    cpu_s: float | None
    load1: float
    load5: float


@dataclass
class State:
    recs: list[Rec] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    #: (t, /tokenwise/stats) every few samples: queue depth and counters over time
    stats: list[tuple[float, dict[str, Any]]] = field(default_factory=list)


# ----------------------------------------------------------------- the server subprocess

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(models: list[str], port: int, log_path: Path, extra: list[str],
                 threads: int) -> tuple[subprocess.Popen, list[str]]:
    args = ["--port", str(port), "--api-key", KEY, "--log-level", "warning", *extra]
    for m in models:
        args += ["--model", m]
    code = "import sys; from tokenwise.cli.serve import serve_command; serve_command(sys.argv[1:])"
    cmd = [sys.executable, "-c", code, *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if threads > 0:  # torch's intra-op threads spin; on an oversubscribed machine, 1 is faster
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    log = open(log_path, "w")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).is_success:
                return proc, ["tokenwise serve", *args]
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}; see {log_path}")
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"server did not start within 300 s; see {log_path}")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loadavg() -> tuple[float, float]:
    parts = Path("/proc/loadavg").read_text().split()
    return float(parts[0]), float(parts[1])


def git(*args: str) -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"git failed: {exc}"


# ----------------------------------------------------------------- the requests

class Workload:
    """Draws requests: (kind, sub, method, path, body or raw bytes, headers, check)."""

    def __init__(self, models: list[str], ead_pair: tuple[str, str] | None, max_tokens: int,
                 limit: int, first_share: float = 0.75,
                 weights: dict[str, float] | None = None) -> None:
        self.models = models
        self.first_share = first_share
        self.ead_pair = ead_pair
        self.max_tokens = max_tokens
        self.limit = limit
        mix = {**MIX, **(weights or {})}
        if ead_pair is None:
            mix.pop("ead")
        mix = {k: w for k, w in mix.items() if w > 0}
        self.kinds = list(mix)
        self.weights = list(mix.values())

    def draw(self, rng: random.Random) -> dict[str, Any]:
        kind = rng.choices(self.kinds, self.weights)[0]
        # the first model most of the time: on a 2-core machine the larger one is the cost
        model = self.models[0] if len(self.models) == 1 or rng.random() < self.first_share \
            else rng.choice(self.models[1:])
        mt = rng.randint(max(2, self.max_tokens // 4), self.max_tokens)
        q = rng.choice(QUESTIONS)
        seed = rng.randrange(1_000_000)
        chat = {"model": model, "messages": [{"role": "user", "content": q}],
                "max_tokens": mt, "temperature": 1.0, "seed": seed}
        comp = {"model": model, "prompt": f"Q: {q}\nA:", "max_tokens": mt,
                "temperature": 1.0, "seed": seed, "stop": "\n"}
        req: dict[str, Any] = {"kind": kind, "sub": None, "method": "POST",
                               "path": "/v1/chat/completions", "choices": 1, "stream": False}
        if kind == "chat":
            req["body"] = chat
        elif kind == "chat_stream":
            req.update(body={**chat, "stream": True,
                             "stream_options": {"include_usage": True}}, stream=True)
        elif kind == "completion":
            prompts = rng.choice([1, 2])
            body = dict(comp)
            if prompts == 2:
                body["prompt"] = [f"Q: {q}\nA:", f"Q: {rng.choice(QUESTIONS)}\nA:"]
            req.update(path="/v1/completions", body=body, choices=prompts)
        elif kind == "completion_stream":
            req.update(path="/v1/completions", body={**comp, "stream": True}, stream=True)
        elif kind == "chat_n_logprobs":
            n = rng.choice([2, 3, 4])
            stream = rng.random() < 0.5
            req.update(body={**chat, "n": n, "logprobs": True,
                             "top_logprobs": rng.choice([0, 1, 5]), "stream": stream},
                       choices=n, stream=stream, sub=f"n={n}", logprobs=True)
        elif kind == "completion_logprobs":
            n = rng.choice([1, 2])
            echo = rng.random() < 0.3
            req.update(path="/v1/completions", body={**comp, "n": n,
                                                     "logprobs": rng.choice([0, 3]),
                                                     "echo": echo},
                       choices=n, sub=f"n={n},echo={echo}", logprobs=True)
        elif kind == "compress":
            method = rng.choice(COMPRESS_METHODS)
            opts: dict[str, Any] = {"method": method, "rate": rng.choice([0.3, 0.5, 0.7])}
            if rng.random() < 0.5:
                body = {**chat, "messages": [
                    {"role": "system", "content": "Answer briefly."},
                    {"role": "user", "content": CONTEXT + q}]}
            else:
                req["path"] = "/v1/completions"
                body = {**comp, "prompt": CONTEXT + f"\nQ: {q}\nA:"}
            body["tokenwise"] = {"compress": opts}
            req.update(body=body, sub=method, info="compression")
        elif kind == "uncertainty":
            method = rng.choice(UNCERTAINTY_METHODS)
            body = {**chat, "tokenwise": {"uncertainty": {"method": method,
                                                          "n": rng.choice([2, 3])}}}
            stream = rng.random() < 0.3
            if stream:
                body["stream"] = True
            req.update(body=body, sub=method, info="uncertainty", stream=stream)
        elif kind == "ead":
            assert self.ead_pair is not None
            small, large = self.ead_pair
            stream = rng.random() < 0.4
            body = {**chat, "model": small, "stream": stream,
                    "tokenwise": {"ead": {"large": large, "up": rng.choice([0.5, 1.0, 2.0]),
                                          "window": rng.choice([1, 3, 5])}}}
            if rng.random() < 0.3:
                body["logprobs"] = True
                body["top_logprobs"] = 2
            req.update(body=body, stream=stream, info="ead")
        elif kind == "bad":
            req.update(self._bad(rng, chat, comp))
        elif kind == "disconnect_stream":
            body = {**chat, "max_tokens": self.max_tokens, "stream": True}
            if rng.random() < 0.5:
                body["n"] = 2
            req.update(body=body, stream=True, leave_after=rng.randint(1, 3))
        elif kind == "disconnect_plain":
            req.update(body={**chat, "max_tokens": self.max_tokens,
                             "n": rng.choice([1, 3])},
                       leave_after_s=rng.uniform(0.02, 0.5))
        return req

    def _bad(self, rng: random.Random, chat: dict, comp: dict) -> dict[str, Any]:
        cases = {
            "unknown_field": {"body": {**chat, "bogus": 1}},
            "wrong_type": {"body": {**chat, "temperature": "0.5"}},
            "temperature_range": {"body": {**chat, "temperature": 5.0}},
            "unknown_model": {"body": {**chat, "model": "no-such-model"}},
            "max_tokens_over": {"body": {**chat, "max_tokens": self.limit + 1}},
            "max_tokens_zero": {"body": {**chat, "max_tokens": 0}},
            "empty_messages": {"body": {**chat, "messages": []}},
            "bad_role": {"body": {**chat, "messages": [{"role": "robot", "content": "x"}]}},
            "bad_json": {"raw": b'{"model": "tw-small", "messages": [', "body": None},
            "not_object": {"raw": b"[1, 2, 3]", "body": None},
            "compress_method": {"body": {**chat, "tokenwise": {"compress": {
                "method": "nope", "rate": 0.5}}}},
            "compress_two_budgets": {"body": {**chat, "tokenwise": {"compress": {
                "method": "perplexity", "rate": 0.5, "target_tokens": 4}}}},
            "uncertainty_n": {"body": {**chat, "tokenwise": {"uncertainty": {"n": 10_000}}}},
            "uncertainty_method": {"body": {**chat, "tokenwise": {"uncertainty": {
                "method": "inv_entropy"}}}},
            "ead_unknown_large": {"body": {**chat, "tokenwise": {"ead": {
                "large": "no-such-model"}}}},
            "top_logprobs_range": {"body": {**chat, "logprobs": True, "top_logprobs": 50}},
            "n_too_many": {"body": {**chat, "n": 10_000}},
            "sampler_unknown": {"body": {**chat, "tokenwise": {"sampler": [
                {"name": "no_such_sampler"}]}}},
            "prompt_ids_range": {"path": "/v1/completions",
                                 "body": {**comp, "prompt": [10**9, 5]}},
            "seed_negative": {"body": {**chat, "seed": -1}},
            "no_key": {"body": chat, "headers": {"Authorization": ""}},
            "get_on_post": {"method": "GET", "body": None},
        }
        sub = rng.choice(sorted(cases))
        return {"sub": sub, **cases[sub]}


def check_plain(req: dict, data: Any) -> str | None:
    """What is wrong with a 200 answer (None: nothing)."""
    if not isinstance(data, dict) or "choices" not in data:
        return "no choices"
    if len(data["choices"]) != req["choices"]:
        return f"{len(data['choices'])} choices, expected {req['choices']}"
    for ch in data["choices"]:
        if ch.get("finish_reason") not in ("stop", "length"):
            return f"finish_reason {ch.get('finish_reason')!r}"
        if req.get("logprobs") and ch.get("logprobs") is None:
            return "logprobs missing"
    info = req.get("info")
    if info and info not in (data.get("tokenwise") or {}):
        return f"tokenwise.{info} missing"
    return None


def check_stream(req: dict, events: list[Any], done: bool) -> tuple[str | None, str | None]:
    """(error kind, detail) of a finished stream."""
    finishes = 0
    info = None
    for ev in events:
        if "error" in ev:
            err = ev["error"]
            return f"stream_error_{err.get('code') or err.get('type')}", str(err)[:300]
        for ch in ev.get("choices") or []:
            if ch.get("finish_reason") is not None:
                finishes += 1
        if "tokenwise" in ev:
            info = ev["tokenwise"]
    if not done:
        return "stream_no_done", None
    if finishes != req["choices"]:
        return "stream_bad_finish", f"{finishes} finishes, expected {req['choices']}"
    if req.get("info") and req["info"] not in (info or {}):
        return "stream_bad_info", f"tokenwise.{req['info']} missing"
    return None, None


async def send(http: httpx.AsyncClient, req: dict, t0: float) -> Rec:
    headers = {"Authorization": f"Bearer {KEY}", **req.get("headers", {})}
    headers = {k: v for k, v in headers.items() if v}
    content = req.get("raw")
    if content is None and req.get("body") is not None:
        content = json.dumps(req["body"]).encode()
    if content is not None:
        headers["Content-Type"] = "application/json"
    kind, sub = req["kind"], req.get("sub")
    start = time.perf_counter()
    t = time.monotonic() - t0

    def rec(status: int | None, error: str | None = None, expected: bool = True,
            detail: str | None = None) -> Rec:
        return Rec(t, kind, status, time.perf_counter() - start, error, expected, detail, sub)

    try:
        if "leave_after_s" in req:
            try:
                await asyncio.wait_for(http.post(req["path"], content=content, headers=headers),
                                       req["leave_after_s"])
            except asyncio.TimeoutError:
                return rec(None, "client_left")
            return rec(200, "finished_before_leaving")
        if req["stream"] or "leave_after" in req:
            return await _stream(http, req, content, headers, rec)
        r = await http.request(req["method"], req["path"], content=content, headers=headers)
    except httpx.TimeoutException as exc:
        return rec(None, "client_timeout", False, repr(exc))
    except httpx.TransportError as exc:
        return rec(None, f"connection_{type(exc).__name__}", False, repr(exc))
    return classify(req, r.status_code, r.content, rec)


async def _stream(http: httpx.AsyncClient, req: dict, content: bytes | None,
                  headers: dict, rec: Any) -> Rec:
    events: list[Any] = []
    done = False
    async with http.stream("POST", req["path"], content=content, headers=headers) as r:
        if r.status_code != 200:
            return classify(req, r.status_code, await r.aread(), rec)
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            payload = line[6:]
            if payload == "[DONE]":
                done = True
                break
            try:
                events.append(json.loads(payload))
            except json.JSONDecodeError:
                return rec(200, "stream_bad_json", False, payload[:200])
            if "leave_after" in req and len(events) >= req["leave_after"]:
                return rec(200, "client_left")  # leaving the block closes the connection
    if "leave_after" in req:
        return rec(200, "finished_before_leaving")
    err, detail = check_stream(req, events, done)
    return rec(200, err, err is None, detail)


def classify(req: dict, status: int, body: bytes, rec: Any) -> Rec:
    text = body[:300].decode(errors="replace")
    if req["kind"] == "bad":
        if status in BAD_OK:
            return rec(status, f"bad_{status}")
        if status == 429:
            return rec(status, "backpressure_429")
        return rec(status, f"bad_request_got_{status}", False, text)
    if status == 429:
        return rec(status, "backpressure_429")
    if status != 200:
        return rec(status, f"http_{status}", False, text)
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return rec(status, "bad_json_answer", False, text)
    problem = check_plain(req, data)
    return rec(status, "invalid_answer" if problem else None, problem is None, problem)


# ----------------------------------------------------------------- the run

async def soak(url: str, pid: int, args: argparse.Namespace, work: Workload) -> State:
    state = State()
    t0 = time.monotonic()
    end = t0 + args.duration_s
    limits = httpx.Limits(max_connections=args.clients * 2, max_keepalive_connections=args.clients)
    timeout = httpx.Timeout(args.client_timeout_s, connect=30)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as http:

        async def client(i: int) -> None:
            rng = random.Random(args.seed * 1000 + i)
            while time.monotonic() < end:
                req = work.draw(rng)
                state.recs.append(await send(http, req, t0))

        async def sampler() -> None:
            last_print = 0.0
            while time.monotonic() < end:
                t = time.monotonic() - t0
                try:
                    mb = rss_mb(pid)
                except (OSError, RuntimeError):
                    mb = float("nan")
                state.samples.append(Sample(t, mb, cpu_seconds(pid), *loadavg()))
                if len(state.samples) % 6 == 1:
                    try:
                        r = await http.get("/tokenwise/stats", timeout=30,
                                           headers={"Authorization": f"Bearer {KEY}"})
                        state.stats.append((round(t, 1), r.json()))
                    except (httpx.HTTPError, ValueError) as exc:
                        state.stats.append((round(t, 1), {"error": repr(exc)}))
                if t - last_print >= 60 or last_print == 0.0:
                    last_print = t
                    recent = [r for r in state.recs if r.t >= t - 60]
                    bad = sum(not r.expected for r in state.recs)
                    print(f"[{t:7.0f} s] rss {mb:7.1f} MB  load {loadavg()[0]:.2f}  "
                          f"{len(state.recs)} requests ({len(recent)} in the last minute), "
                          f"{bad} unexpected", flush=True)
                await asyncio.sleep(args.sample_s)

        await asyncio.gather(sampler(), *(client(i) for i in range(args.clients)))
    return state


def pct(xs: list[float], q: float) -> float | None:
    return float(np.percentile(xs, q)) if xs else None


def good_latencies(recs: list[Rec], lo: float, hi: float) -> list[float]:
    """Latencies of answered good requests sent in [lo, hi)."""
    return [r.latency for r in recs if lo <= r.t < hi and r.status == 200 and r.error is None]


def window(recs: list[Rec], samples: list[Sample], lo: float, hi: float) -> dict[str, Any]:
    lat = good_latencies(recs, lo, hi)
    loads = [s.load1 for s in samples if lo <= s.t < hi]
    per_kind = defaultdict(list)
    for r in recs:
        if lo <= r.t < hi and r.status == 200 and r.error is None:
            per_kind[r.kind].append(r.latency)
    return {"from_s": lo, "to_s": hi, "answered_good": len(lat), "p50_s": pct(lat, 50),
            "p99_s": pct(lat, 99), "mean_load1": float(np.mean(loads)) if loads else None,
            "per_kind": {k: {"n": len(v), "p50_s": pct(v, 50), "p99_s": pct(v, 99)}
                         for k, v in sorted(per_kind.items())}}


def summarise(state: State, args: argparse.Namespace, meta: dict) -> dict[str, Any]:
    recs, samples = state.recs, state.samples
    dur = args.duration_s
    errors_expected = Counter(r.error for r in recs if r.expected and r.error
                              and r.error != "backpressure_429")
    errors_unexpected = Counter(r.error for r in recs if not r.expected)
    backpressure = sum(r.error == "backpressure_429" for r in recs)
    kinds = Counter(r.kind for r in recs)
    bad_subs = Counter(f"{r.sub}:{r.status}" for r in recs if r.kind == "bad")
    per_minute = []
    for m in range(int(np.ceil(dur / 60))):
        lo, hi = 60 * m, 60 * (m + 1)
        lat = good_latencies(recs, lo, hi)
        ss = [s for s in samples if lo <= s.t < hi]
        per_minute.append({
            "minute": m, "requests": sum(lo <= r.t < hi for r in recs), "answered_good": len(lat),
            "p50_s": pct(lat, 50), "p99_s": pct(lat, 99),
            "unexpected": sum(lo <= r.t < hi and not r.expected for r in recs),
            "load1": float(np.mean([s.load1 for s in ss])) if ss else None,
            "rss_mb": float(np.median([s.rss_mb for s in ss])) if ss else None})
    w = args.window_s
    first_raw = window(recs, samples, 0, w)
    first = window(recs, samples, args.warmup_s, args.warmup_s + w)
    last = window(recs, samples, dur - w, dur)
    ratio = (last["p99_s"] / first["p99_s"]) if first["p99_s"] and last["p99_s"] else None
    ratio_raw = (last["p99_s"] / first_raw["p99_s"]) if first_raw["p99_s"] and last["p99_s"] \
        else None
    # RSS: the median over the minute after warm-up vs over the last minute
    base = [s.rss_mb for s in samples if args.warmup_s <= s.t < args.warmup_s + 60]
    tail = [s.rss_mb for s in samples if s.t >= dur - 60]
    after = [s for s in samples if s.t >= args.warmup_s]
    rss_base = float(np.median(base)) if base else None
    rss_end = float(np.median(tail)) if tail else None
    growth = (rss_end - rss_base) / rss_base if rss_base and rss_end else None
    slope = None
    if len(after) >= 3:
        ts = np.array([s.t for s in after])
        ys = np.array([s.rss_mb for s in after])
        slope = float(np.polyfit(ts, ys, 1)[0] * 3600)
    unexpected_total = sum(errors_unexpected.values())
    answered = sum(r.status is not None for r in recs)
    details = [asdict(r) for r in recs if not r.expected][:30]
    return {
        **meta,
        "requests_sent": len(recs), "requests_answered": answered,
        "answered_good": sum(r.status == 200 and r.error is None for r in recs),
        "requests_per_s": len(recs) / dur, "by_kind": dict(sorted(kinds.items())),
        "errors_expected": dict(sorted(errors_expected.items())),
        "errors_unexpected": dict(sorted(errors_unexpected.items())),
        "unexpected_examples": details, "backpressure_429": backpressure,
        "bad_requests_by_case_status": dict(sorted(bad_subs.items())),
        "per_minute": per_minute,
        "windows": {"first_raw": first_raw, "first_after_warmup": first, "last": last},
        "p99_ratio_last_vs_first_after_warmup": ratio, "p99_ratio_last_vs_first_raw": ratio_raw,
        "rss": {"samples": [[round(s.t, 1), round(s.rss_mb, 2), s.cpu_s, s.load1]
                            for s in samples],
                "sample_columns": ["t_s", "rss_mb", "server_cpu_s", "load1"],
                "start_mb": samples[0].rss_mb if samples else None,
                "after_warmup_mb": rss_base, "end_mb": rss_end,
                "max_mb": max(s.rss_mb for s in samples) if samples else None,
                "growth_after_warmup": growth, "slope_after_warmup_mb_per_h": slope,
                "definition": (f"median RSS over [{args.warmup_s}, {args.warmup_s + 60}) s vs "
                               f"over the last 60 s")},
        "targets": {
            "zero_unexpected_errors": {"value": unexpected_total,
                                       "pass": unexpected_total == 0},
            "p99_last_within_1.2x_first_after_warmup": {
                "value": ratio, "pass": ratio is not None and ratio <= 1.2},
            "rss_growth_after_warmup_below_5pct": {
                "value": growth, "pass": growth is not None and growth < 0.05}},
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    s = np.array([[row[0], row[1]] for row in result["rss"]["samples"]])
    if len(s):
        a.plot(s[:, 0] / 60, s[:, 1], lw=1)
    a.axvline(result["args"]["warmup_s"] / 60, color="grey", ls=":", label="end of warm-up")
    a.set_ylabel("server RSS (MB)")
    a.legend(loc="lower right")
    a.set_title(f"tokenwise serve soak: {result['args']['clients']} clients, "
                f"{', '.join(result['models'])}")
    pm = [m for m in result["per_minute"] if m["p50_s"] is not None]
    x = [m["minute"] + 0.5 for m in pm]
    b.plot(x, [m["p50_s"] for m in pm], marker=".", label="p50")
    b.plot(x, [m["p99_s"] for m in pm], marker=".", label="p99")
    b.set_ylabel("latency (s), answered good requests")
    b.set_xlabel("minute")
    c = b.twinx()
    c.plot(x, [m["load1"] for m in pm], color="grey", alpha=0.5, ls="--", label="load avg (1 min)")
    c.set_ylabel("machine load average")
    h1, l1 = b.get_legend_handles_labels()
    h2, l2 = c.get_legend_handles_labels()
    b.legend(h1 + h2, l1 + l2, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration-s", type=float, default=1800)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--model", action="append", default=None,
                   help="model to serve, repeatable (default: tw-small and tw-large)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-tokens", type=int, default=8,
                   help="largest max_tokens a good request asks for")
    p.add_argument("--first-model-share", type=float, default=0.75,
                   help="share of requests (EAD aside) on the first --model")
    p.add_argument("--mix", action="append", default=[], metavar="KIND=WEIGHT",
                   help=f"change a kind's weight, repeatable (0 drops it); kinds and default "
                        f"weights: {MIX}")
    p.add_argument("--warmup-s", type=float, default=300)
    p.add_argument("--window-s", type=float, default=300)
    p.add_argument("--sample-s", type=float, default=5)
    p.add_argument("--client-timeout-s", type=float, default=300)
    p.add_argument("--server-arg", action="append", default=[],
                   help="extra argument for tokenwise serve, repeatable "
                        "(e.g. --server-arg=--timeout=60)")
    p.add_argument("--threads", type=int, default=1,
                   help="OMP_NUM_THREADS of the server (0: torch's default, every core)")
    p.add_argument("--out", type=Path, default=Path("serve_soak.json"))
    p.add_argument("--png", type=Path, default=None)
    args = p.parse_args()
    models = args.model or ["tw-small", "tw-large"]
    ead_pair = (models[0], models[1]) if len(models) >= 2 else None
    meta = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "models": models, "ead_pair": ead_pair,
            "git_head": git("log", "-1", "--oneline"), "git_diff_stat": git("diff", "--stat"),
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "cpus": os.cpu_count(), "loadavg_at_start": loadavg()}
    limit = 512
    for a in args.server_arg:
        if a.startswith("--max-tokens-limit="):
            limit = int(a.split("=", 1)[1])
    weights = {}
    for item in args.mix:
        kind, _, w = item.partition("=")
        if kind not in MIX or not w:
            p.error(f"--mix {item!r}: write KIND=WEIGHT with KIND one of {', '.join(MIX)}")
        weights[kind] = float(w)
    work = Workload(models, ead_pair, args.max_tokens, limit, args.first_model_share, weights)
    meta["mix"] = {k: w for k, w in zip(work.kinds, work.weights, strict=True)}
    print(f"seed {args.seed}; git {meta['git_head']}", flush=True)
    port = free_port()
    log_path = args.out.with_suffix(".server.log")
    proc, server_cmd = start_server(models, port, log_path, args.server_arg, args.threads)
    meta["server_command"] = " ".join(server_cmd)
    meta["server_threads"] = args.threads
    meta["server_pid"] = proc.pid
    url = f"http://127.0.0.1:{port}"
    try:
        state = asyncio.run(soak(url, proc.pid, args, work))
        headers = {"Authorization": f"Bearer {KEY}"}
        after: dict[str, Any] = {}
        try:
            after["health"] = httpx.get(url + "/health", timeout=30).status_code
            after["stats"] = httpx.get(url + "/tokenwise/stats", headers=headers,
                                       timeout=30).json()
            time.sleep(2)
            r = httpx.post(url + "/v1/chat/completions", headers=headers, timeout=120, json={
                "model": models[0], "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 4})
            after["chat_status"] = r.status_code
            after["stats_later"] = httpx.get(url + "/tokenwise/stats", headers=headers,
                                             timeout=30).json()
        except httpx.HTTPError as exc:
            after["error"] = repr(exc)
        after["server_alive"] = proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = "killed after 60 s"
    result = summarise(state, args, meta)
    result["after_soak"] = after
    keep = ("queue_depth", "requests_held", "requests", "cancelled", "skipped", "timed_out",
            "rejected_queue_full", "failed_batches", "failed_rows", "calls", "error")
    result["server_stats_over_time"] = [[t, {k: v for k, v in st.items() if k in keep}]
                                        for t, st in state.stats]
    result["server_exit"] = code
    result["server_log"] = str(log_path)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out.with_suffix(".requests.jsonl"), "w") as f:
        for r in state.recs:
            f.write(json.dumps(asdict(r)) + "\n")
    args.out.write_text(json.dumps(result, indent=1))
    if args.png:
        plot(result, args.png)
    t = result["targets"]
    print(json.dumps({"requests_sent": result["requests_sent"],
                      "requests_answered": result["requests_answered"],
                      "errors_unexpected": result["errors_unexpected"],
                      "backpressure_429": result["backpressure_429"],
                      "windows_p99": {k: v["p99_s"] for k, v in result["windows"].items()},
                      "rss": {k: v for k, v in result["rss"].items() if k != "samples"},
                      "targets": t, "after_soak": after, "server_exit": code}, indent=1))


if __name__ == "__main__":
    main()

"""QA retention of every compression method on real English text, read by real LMs.

Haystacks of King James Bible verses (public domain; Debian packages ``bible-kjv-text``, the
compressed text, and ``bible-kjv``, its reader program ``bible``, the only way to decode
it) hold one planted needle, ``"The code of <Name> is <4 digits>."``, as a line of its own at
a graded depth (0, 1/4, 1/2, 3/4 or 1 of the lines). Each haystack (``--lengths``: about 100,
200 and 350 tokens on the reader's tokenizer) is compressed alone, the question given to
every method by its default use of it, then read in completion form::

    <compressed verses>

    Question: What is the code of Tavoun?
    Answer: The code of Tavoun is

greedily (8 new tokens) by Gemma-3-270M, the real model that reads contexts (DESIGN.md); the
first number in the completion must equal the code. SmolLM2-135M-Instruct reads the same
compressed haystacks on every ``--smol-every``-th item, to show the contrast (same prompt, no
chat template). Retention = accuracy on compressed / accuracy uncompressed on the same items
(95% paired bootstrap over items); accuracies carry 95% Wilson intervals; the achieved rate is
the compressed haystack's tokens over the whole haystack's, on Gemma's tokenizer.

Methods, each at rate 0.2 / 0.33 / 0.5 by default (``--rates``; budget on Gemma's tokenizer;
``protect=False``, ``keep_digits=False``: the needle's code may be dropped like any word; the
verses hold no digits, so protection would keep exactly the code and make survival trivial):
random words (baseline), token_classifier (the built-in tw-keep, trained on testbed needle
memos, not English: run anyway), perplexity (LongLLMLingua's contrastive score) and
selective_context (phrases) scored by ``--scorer`` (SmolLM2 by default: not the reader),
extractive (RECOMP, MiniLM), generative (no generator: SCOPE's keyword-keeping fallback on
every chunk), semantic (TCRA-LLM's semantic compression: deletes the words that move their
sentence's MiniLM embedding least; query-free, issue 24's target is >= 98% retention at rate
0.8, so ``--rates 0.2,0.33,0.5,0.8`` measures it), and microsoft/LLMLingua's own LLMLingua-1
path (``llmlingua`` package, ``PromptCompressor.compress_prompt`` on the scorer's safetensors
directory; no question, as in LLMLingua-1; one window, ``iterative_size`` = the text's own
tokens, since at its default of 200 llmlingua 0.2.2 leaves the last tokens mod 200
uncompressed). Two shims make llmlingua 0.2.2 run here, both said in the results: its
token counter is the reader's tokenizer (llmlingua asks tiktoken for gpt-3.5-turbo's, which
downloads its vocabulary), and its list-of-``[k, v]`` KV caches are converted to and from
transformers 5's ``DynamicCache``.

Set-up (once; the only step that uses the network, Debian's package registry)::

    .venv/bin/python benchmarks/compression_qa_real.py --setup

Run::

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/compression_qa_real.py \\
        --json compression_qa_real.json

The real models are Q4 GGUF weights dequantised to float32: figures differ from the bf16
originals.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

RATES = (0.2, 0.33, 0.5)
DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
DEFAULT_METHODS = ("random,token_classifier,perplexity,selective_context,extractive,"
                   "generative,llmlingua1")
PACKAGES = ("bible-kjv-text", "bible-kjv")
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tokenwise" / "bench" / \
    "bible-kjv"
VERSES_FILE = "verses.tsv"


# --------------------------------------------------------------------------- corpus set-up

def setup_corpus(cache: Path, deb_dir: Path | None = None) -> Path:
    """Fetch the KJV packages with apt, unpack them, decode every verse to ``verses.tsv``.

    Args:
        cache: where the ``.deb`` files, their unpacked trees and ``verses.tsv`` go.
        deb_dir: a folder that already holds both ``.deb`` files (no apt call then).

    Returns:
        The path of ``verses.tsv`` (``Book chapter:verse<TAB>text``, one verse a line).

    Example:
        >>> setup_corpus(Path("/tmp/kjv"))  # doctest: +SKIP
        PosixPath('/tmp/kjv/verses.tsv')
    """
    cache.mkdir(parents=True, exist_ok=True)
    debs = {}
    for pkg in PACKAGES:
        found = sorted((deb_dir or cache).glob(f"{pkg}_*.deb"))
        if not found and deb_dir is None:
            if shutil.which("apt-get") is None:
                sys.exit(f"--setup needs Debian's apt-get to download {pkg!r}, and none is on "
                         f"PATH. On a machine without apt, download {', '.join(PACKAGES)} "
                         "(.deb, amd64) from a Debian mirror into one folder and rerun with "
                         "--deb-dir FOLDER.")
            print(f"apt-get download {pkg}", flush=True)
            run = subprocess.run(["apt-get", "download", pkg], cwd=cache, capture_output=True,
                                 text=True)
            if run.returncode != 0:
                sys.exit(f"apt-get download {pkg} failed ({run.stderr.strip()[-300:]}); run "
                         "'apt-get update' first, or pass --deb-dir with the .deb files.")
            found = sorted(cache.glob(f"{pkg}_*.deb"))
        if not found:
            sys.exit(f"no {pkg}_*.deb in {deb_dir or cache}")
        debs[pkg] = found[-1]
    if shutil.which("dpkg-deb") is None:
        sys.exit("--setup needs dpkg-deb (Debian's package tool) to unpack the .deb files")
    tree = cache / "unpacked"
    for deb in debs.values():
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
    bible = tree / "usr" / "bin" / "bible"
    data_dir = tree / "usr" / "lib"
    # One line per verse: the reader wraps at --l columns, so ask for very long lines.
    run = subprocess.run([str(bible), "-l100000", "-p", str(data_dir), "Gen1:1-Rev22:21"],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if run.returncode != 0 or not run.stdout:
        sys.exit(f"{bible} could not decode the text (rc {run.returncode}: "
                 f"{run.stderr.strip()[-300:]}); it is an amd64 Linux program needing "
                 "libreadline8")
    rows, chapter = [], None
    for line in run.stdout.splitlines():
        m = re.match(r"^  (\d+) (.*)$", line)
        if m:
            rows.append(f"{chapter}:{m.group(1)}\t{m.group(2).strip()}")
        elif line.strip():
            chapter = line.strip()  # "Genesis 1"
    if len(rows) != 31102:
        sys.exit(f"decoded {len(rows)} verses, expected the KJV's 31,102")
    out = cache / VERSES_FILE
    tmp = out.with_suffix(".tmp")
    tmp.write_text("\n".join(rows) + "\n")
    tmp.replace(out)
    print(f"wrote {out} ({len(rows)} verses)")
    return out


def load_verses(cache: Path) -> list[tuple[str, str]]:
    """(reference, text) of every verse; exits with the set-up command when absent."""
    path = cache / VERSES_FILE
    if not path.is_file():
        sys.exit(f"{path} does not exist: run this script with --setup once (it downloads "
                 f"the Debian packages {', '.join(PACKAGES)} with apt-get)")
    rows = [line.split("\t", 1) for line in path.read_text().splitlines()]
    return [(r, t) for r, t in rows]


# --------------------------------------------------------------------------- items

def make_items(verses: list[tuple[str, str]], count_tokens: Any, lengths: list[int],
               per_length: int, seed: int) -> list[dict]:
    """Haystacks of consecutive verses, one needle line each, graded length and depth.

    Args:
        verses: (reference, text) of every verse.
        count_tokens: ``str -> int`` on the reader's tokenizer.
        lengths: haystack sizes in tokens (verses are added until the size is reached).
        per_length: items per size; depths cycle through :data:`DEPTHS` over all items.
        seed: seeds starts, names and codes.

    Example:
        >>> make_items([("G 1:1", "In the beginning.")] * 500, len, [40], 1, 0)[0]["depth"]
        0.0
    """
    from tokenwise.testbed.names import invent_unique

    rng = random.Random(seed)
    corpus_words = {w.lower() for _, t in verses for w in re.findall(r"[A-Za-z]+", t)}
    names = invent_unique(rng, len(lengths) * per_length, (2, 3), taken=corpus_words)
    codes = rng.sample(range(1000, 10000), len(lengths) * per_length)
    items = []
    for length in lengths:
        for _ in range(per_length):
            start = rng.randrange(len(verses) - 400)
            lines, n = [], 0
            while n < length:
                lines.append(verses[start + len(lines)][1])
                n = count_tokens("\n".join(lines))
            depth = DEPTHS[len(items) % len(DEPTHS)]
            key, code = names[len(items)], str(codes[len(items)])
            needle = f"The code of {key} is {code}."
            slot = round(depth * len(lines))
            lines.insert(slot, needle)
            context = "\n".join(lines)
            items.append({"length_bin": length, "depth": depth, "slot": slot,
                          "lines": len(lines), "first_verse": verses[start][0], "key": key,
                          "code": code, "needle": needle, "context": context,
                          "question": f"What is the code of {key}?",
                          "tokens": count_tokens(context)})
    return items


def reader_prompt(context: str, key: str) -> str:
    """The completion-form prompt the reader continues with the code."""
    return (f"{context.strip()}\n\nQuestion: What is the code of {key}?\n"
            f"Answer: The code of {key} is")


def first_number(completion: str) -> str | None:
    """The first run of digits in the completion (the reader's answer), or None."""
    m = re.search(r"\d+", completion)
    return m.group(0) if m else None


def survived(code: str, text: str) -> bool:
    """The code is in the text as a whole number."""
    return re.search(rf"(?<!\d){code}(?!\d)", text) is not None


def wilson(k: int, n: int, z: float = 1.96) -> list[float] | None:
    """95% Wilson score interval of a proportion k / n.

    Example:
        >>> [round(x, 3) for x in wilson(8, 10)]
        [0.49, 0.943]
    """
    if n == 0:
        return None
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return [mid - half, mid + half]


def read_all(lm: Any, prompts: list[str], batch_size: int) -> list[str]:
    """Greedy completions, batched by similar length (less padding), in the given order."""
    from tokenwise.testbed.evaluate import greedy_complete

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        # " 4821." is 6 tokens on both readers; the answer is the first number.
        answers = greedy_complete(lm, [prompts[i] for i in idx], max_new_tokens=6,
                                  batch_size=batch_size)
        for i, a in zip(idx, answers, strict=True):
            out[i] = a
    return out


# --------------------------------------------------------------------------- methods

class LLMLingua1:
    """microsoft/LLMLingua's LLMLingua-1 path (``llmlingua.PromptCompressor``) on a local LM.

    Args:
        model_dir: a safetensors causal-LM directory.
        counter: the reader's tokenizer, which llmlingua counts its budget with (in place
            of tiktoken's gpt-3.5-turbo encoding, which needs a download).
    """

    name = "llmlingua1"

    def __init__(self, model_dir: str, counter: Any):
        from unittest import mock

        import llmlingua.prompt_compressor as pcm
        from transformers.cache_utils import DynamicCache

        tok = counter.tokenizer

        class _Counter:
            def encode(self, text: str, **_: Any) -> list[int]:
                return tok(text, add_special_tokens=False)["input_ids"]

            def decode(self, ids: list[int]) -> str:
                return tok.decode(ids)

        class _LegacyCacheLM:
            """llmlingua 0.2.2 passes and slices caches as lists of [k, v]."""

            def __init__(self, model: Any):
                self.model = model

            def __getattr__(self, name: str) -> Any:
                return getattr(self.model, name)

            def __call__(self, *args: Any, past_key_values: Any = None, **kw: Any) -> Any:
                if past_key_values is not None and not isinstance(past_key_values,
                                                                  DynamicCache):
                    past_key_values = DynamicCache(
                        ddp_cache_data=[(k, v) for k, v in past_key_values],
                        config=self.model.config)
                out = self.model(*args, past_key_values=past_key_values, **kw)
                cache = getattr(out, "past_key_values", None)
                if isinstance(cache, DynamicCache):
                    out.past_key_values = [[k, v] for k, v, *_ in cache]
                return out

        with mock.patch.object(pcm.tiktoken, "encoding_for_model", lambda _name: _Counter()):
            self.pc = pcm.PromptCompressor(model_name=model_dir, device_map="cpu",
                                           model_config={"trust_remote_code": False})
        self.pc.model = _LegacyCacheLM(self.pc.model)

    def compress(self, context: str, rate: float) -> str:
        # One window over the whole text: llmlingua 0.2.2 never compresses the last
        # (tokens mod iterative_size) tokens of a context (a 131-token text at rate 0.2
        # came back with 129 tokens), so its default of 200 misses most budgets here.
        n = len(self.pc.tokenizer(context, add_special_tokens=False)["input_ids"])
        r = self.pc.compress_prompt([context], instruction="", question="", rate=rate,
                                    iterative_size=n)
        return r["compressed_prompt"]


def memo_scores(comp: Any) -> Any:
    """Reuse a method's word scores across rates: for methods whose scores do not depend on
    the budget (selective_context's self-information), the same texts score the same."""
    cache: dict = {}
    inner = comp.score_for

    def score_for(texts: list[str], request: Any) -> Any:
        key = (tuple(texts), request.question)
        if key not in cache:
            cache.clear()  # one item at a time: keep only its scores
            cache[key] = inner(texts, request)
        return cache[key]

    comp.score_for = score_for
    return comp


def build(name: str, scorer: Any, classifier: str, counter: Any) -> Any:
    """The compressor registered under ``name`` (or the baseline / llmlingua's)."""
    if name == "random":
        from compression_qa import RandomCompressor  # the testbed's baseline, same rule

        return RandomCompressor(0)
    if name == "llmlingua1":
        return LLMLingua1(str(scorer.path), counter)
    from tokenwise.compression import compressor_class

    cls = compressor_class(name)
    if name == "token_classifier":
        return cls(classifier)
    if name == "perplexity":
        return cls(scorer)
    if name == "selective_context":
        return memo_scores(cls(scorer, unit="phrase"))
    if name == "extractive":
        return cls()
    if name == "generative":
        return cls(None)
    if name == "semantic":
        return cls()  # MiniLM, batched greedy rounds: the library's defaults
    raise SystemExit(f"unknown method {name!r}")


def compress_one(comp: Any, item: dict, rate: float, counter: Any) -> str:
    if isinstance(comp, LLMLingua1):
        return comp.compress(item["context"], rate)
    r = comp.compress(item["context"], rate=rate, question=item["question"], protect=False,
                      keep_digits=False, target_model=counter)
    return r.text


# --------------------------------------------------------------------------- main

def summarise(right: list[bool], base_right: list[bool]) -> dict:
    from compression_qa import retention_interval

    k, n, b = int(sum(right)), len(right), float(np.mean(base_right))
    return {"accuracy": k / n, "right": k, "n": n, "accuracy_ci95": wilson(k, n),
            "retention": (k / n) / b if b > 0 else None,
            "retention_ci95": retention_interval(right, base_right) if b > 0 else None}


def table(saved: dict) -> str:
    """The results as a markdown table (also ``--table JSON`` on a saved run)."""

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.0f}"

    def ci(c: list[float] | None) -> str:
        return "" if c is None else f" [{pct(c[0])}-{pct(c[1])}]"

    u = saved["uncompressed"]
    lines = [f"uncompressed: {saved['reader']} {u['right']}/{u['n']} "
             f"({pct(u['accuracy'])}%{ci(u['accuracy_ci95'])}); "
             + (f"{saved['contrast_reader']} {saved['uncompressed_contrast']['right']}/"
                f"{saved['uncompressed_contrast']['n']}" if saved.get("uncompressed_contrast")
                else ""),
             "",
             "| method | rate | achieved rate | code survives | Gemma right | Gemma accuracy % "
             "[Wilson 95%] | retention % [paired bootstrap 95%] | SmolLM2 right |",
             "|---|---|---|---|---|---|---|---|"]
    for name, per in saved["results"].items():
        if "error" in per:
            lines.append(f"| {name} | - | - | - | - | not run: {per['error']} | - | - |")
            continue
        for rate, r in per.items():
            ach = "n/a" if r["achieved_rate"] is None else f"{r['achieved_rate']:.3f}"
            c = r.get("contrast")
            lines.append(
                f"| {name} | {rate} | {ach} | {pct(r['survival'])}% | {r['right']}/{r['n']} | "
                f"{pct(r['accuracy'])}{ci(r['accuracy_ci95'])} | "
                f"{pct(r['retention'])}{ci(r['retention_ci95'])} | "
                + (f"{c['right']}/{c['n']}" if c else "-")
                + (f" (failures {r['failures']})" if r["failures"] else "") + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setup", action="store_true",
                        help="download and decode the corpus (apt-get download), then exit")
    parser.add_argument("--deb-dir", type=Path, default=None,
                        help="with --setup: use the .deb files in this folder, no apt call")
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--lengths", default="100,200,350",
                        help="haystack sizes in reader tokens")
    parser.add_argument("--per-length", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default=DEFAULT_METHODS)
    parser.add_argument("--rates", default=",".join(str(r) for r in RATES),
                        help="comma-separated rates in (0, 1] (semantic's target is 0.8)")
    parser.add_argument("--reader", default="gemma3-270m")
    parser.add_argument("--contrast-reader", default="smollm2-135m",
                        help="second reader, on every --smol-every-th item ('' for none)")
    parser.add_argument("--smol-every", type=int, default=3)
    parser.add_argument("--scorer", default="smollm2-135m",
                        help="causal LM of perplexity, selective_context and llmlingua1")
    parser.add_argument("--classifier", default="tw-keep")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared 2-core machine 2 threads ran a "
                        "forward ~6x slower)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", default=None)
    parser.add_argument("--table", metavar="JSON", default=None,
                        help="print the markdown table of a saved run, then exit")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return
    if args.setup:
        setup_corpus(args.cache, args.deb_dir)
        return
    try:
        rates = tuple(float(x) for x in args.rates.split(","))
    except ValueError:
        parser.error(f"--rates {args.rates!r}: expected comma-separated numbers in (0, 1], "
                     "e.g. 0.2,0.33,0.5,0.8")
    if not rates or any(not 0 < r <= 1 for r in rates):
        parser.error(f"--rates {args.rates!r}: every rate must be in (0, 1]")

    import torch

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    from tokenwise.compression import TokenCounter
    from tokenwise.models import load

    t_start = time.perf_counter()
    verses = load_verses(args.cache)
    reader = load(args.reader)
    counter = TokenCounter.resolve(reader)
    lengths = [int(x) for x in args.lengths.split(",")]
    items = make_items(verses, counter.count, lengths, args.per_length, args.seed)
    smol_idx = ([i for i in range(len(items)) if i % args.smol_every == 0]
                if args.contrast_reader else [])
    contrast = load(args.contrast_reader) if args.contrast_reader else None
    scorer = (contrast if contrast is not None and args.scorer == args.contrast_reader
              else load(args.scorer))
    print(f"seed {args.seed}; {len(items)} items ({args.per_length} per length {lengths}); "
          f"reader {reader.name}; contrast {args.contrast_reader} on {len(smol_idx)} items; "
          f"scorer {scorer.name}; threads {torch.get_num_threads()}", flush=True)

    def grade(lm: Any, prompts: list[str | None], sel: list[int]) -> tuple[list[bool], list]:
        todo = [i for i in sel if prompts[i] is not None]
        answers = dict(zip(todo, read_all(lm, [prompts[i] for i in todo], args.batch_size),
                           strict=True))
        right = [i in answers and first_number(answers[i]) == items[i]["code"] for i in sel]
        return right, [answers.get(i) for i in sel]

    all_idx = list(range(len(items)))
    t0 = time.perf_counter()
    base_prompts = [reader_prompt(it["context"], it["key"]) for it in items]
    base_right, base_answers = grade(reader, base_prompts, all_idx)
    smol_base_right, _ = (grade(contrast, base_prompts, smol_idx) if contrast else ([], []))
    base_acc = float(np.mean(base_right))
    print(f"uncompressed: {reader.name} {sum(base_right)}/{len(items)}; contrast "
          f"{sum(smol_base_right)}/{len(smol_idx)} ({time.perf_counter() - t0:.0f} s)",
          flush=True)

    def by_group(right: list[bool], idx: list[int], key: str) -> dict:
        out = {}
        for g in sorted({items[i][key] for i in idx}):
            sel = [r for r, i in zip(right, idx, strict=True) if items[i][key] == g]
            out[str(g)] = [int(sum(sel)), len(sel)]
        return out

    results: dict[str, dict] = {}
    for name in args.methods.split(","):
        results[name] = {}
        try:
            comp = build(name, scorer, args.classifier, counter)
        except Exception as exc:  # reported; the other methods go on
            results[name]["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            print(name, "could not be built:", results[name]["error"], flush=True)
            continue
        # Item by item, every rate (scores that do not depend on the budget are reused).
        t0 = time.perf_counter()
        by_rate: dict[float, list[str | None]] = {rate: [] for rate in rates}
        errs: dict[float, list[str]] = {rate: [] for rate in rates}
        for it in items:
            for rate in rates:
                try:
                    by_rate[rate].append(compress_one(comp, it, rate, counter))
                except Exception as exc:  # a failed item counts as lost
                    by_rate[rate].append(None)
                    errs[rate].append(f"{type(exc).__name__}: {str(exc)[:200]}")
        t_comp = (time.perf_counter() - t0) / len(rates)
        for rate in rates:
            t0 = time.perf_counter()
            texts, errors = by_rate[rate], errs[rate]
            prompts = [None if t is None else reader_prompt(t, it["key"])
                       for t, it in zip(texts, items, strict=True)]
            right, answers = grade(reader, prompts, all_idx)
            kept = [counter.count(t) / it["tokens"] for t, it in zip(texts, items, strict=True)
                    if t is not None]
            surv = [t is not None and survived(it["code"], t)
                    for t, it in zip(texts, items, strict=True)]
            row = summarise(right, base_right)
            row.update({
                "survival": float(np.mean(surv)),
                "achieved_rate": float(np.mean(kept)) if kept else None,
                "achieved_rate_range": [float(min(kept)), float(max(kept))] if kept else None,
                "failures": len(errors), "first_error": errors[0] if errors else None,
                "by_length": by_group(right, all_idx, "length_bin"),
                "by_depth": by_group(right, all_idx, "depth"),
                "survival_by_length": by_group(surv, all_idx, "length_bin"),
                "right_when_survived": [int(sum(r for r, s in zip(right, surv, strict=True)
                                                if s)), int(sum(surv))],
                "compress_seconds_per_item_mean_over_rates": t_comp / len(items),
                "per_item_right": [int(r) for r in right],
                "answers": answers,
                "example": texts[0][:400] if texts[0] is not None else None,
            })
            if contrast is not None:
                s_right, _ = grade(contrast, prompts, smol_idx)
                row["contrast"] = summarise(s_right, smol_base_right)
            results[name][str(rate)] = row
            print(f"{name} {rate}: acc {row['right']}/{row['n']} retention "
                  f"{row['retention'] if row['retention'] is None else round(row['retention'], 3)}"
                  f" survival {row['survival']:.3f} kept {row['achieved_rate']} failures "
                  f"{len(errors)} ({t_comp:.0f} s compress (mean over rates), "
                  f"{time.perf_counter() - t0:.0f} s read)"
                  + (f"; contrast {row['contrast']['right']}/{row['contrast']['n']}"
                     if contrast is not None else ""), flush=True)
        del comp

    out = {
        "command": " ".join(["python", *sys.argv]),
        "seed": args.seed, "reader": reader.name, "contrast_reader": args.contrast_reader,
        "scorer": scorer.name, "classifier": args.classifier, "rates": list(rates),
        "weights": "Q4 GGUF weights dequantised to float32 (differ from the bf16 originals)",
        "corpus": "King James Bible verses, Debian bible-kjv-text (decoded by bible-kjv)",
        "items": len(items), "lengths": lengths, "depths": list(DEPTHS),
        "mean_tokens_by_length": {str(L): float(np.mean([it["tokens"] for it in items
                                                        if it["length_bin"] == L]))
                                  for L in lengths},
        "uncompressed": {**summarise(base_right, base_right),
                         "by_length": by_group(base_right, all_idx, "length_bin"),
                         "by_depth": by_group(base_right, all_idx, "depth"),
                         "per_item_right": [int(r) for r in base_right],
                         "answers": base_answers},
        "uncompressed_contrast": (summarise(smol_base_right, smol_base_right)
                                  if contrast is not None else None),
        "contrast_items": smol_idx,
        "results": results,
        "wall_seconds": time.perf_counter() - t_start,
        "item_list": [{k: v for k, v in it.items() if k != "context"} for it in items],
    }
    print(f"\nuncompressed: {reader.name} {sum(base_right)}/{len(items)} "
          f"({100 * base_acc:.1f}%); wall {out['wall_seconds']:.0f} s")
    print(table(out))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

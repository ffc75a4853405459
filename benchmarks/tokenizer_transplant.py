"""Tokenizer transplantation (TokenAdapt) and supertokens, measured in bits per byte.

What it measures (issue 23):

1. **Testbed (tw-large).** New byte-level BPE tokenizers of 2k and 4k tokens, with and
   without supertokens, trained on the testbed corpus. For each: tokens per byte on held-out
   text (fresh documents of the same worlds), and tw-large moved onto it with TokenAdapt and
   the baselines (mean, subword mean as in ReTok, random). Zero-shot bits per byte on the
   held-out text, fact accuracy (greedy, per frequency bucket) and the Markov source's
   cross-entropy per symbol, against the original model; then the same after 50 and 200
   steps of fine-tuning with the fused loss (``tokenwise.training.train``, the trainer behind
   ``tokenwise train``; the 200-step run resumes the 50-step one).
2. **SmolLM2-135M-Instruct** (Q4 GGUF weights dequantised to float32; they differ from the
   bf16 originals) moved onto a tokenizer trained on real English text (the King James
   Bible, from Debian's ``bible-kjv``; every 10th paragraph held out), zero-shot bits per
   byte for each init, and a short fine-tune of the TokenAdapt model.

Bits per byte are comparable across tokenizers; per-token perplexity is not. The Markov
cross-entropy is the surprisal of a line's symbol string (all of its tokens, whatever the
tokenizer) over its number of symbols, in nats, beside the source's true entropy.

Command (the defaults reproduce the reported run):

    nice -n 5 .venv/bin/python benchmarks/tokenizer_transplant.py
    nice -n 5 .venv/bin/python benchmarks/tokenizer_transplant.py --part smollm2

Results: ``--out`` + ``.json`` (and ``_smollm2.json``); a Markdown table beside it.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path("/work/notes/results")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# data


def held_out_testbed(tb, n_facts: int, n_markov: int, n_arith: int, n_needle: int) -> list[str]:
    """Fresh documents of the same worlds (other RNG streams than the training corpus)."""
    from tokenwise.testbed import arithmetic

    rng = random.Random("tokenizer-transplant/held-out")
    facts = list(tb.fact_world.documents(rng))
    rng.shuffle(facts)
    docs = facts[:n_facts]
    docs += list(tb.markov.documents(np.random.default_rng([tb.seed, 2323]), n_markov))
    docs += list(arithmetic.documents(rng, n_arith))
    docs += list(tb.needles.documents(rng, n_needle))
    return docs


def markov_cross_entropy(lm, tb, n_lines: int) -> dict:
    """Nats per symbol of fresh Markov lines (any tokenizer), with the true entropy."""
    from tokenwise.scoring import token_surprisal
    from tokenwise.testbed.markov import HEADER

    rng = np.random.default_rng([tb.seed, 4545])
    total, symbols, true = 0.0, 0, []
    for _ in range(n_lines):
        seq = tb.markov.sample(rng)
        body = seq.text[len(HEADER):].rstrip("\n")
        prefix = lm.encode(HEADER, add_bos=True)
        nats = token_surprisal(lm, lm.encode(body), prefix)
        total += float(np.sum(nats))
        symbols += len(seq.symbols)
        true.extend(seq.true_entropies.tolist())
    return {"cross_entropy": round(total / symbols, 4),
            "true_entropy": round(float(np.mean(true)), 4), "units": "nats per symbol"}


def fact_accuracy(lm, tb, limit: int) -> dict:
    from tokenwise.testbed.evaluate import eval_facts

    by_bucket = eval_facts(lm, tb, limit=limit)
    correct = sum(v["correct"] for v in by_bucket.values())
    n = sum(v["n"] for v in by_bucket.values())
    return {"accuracy": round(correct / n, 4), "correct": correct, "n": n,
            "by_bucket": {k: v["accuracy"] for k, v in by_bucket.items()}}


def measure(lm, tb, held: list[str], args) -> dict:
    from tokenwise.tokenizers import bits_per_byte

    out = {"bpb": round(bits_per_byte(lm, held), 4)}
    if tb is not None:
        out["facts"] = fact_accuracy(lm, tb, args.fact_limit)
        out["markov"] = markov_cross_entropy(lm, tb, args.markov_lines)
    return out


# ---------------------------------------------------------------------------------------------
# fine-tuning through the project's trainer


def finetune(model_dir: Path, data: Path, run_dir: Path, steps: int, args, resume: bool):
    from tokenwise.training import TrainConfig, train

    cfg = TrainConfig(str(model_dir), str(data), str(run_dir), loss="ce", fused=True,
                      steps=steps, lr=args.lr, batch_size=args.batch_size,
                      seq_len=args.seq_len, warmup=args.warmup, save_every=0,
                      seed=args.seed, device="cpu", resume=resume, overwrite=not resume)
    result = train(cfg, progress=False, log=lambda s: None)
    return result


def write_jsonl(docs: list[str], path: Path) -> Path:
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


# ---------------------------------------------------------------------------------------------
# part 1: the testbed


def run_testbed(args) -> dict:
    import torch

    from tokenwise.models import load
    from tokenwise.testbed import Testbed
    from tokenwise.tokenizers import tokens_per_byte, train, transplant

    torch.manual_seed(args.seed)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tb = Testbed(0)
    corpus = tb.training_documents()
    held = held_out_testbed(tb, args.held_facts, args.held_markov, args.held_arith,
                            args.held_needle)
    held_bytes = sum(len(t.encode()) for t in held)
    log(f"corpus {len(corpus)} docs; held-out {len(held)} docs, {held_bytes} bytes")
    data = write_jsonl(corpus[: args.train_docs], work / "finetune.jsonl")
    original = load("tw-large")
    result: dict = {
        "setup": {k: v for k, v in vars(args).items() if k != "func"},
        "held_out": {"docs": len(held), "bytes": held_bytes},
        "original": {"vocab": original.vocab_size,
                     "tokens_per_byte": round(tokens_per_byte(original.tokenizer, held), 4),
                     **measure(original, tb, held, args)},
        "tokenizers": {},
    }
    log(f"original: {result['original']}")
    for vocab in args.vocab:
        for supertokens in (False, True):
            name = f"{vocab // 1024}k{'+super' if supertokens else ''}"
            t0 = time.perf_counter()
            tok = train(corpus, vocab, supertokens=supertokens)
            entry: dict = {"vocab_target": vocab, "vocab": len(tok), "supertokens": supertokens,
                           "train_seconds": round(time.perf_counter() - t0, 1),
                           "tokens_per_byte": round(tokens_per_byte(tok, held), 4),
                           "inits": {}}
            log(f"{name}: {len(tok)} tokens, {entry['tokens_per_byte']} tokens/byte")
            for init in args.inits:
                moved = transplant(original, tok, init, out=work / f"{name}-{init}",
                                   seed=args.seed)
                row: dict = {"sources": moved.sources, "zero_shot": measure(moved.model, tb,
                                                                            held, args)}
                log(f"  {init}: zero-shot {row['zero_shot']}")
                if init in args.finetune_inits and name in args.finetune_tokenizers:
                    run_dir = work / f"{name}-{init}-ft"
                    done = 0
                    for steps in args.steps:
                        t0 = time.perf_counter()
                        res = finetune(moved.path, data, run_dir, steps, args, resume=done > 0)
                        done = steps
                        tuned = load(run_dir)
                        row[f"after_{steps}"] = {
                            **measure(tuned, tb, held, args),
                            "loss_last10": round(float(np.mean(res.losses[-10:])), 4),
                            "seconds": round(time.perf_counter() - t0, 1),
                        }
                        log(f"  {init} after {steps}: {row[f'after_{steps}']}")
                entry["inits"][init] = row
                save_partial(args, result)
            result["tokenizers"][name] = entry
            save_partial(args, result)
    return result


def save_partial(args, result: dict) -> None:
    Path(args.out + ".json").write_text(json.dumps(result, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------
# part 2: SmolLM2 on real English


def kjv_verses() -> list[str]:
    """Verses of the King James Bible from Debian's bible-kjv (its `bible` reader; local)."""
    import re
    import shutil
    import subprocess

    if shutil.which("bible") is None:
        sys.exit("no KJV reader: `apt-get install bible-kjv` (Debian), or give --corpus FILE")
    text = subprocess.run(["bible", "-f", "Gen1:1-Rev22:21"], capture_output=True, text=True,
                          check=True).stdout
    # each line is "Ge1:1 In the beginning ..."; the reference is not text
    return [re.sub(r"^\S+\d+:\d+ ", "", ln).strip() for ln in text.splitlines() if ln.strip()]


def english_corpus(args) -> tuple[list[str], list[str]]:
    """Training paragraphs and held-out paragraphs of real English text."""
    if args.corpus:
        lines = [ln.strip() for ln in Path(args.corpus).read_text().splitlines() if ln.strip()]
    else:
        lines = kjv_verses()
    # paragraphs of 8 lines; every 10th paragraph is held out (so books are spread over both)
    paras = [" ".join(lines[i:i + 8]) + "\n" for i in range(0, len(lines), 8)]
    held = paras[::10][: args.english_held]
    train_docs = [p for i, p in enumerate(paras) if i % 10]
    return train_docs, held


def run_smollm2(args) -> dict:
    import torch

    from tokenwise.models import load
    from tokenwise.tokenizers import tokens_per_byte, train, transplant

    torch.manual_seed(args.seed)
    work = Path(args.work) / "smollm2"
    work.mkdir(parents=True, exist_ok=True)
    train_docs, held = english_corpus(args)
    log(f"English: {len(train_docs)} training paragraphs, {len(held)} held out "
        f"({sum(len(t.encode()) for t in held)} bytes)")
    lm = load("smollm2-135m")
    result: dict = {
        "setup": {k: v for k, v in vars(args).items() if k != "func"},
        "weights": "Q4_1 GGUF dequantised to float32 (differs from the bf16 original)",
        "held_out": {"docs": len(held), "bytes": sum(len(t.encode()) for t in held)},
        "original": {"vocab": lm.vocab_size,
                     "tokens_per_byte": round(tokens_per_byte(lm.tokenizer, held), 4),
                     **measure(lm, None, held, args)},
        "tokenizers": {},
    }
    log(f"original: {result['original']}")
    data = write_jsonl(train_docs[: args.train_docs], work / "english.jsonl")
    if args.english_control and args.english_steps:
        # the original model fine-tuned the same way: how much of a fine-tuned transplant's
        # gain is adaptation to this text rather than to the new tokenizer
        t0 = time.perf_counter()
        res = finetune("smollm2-135m", data, work / "original-ft", args.english_steps, args,
                       resume=False)
        tuned = load(work / "original-ft")
        key = f"after_{args.english_steps}"
        result["original"][key] = {**measure(tuned, None, held, args),
                                   "loss_last10": round(float(np.mean(res.losses[-10:])), 4),
                                   "seconds": round(time.perf_counter() - t0, 1)}
        log(f"original {key}: {result['original'][key]}")
        del tuned
    for supertokens in (False, True) if args.english_super else (False,):
        name = f"{args.english_vocab}{'+super' if supertokens else ''}"
        tok = train(train_docs, args.english_vocab, supertokens=supertokens, template=lm.tokenizer)
        entry: dict = {"vocab": len(tok), "supertokens": supertokens,
                       "tokens_per_byte": round(tokens_per_byte(tok, held), 4), "inits": {}}
        log(f"{name}: {len(tok)} tokens, {entry['tokens_per_byte']} tokens/byte")
        for init in args.inits:
            moved = transplant(lm, tok, init, out=work / f"{name}-{init}", seed=args.seed)
            row: dict = {"sources": moved.sources,
                         "zero_shot": measure(moved.model, None, held, args)}
            log(f"  {init}: {row}")
            del moved
            if init == "tokenadapt" and args.english_steps and not supertokens:
                run_dir = work / f"{name}-{init}-ft"
                t0 = time.perf_counter()
                res = finetune(work / f"{name}-{init}", data, run_dir, args.english_steps, args,
                               resume=False)
                tuned = load(run_dir)
                row[f"after_{args.english_steps}"] = {
                    **measure(tuned, None, held, args),
                    "loss_last10": round(float(np.mean(res.losses[-10:])), 4),
                    "seconds": round(time.perf_counter() - t0, 1)}
                key = f"after_{args.english_steps}"
                log(f"  tokenadapt {key}: {row[key]}")
            entry["inits"][init] = row
            save_partial(args, result)
        result["tokenizers"][name] = entry
    return result


# ---------------------------------------------------------------------------------------------
# report


def markdown(result: dict, title: str) -> str:
    base = result["original"]["bpb"]
    lines = [f"### {title}", "",
             f"Original: {base} bits/byte, {result['original']['tokens_per_byte']} tokens/byte "
             f"(vocab {result['original']['vocab']}).", ""]
    has_facts = "facts" in result["original"]
    head = "| tokenizer | tokens/byte | init | bpb zero-shot | extra bpb |"
    if has_facts:
        head += " facts | Markov CE |"
    steps = sorted({int(k.split("_")[1]) for t in result["tokenizers"].values()
                    for r in t["inits"].values() for k in r if k.startswith("after_")})
    for s in steps:
        head += f" bpb after {s} |"
        if has_facts:
            head += f" facts after {s} |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    if has_facts:
        o = result["original"]
        lines.append(f"| original | {o['tokens_per_byte']} | - | {base} | 0 | "
                     f"{o['facts']['accuracy']} | {o['markov']['cross_entropy']} |"
                     + " |" * (len(steps) * 2))
    for name, t in result["tokenizers"].items():
        for init, r in t["inits"].items():
            z = r["zero_shot"]
            row = (f"| {name} ({t['vocab']}) | {t['tokens_per_byte']} | {init} | {z['bpb']} | "
                   f"{z['bpb'] - base:+.4f} |")
            if has_facts:
                row += f" {z['facts']['accuracy']} | {z['markov']['cross_entropy']} |"
            for s in steps:
                a = r.get(f"after_{s}")
                row += f" {a['bpb'] if a else '-'} |"
                if has_facts:
                    row += f" {a['facts']['accuracy'] if a else '-'} |"
            lines.append(row)
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["testbed", "smollm2", "both"], default="testbed")
    p.add_argument("--vocab", type=int, nargs="+", default=[2048, 4096])
    p.add_argument("--inits", nargs="*", default=["tokenadapt", "mean", "subword_mean",
                                                  "random"])
    p.add_argument("--finetune-inits", nargs="+", default=["tokenadapt", "mean"])
    p.add_argument("--finetune-tokenizers", nargs="+", default=["4k+super"])
    p.add_argument("--steps", type=int, nargs="+", default=[50, 200])
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--train-docs", type=int, default=3000,
                   help="fine-tuning data: the first N corpus documents")
    p.add_argument("--held-facts", type=int, default=60)
    p.add_argument("--held-markov", type=int, default=15)
    p.add_argument("--held-arith", type=int, default=15)
    p.add_argument("--held-needle", type=int, default=10)
    p.add_argument("--fact-limit", type=int, default=15, help="questions per bucket")
    p.add_argument("--markov-lines", type=int, default=15)
    p.add_argument("--corpus", default=None, help="English text file (default: the KJV)")
    p.add_argument("--english-vocab", type=int, default=8192)
    p.add_argument("--english-super", action="store_true")
    p.add_argument("--english-held", type=int, default=15)
    p.add_argument("--english-steps", type=int, default=0)
    p.add_argument("--english-control", action="store_true",
                   help="also fine-tune the original model the same way")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default=None,
                   help="directory for the models, kept (default: a temporary one, removed)")
    p.add_argument("--out", default=str(RESULTS / "tokenizer_transplant"))
    args = p.parse_args()
    import torch

    # one thread: on a shared, loaded machine two threads per process run several times slower
    torch.set_num_threads(args.threads)
    log(f"seed {args.seed}; args {vars(args)}")
    base_out = args.out
    scratch = None
    if args.work is None:  # the models take gigabytes (SmolLM2 copies): removed at the end
        scratch = tempfile.mkdtemp(prefix="tokenizer-transplant-")
        args.work = scratch
    try:
        run_parts(args, base_out)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def run_parts(args, base_out: str) -> None:
    if args.part in ("testbed", "both"):
        result = run_testbed(args)
        save_partial(args, result)
        Path(base_out + ".table.md").write_text(markdown(result, "tw-large (testbed)"))
        log("testbed done")
    if args.part in ("smollm2", "both"):
        args.out = base_out + "_smollm2"
        result = run_smollm2(args)
        save_partial(args, result)
        Path(args.out + ".table.md").write_text(
            markdown(result, "SmolLM2-135M-Instruct (Q4 GGUF dequantised)"))
        log("smollm2 done")


if __name__ == "__main__":
    main()

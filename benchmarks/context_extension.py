"""Context extension on the testbed: Entropy-ABF beside PI, NTK and YaRN.

Measures, for tw-reader (trained at 256 tokens) at 512 / 1,024 / 2,048 tokens:

- needle accuracy by needle distance (the needle line at 5 places in a memo of the target
  length; exact code, teacher-forced, which equals a greedy answer), per method, zero-shot and
  after the 100-sample / 6-step fine-tune (``tokenwise train --extend-context N``'s recipe:
  ``TrainConfig(extend_context=N, samples=100, steps=6, batch_size=16)``, fused loss);
- the control: the same memos (filler of the same kind, needle at the same place) at short
  length (~240 tokens, inside the window), so length extrapolation and distraction separate;
- mean attention entropy vs position (buckets of 128 positions), before and after extension;

and for tw-large on the Markov source (lines of the exact-entropy chain concatenated to the
target length): cross-entropy at symbol positions inside the window (< 256) and beyond it,
against the source's true entropy at those positions (1.918 nats on average in BENCHMARKS),
zero-shot and after the same fine-tune at 1,024.

Command (the defaults reproduce the recorded run):
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/context_extension.py \\
        --out benchmarks/results/context_extension.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tokenwise.context import entropy_by_position, extend, restore
from tokenwise.context import load as load_extended
from tokenwise.models import load
from tokenwise.testbed.markov import SYMBOLS, MarkovSource
from tokenwise.testbed.needle import NeedleWorld, question_prompt
from tokenwise.training.trainer import TrainConfig, train

METHODS = ("none", "pi", "ntk", "yarn", "entropy_abf")
FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)  # needle line's place in the memo (0: first line)
TRAINED = 256


def _memo(lines: list[tuple[str, str | None]]) -> str:
    # A line without a code reads as a compressor's cut ("The code of K is."): filler that
    # looks like the memo but gives no code to copy.
    return "Memo:\n" + "".join(f"The code of {k} is {v}.\n" if v else f"The code of {k} is.\n"
                               for k, v in lines)


def needle_item(world: NeedleWorld, lm, rng: random.Random, length: int, frac: float,
                code_lines: int = 2) -> dict:
    """A memo filling ``length`` tokens (prompt + answer): the needle at ``frac`` of its lines,
    ``code_lines - 1`` distractors with codes elsewhere, and code-less lines as filler."""
    keys = rng.sample(world.keys, len(world.keys))
    budget = length - len(lm.start_ids) - 4  # room for the answer's tokens
    count = 1
    while count < len(keys):  # as many code-less lines as fit (two get codes below)
        text = _memo([(k, None) for k in keys[: count + 1]]) + question_prompt(keys[0])
        if len(lm.encode(text)) + 2 * 4 > budget:
            break
        count += 1
    while True:
        idx = round(frac * (count - 1))
        others = [i for i in range(count) if i != idx]
        coded = {idx, *rng.sample(others, min(code_lines - 1, len(others)))}
        lines = [(keys[i], str(rng.randint(100, 999)) if i in coded else None)
                 for i in range(count)]
        prompt = _memo(lines) + question_prompt(lines[idx][0])
        if len(lm.encode(prompt)) <= budget or count == 1:
            break
        count -= 1
    distance = len(lm.encode(prompt)) - len(lm.encode(_memo(lines[:idx])))
    tokens = len(lm.start_ids) + len(lm.encode(prompt))
    return {"prompt": prompt, "answer": lines[idx][1], "distance": distance, "lines": count,
            "tokens": tokens}


@torch.no_grad()
def needle_right(lm, item: dict) -> bool:
    prompt = list(lm.start_ids) + lm.encode(item["prompt"])
    answer = lm.encode(" " + item["answer"])
    ids = torch.tensor([prompt + answer])
    logits = lm.hf_model(ids).logits[0]
    pred = logits[len(prompt) - 1 : len(prompt) - 1 + len(answer)].argmax(-1)
    return pred.tolist() == answer


def needle_eval(lm, items: list[dict]) -> dict:
    out = {}
    for frac in FRACTIONS:
        group = [it for it in items if it["frac"] == frac]
        right = [needle_right(lm, it) for it in group]
        out[str(frac)] = {"accuracy": sum(right) / len(right), "n": len(right),
                          "mean_distance": float(np.mean([it["distance"] for it in group]))}
    out["all"] = float(np.mean([v["accuracy"] for v in out.values()]))
    out["mean_tokens"] = float(np.mean([it["tokens"] for it in items]))
    return out


def needle_items(world, lm, seed: str, length: int, per: int) -> list[dict]:
    rng = random.Random(seed)
    items = []
    for frac in FRACTIONS:
        for _ in range(per):
            it = needle_item(world, lm, rng, length, frac)
            it["frac"] = frac
            items.append(it)
    return items


def markov_sequences(lm, source: MarkovSource, length: int, count: int, seed: int) -> list:
    """Lines of the chain concatenated to ``length`` tokens, with the true probabilities."""
    rng = np.random.default_rng([seed, length])
    sym_ids = [lm.encode(" " + s)[0] for s in SYMBOLS]
    out = []
    for _ in range(count):
        ids = list(lm.start_ids)
        targets = []  # (position, symbol index, true probs)
        while True:
            seq = source.sample(rng)
            line = lm.encode(seq.text)
            if len(ids) + len(line) > length:
                break
            pos = [len(ids) + i for i, t in enumerate(line) if t in sym_ids][-source.length:]
            targets += list(zip(pos, seq.symbols, seq.true_probs, strict=True))
            ids += line
        out.append((ids, targets))
    return out


@torch.no_grad()
def markov_eval(lm, seqs: list, trained: int = TRAINED) -> dict:
    sym_ids = torch.tensor([lm.encode(" " + s)[0] for s in SYMBOLS])
    rows = {"inside": ([], []), "beyond": ([], [])}
    for ids, targets in seqs:
        logp = torch.log_softmax(lm.hf_model(torch.tensor([ids])).logits[0].float(), -1)
        for pos, sym, probs in targets:
            key = "inside" if pos < trained else "beyond"
            rows[key][0].append(-logp[pos - 1, sym_ids[sym]].item())
            p = probs[probs > 0]
            rows[key][1].append(float(-(p * np.log(p)).sum()))
    return {k: {"cross_entropy": float(np.mean(v[0])), "true_entropy": float(np.mean(v[1])),
                "positions": len(v[0])} for k, v in rows.items() if v[0]}


def entropy_buckets(lm, sequences: list[list[int]], width: int = 128) -> list[float]:
    h = entropy_by_position(lm, sequences)
    return [float(h[i : i + width].mean()) for i in range(0, len(h), width)]


def fine_tune(model: str, method: str, length: int, data: list[dict], lr: float,
              workdir: Path, seed: int) -> tuple[object, list[float]]:
    path = workdir / f"{model}-{method}-{length}.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in data))
    out = workdir / f"{model}-{method}-{length}"
    res = train(TrainConfig(model=model, data=str(path), out=str(out), extend_context=length,
                            extend_method=method, samples=100, steps=6, batch_size=16, lr=lr,
                            seq_len=length, save_every=0, seed=seed, device="cpu"),
                progress=False, log=lambda s: None)
    return load_extended(str(out)), res.losses


def wilson(k: int, n: int) -> tuple[float, float]:
    """95% Wilson interval of k right out of n."""
    if n == 0:
        return (0.0, 1.0)
    z, p = 1.96, k / n
    mid = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5 / (1 + z * z / n)
    return (max(0.0, mid - half), min(1.0, mid + half))


def render(result: dict) -> str:
    """Markdown tables of a result JSON (what the BENCHMARKS section shows)."""
    out = []
    ctrl = result["control"]["none"]
    n_all = sum(v["n"] for k, v in ctrl.items() if k not in ("all", "mean_tokens"))
    base = ctrl["all"]
    lo, hi = wilson(round(base * n_all), n_all)
    out.append(f"In-window control (240 tokens, same filler, unextended): {base:.1%} "
               f"[{lo:.0%}-{hi:.0%}] of {n_all}.\n")
    out.append("| method | length | zero-shot | (% of in-window) | fine-tuned (6 steps) "
               "| (% of in-window) | control @240 zero-shot |")
    out.append("|---|---|---|---|---|---|---|")
    for key, value in result["needles"].items():
        method_len, mode = key.split("/")
        if mode != "zero-shot":
            continue
        method, length = method_len.split("@")
        n = sum(v["n"] for k, v in value.items() if k not in ("all", "mean_tokens"))
        zs = value["all"]
        lo, hi = wilson(round(zs * n), n)
        ft = result["needles"].get(f"{method_len}/fine-tuned")
        ft_txt = f"{ft['all']:.1%}" if ft else "-"
        ft_rel = f"{ft['all'] / base:.0%}" if ft and base else "-"
        c = result["control"].get(key)
        out.append(f"| {method} | {length} | {zs:.1%} [{lo:.0%}-{hi:.0%}] | {zs / base:.0%} | "
                   f"{ft_txt} | {ft_rel} | {c['all']:.1%} |" if c else
                   f"| {method} | {length} | {zs:.1%} [{lo:.0%}-{hi:.0%}] | {zs / base:.0%} | "
                   f"{ft_txt} | {ft_rel} | (= unextended) |")
    out.append("")
    out.append("Accuracy by needle place (zero-shot; mean distance to the question in tokens):\n")
    fr = [k for k in next(iter(result["needles"].values())) if k not in ("all", "mean_tokens")]
    out.append("| method@length | " + " | ".join(f"line {f}" for f in fr) + " |")
    out.append("|---|" + "---|" * len(fr))
    for key, value in result["needles"].items():
        out.append(f"| {key} | " + " | ".join(
            f"{value[f]['accuracy']:.0%} ({value[f]['mean_distance']:.0f})" for f in fr) + " |")
    out.append("")
    out.append("Markov (tw-large), cross-entropy in nats (true entropy of the same positions):\n")
    out.append("| method@length | inside 256 | beyond 256 | beyond - inside |")
    out.append("|---|---|---|---|")
    for key, value in result["markov"].items():
        i, b = value["inside"], value["beyond"]
        out.append(f"| {key} | {i['cross_entropy']:.3f} ({i['true_entropy']:.3f}) | "
                   f"{b['cross_entropy']:.3f} ({b['true_entropy']:.3f}) | "
                   f"{b['cross_entropy'] - i['cross_entropy']:+.3f} |")
    out.append("")
    out.append("Mean attention entropy (nats) by 128-position bucket:\n")
    ent = result["attention_entropy"]
    if ent:
        width = len(next(iter(ent.values())))
        out.append("| model | " + " | ".join(f"{128 * i}-" for i in range(width))
                   + " | last / [128,256) |")
        out.append("|---|" + "---|" * (width + 1))
        for key, row in ent.items():
            out.append(f"| {key} | " + " | ".join(f"{x:.2f}" for x in row)
                       + f" | {row[-1] / row[1]:.2f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048])
    ap.add_argument("--per", type=int, default=12, help="needle items per place and length")
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--finetune-lengths", type=int, nargs="*", default=[1024, 512, 2048])
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--markov-seqs", type=int, default=6)
    ap.add_argument("--markov-lengths", type=int, nargs="+", default=[1024])
    ap.add_argument("--entropy-seqs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"
                                         / "context_extension.json"))
    ap.add_argument("--no-finetune", action="store_true", help="zero-shot measurements only")
    ap.add_argument("--render", metavar="JSON", help="print the tables of a result file, only")
    args = ap.parse_args(argv)
    if args.render:
        print(render(json.loads(Path(args.render).read_text())))
        return 0
    torch.manual_seed(args.seed)
    t0 = time.time()
    result: dict = {"command": " ".join(["benchmarks/context_extension.py", *sys.argv[1:]]),
                    "seed": args.seed, "trained_length": TRAINED, "lr": args.lr,
                    "torch": torch.__version__, "needles": {}, "control": {},
                    "attention_entropy": {}, "markov": {}, "finetune_losses": {}}

    def save() -> None:
        result["seconds"] = round(time.time() - t0, 1)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:7.1f}s] {msg}", flush=True)

    reader = load("tw-reader")
    world = NeedleWorld(0)
    control_items = needle_items(world, reader, f"ctx-control/{args.seed}", 240, args.per)
    long_items = {n: needle_items(world, reader, f"ctx-eval/{args.seed}/{n}", n, args.per)
                  for n in args.lengths}
    result["control"]["none"] = needle_eval(reader, control_items)
    log(f"control (240 tokens, unextended): {result['control']['none']['all']:.3f}")

    # zero-shot needles and attention entropy
    ent_seqs = {n: [list(reader.start_ids) + reader.encode(it["prompt"])
                    for it in long_items[n][: args.entropy_seqs]] for n in args.lengths}
    for method in args.methods:
        for n in args.lengths:
            if method != "none":
                extend(reader, n, method=method)
            key = f"{method}@{n}/zero-shot"
            result["needles"][key] = needle_eval(reader, long_items[n])
            if method != "none":
                result["control"][f"{method}@{n}/zero-shot"] = needle_eval(reader, control_items)
            if n == max(args.lengths):
                result["attention_entropy"][key] = entropy_buckets(reader, ent_seqs[n])
            restore(reader)
            log(f"{key}: {result['needles'][key]['all']:.3f}")
            save()

    # tw-large on the Markov source, zero-shot
    large = load("tw-large")
    source = MarkovSource(0)
    for n in args.markov_lengths:
        seqs = markov_sequences(large, source, n, args.markov_seqs, args.seed)
        for method in args.methods:
            if method != "none":
                extend(large, n, method=method)
            result["markov"][f"{method}@{n}/zero-shot"] = markov_eval(large, seqs)
            restore(large)
            log(f"markov {method}@{n}: {result['markov'][f'{method}@{n}/zero-shot']}")
            save()

    if args.no_finetune:
        args.finetune_lengths, args.markov_lengths = [], []
    # the 100-sample / 6-step fine-tune
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for n in args.finetune_lengths:
            rng = random.Random(f"ctx-train/{args.seed}/{n}")
            data = []
            for i in range(100):
                it = needle_item(world, reader, rng, n, rng.random())
                data.append({"prompt": it["prompt"], "response": " " + it["answer"]})
                del i
            for method in [m for m in args.methods if m != "none"]:
                tuned, losses = fine_tune("tw-reader", method, n, data, args.lr, work, args.seed)
                key = f"{method}@{n}/fine-tuned"
                result["finetune_losses"][key] = losses
                result["needles"][key] = needle_eval(tuned, long_items[n])
                restore(tuned)  # the tuned weights at the trained length: did tuning hurt?
                result["control"][key + "/restored"] = needle_eval(tuned, control_items)
                if n == max(args.lengths):
                    extend(tuned, n, method=method)
                    result["attention_entropy"][key] = entropy_buckets(tuned, ent_seqs[n])
                log(f"{key}: {result['needles'][key]['all']:.3f} (losses {losses})")
                save()
        for n in args.markov_lengths:
            seqs = markov_sequences(large, source, n, args.markov_seqs, args.seed)
            train_seqs = markov_sequences(large, source, n, 100, args.seed + 1000)
            data = [{"text": large.decode(ids[len(large.start_ids):])} for ids, _ in train_seqs]
            for method in [m for m in args.methods if m != "none"]:
                tuned, losses = fine_tune("tw-large", method, n, data, args.lr, work, args.seed)
                key = f"{method}@{n}/fine-tuned"
                result["markov"][key] = markov_eval(tuned, seqs)
                result["finetune_losses"]["markov/" + key] = losses
                log(f"markov {key}: {result['markov'][key]}")
                save()
    save()
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

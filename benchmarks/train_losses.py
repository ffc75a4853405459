"""Fine-tune tw-small on its fact world with CE, EMO and ssToken; testbed accuracy of each.

The fine-tuning data are fresh paraphrases of every fact mention in the testbed's fact world
(seed 0, the world tw-small was trained on): Q/A mentions become prompt/response examples
(only the answer is a target), statements become plain text. Each method runs through the
same `tokenwise.training.trainer.train` that `tokenwise train` uses, with the same seed,
data order, steps and learning rate; only the loss or the token selection differs. Then
greedy accuracy on one question per fact (eval_facts), by frequency bucket, with 95% Wilson
intervals; "seen" pools frequent, medium and rare facts.

Run: ``python benchmarks/train_losses.py`` (a few minutes per method on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch

from tokenwise.models import load
from tokenwise.testbed import Testbed
from tokenwise.testbed.evaluate import Accuracy, eval_facts
from tokenwise.testbed.facts import ANSWER_PREFIX
from tokenwise.training.trainer import TrainConfig, train

METHODS = {
    "ce": {"loss": "ce"},
    "emo": {"loss": "emo"},
    "ce+sstoken": {"loss": "ce", "select": "sstoken", "history_model": "tw-small"},
    "emo+sstoken": {"loss": "emo", "select": "sstoken", "history_model": "tw-small"},
}


def write_data(path: Path, testbed: Testbed, seed: int) -> int:
    """Fresh paraphrases of every fact mention, as JSONL; returns the number of examples."""
    lines = testbed.fact_world.training_lines(random.Random(f"finetune/{seed}"))
    with path.open("w") as fh:
        for line in lines:
            head, sep, answer = line.partition("\n" + ANSWER_PREFIX)
            if sep:  # "Q: ...\nA: answer": the answer is the response
                fh.write(json.dumps({"prompt": head + sep, "response": answer}) + "\n")
            else:
                fh.write(json.dumps({"text": line}) + "\n")
    return len(lines)


def summarise(report: dict) -> dict:
    seen = [report[b] for b in ("frequent", "medium", "rare")]
    pooled = Accuracy(sum(r["correct"] for r in seen), sum(r["n"] for r in seen))
    return {**report, "seen": pooled.as_dict()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fused", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--json", default=None, help="write the full results here")
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    testbed = Testbed(0)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "facts.jsonl"
        n = write_data(data, testbed, args.seed)
        print(f"data: {n} examples ({data.stat().st_size // 1024} KiB)")
        results["base"] = {"facts": summarise(eval_facts(load("tw-small"), testbed))}
        for name in args.methods.split(","):
            cfg = TrainConfig("tw-small", str(data), str(Path(tmp) / name), steps=args.steps,
                              batch_size=args.batch_size, lr=args.lr, warmup=20, seq_len=64,
                              save_every=0, seed=args.seed, fused=args.fused, device="cpu",
                              **METHODS[name])
            start = time.perf_counter()
            run = train(cfg, progress=False, log=lambda s: None)
            seconds = time.perf_counter() - start
            facts = summarise(eval_facts(load(run.model_dir), testbed))
            results[name] = {"facts": facts, "train_seconds": round(seconds, 1),
                             "final_loss": round(sum(run.losses[-20:]) / 20, 4)}
            print(f"{name}: {seconds:.0f} s, last-20 mean loss {results[name]['final_loss']}")
    buckets = ("seen", "frequent", "medium", "rare", "unseen")
    print(f"\n{'method':<12}" + "".join(f"{b:>22}" for b in buckets))
    for name, r in results.items():
        cells = []
        for b in buckets:
            f = r["facts"][b]
            cells.append(f"{100 * f['accuracy']:5.1f} [{100 * f['ci95'][0]:4.1f}-"
                         f"{100 * f['ci95'][1]:4.1f}]")
        print(f"{name:<12}" + "".join(f"{c:>22}" for c in cells))
    n_b = {b: results["base"]["facts"][b]["n"] for b in buckets}
    print("n per bucket: " + ", ".join(f"{b} {n_b[b]}" for b in buckets))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results},
                                              indent=1) + "\n")


if __name__ == "__main__":
    main()

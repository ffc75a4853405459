"""Context extension on a real model: SmolLM2-135M-Instruct read past its trained 8,192 tokens.

The testbed half of this measurement is ``benchmarks/context_extension.py``. Here a real
model reads real English longer than it was trained on: ``--documents`` windows of
``--length`` tokens (default 16,384, 2x SmolLM2's 8,192) cut from Python's own language
reference (``pydoc_data.topics``, shipped with CPython, 79 sections in name order, ~110k
SmolLM2 tokens). For each method (none, PI, NTK, YaRN, Entropy-ABF; zero-shot: fine-tuning a
135M model at 16k tokens is out of reach of 2 CPU cores) the script records the cross-entropy
of every token, reported

- by position bucket (``--bucket`` tokens), inside the trained window and beyond it;
- against an in-window reference for the same tokens: the unextended model reading each block
  of the second half with only the preceding ``trained - block`` tokens as context (a sliding
  window that never leaves the trained length; ``--reference-block`` tokens a forward). A
  method that extrapolates well reads tokens beyond 8,192 at least as well as this reference,
  because it sees more context.

Memory: the forward runs through the base model with SDPA (no explicit softmax, so no
``heads x length^2`` scores) and the head is applied in chunks, so 16,384 tokens need about
2 GiB, not the ~13.5 GiB ``tokenwise.context.estimate_memory`` allows for an explicit softmax
and full logits. Attention entropy is not measured here (it needs the explicit softmax).

The weights are the Q4 GGUF file dequantised to float32: they differ from the bf16 originals.

Command (the defaults reproduce the recorded run; each 16k forward takes minutes on one core):
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/context_extension_real.py \\
        --out benchmarks/results/context_extension_real.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from tokenwise.context import extend, restore
from tokenwise.context.extend import trained_length
from tokenwise.models import load

METHODS = ("none", "pi", "ntk", "yarn", "entropy_abf")


def documents(lm, length: int, count: int) -> list[list[int]]:
    """``count`` consecutive token windows of ``length`` (start ids first) from the reference."""
    import pydoc_data.topics as topics

    text = "\n\n".join(topics.topics[k] for k in sorted(topics.topics))
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    body = length - len(lm.start_ids)
    if len(ids) < count * body:
        raise SystemExit(f"the reference has {len(ids)} tokens, fewer than {count} x {body}")
    return [list(lm.start_ids) + ids[i * body:(i + 1) * body] for i in range(count)]


@torch.no_grad()
def token_nll(hf, ids: list[int], chunk: int = 1024) -> torch.Tensor:
    """Cross-entropy (nats) of tokens 1.. of ``ids`` given all earlier ones: ``[len - 1]``."""
    x = torch.tensor([ids])
    hidden = hf.model(input_ids=x).last_hidden_state[0]
    out = []
    for s in range(0, len(ids) - 1, chunk):
        logits = hf.lm_head(hidden[s:s + chunk]).float()
        targets = x[0, s + 1:s + 1 + chunk]
        logits = logits[: len(targets)]
        out.append(torch.nn.functional.cross_entropy(logits, targets, reduction="none"))
    return torch.cat(out)


@torch.no_grad()
def windowed_nll(hf, ids: list[int], start: int, window: int, block: int) -> torch.Tensor:
    """The in-window reference: tokens ``start..`` scored in blocks of ``block``, each with
    only the ``window - block`` tokens before it as context."""
    out = []
    for s in range(start, len(ids), block):
        lo = max(0, s + block - window)
        part = ids[lo:s + block]
        nll = token_nll(hf, part)  # predicts part[1:]
        out.append(nll[s - lo - 1:])
    return torch.cat(out)


def buckets(nll: torch.Tensor, size: int) -> list[float]:
    # nll[i] is token i + 1's cross-entropy: bucket by the predicted token's position.
    pos = torch.arange(1, len(nll) + 1)
    return [float(nll[(pos >= b) & (pos < b + size)].mean()) for b in range(0, len(nll) + 1, size)
            if ((pos >= b) & (pos < b + size)).any()]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--length", type=int, default=16384)
    parser.add_argument("--documents", type=int, default=1)
    parser.add_argument("--bucket", type=int, default=2048)
    parser.add_argument("--methods", default="none,entropy_abf,yarn,ntk,pi")
    parser.add_argument("--reference-block", type=int, default=4096,
                        help="tokens scored per reference forward (context: trained - block)")
    parser.add_argument("--no-reference", action="store_true",
                        help="skip the sliding-window in-window reference")
    parser.add_argument("--out", default="benchmarks/results/context_extension_real.json")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    lm = load(args.model)
    hf = lm.hf_model
    trained = trained_length(lm)
    docs = documents(lm, args.length, args.documents)
    result: dict = {"model": args.model, "trained_length": trained, "length": args.length,
                    "documents": args.documents, "bucket": args.bucket,
                    "text": "pydoc_data.topics (Python language reference), consecutive windows",
                    "weights": "Q4 GGUF dequantised to float32 (differ from the bf16 originals)",
                    "methods": {}}
    if not args.no_reference:
        t0 = time.time()
        block = args.reference_block
        refs = [windowed_nll(hf, d, trained, trained, block) for d in docs]
        ref = torch.stack(refs)
        result["reference_beyond"] = {
            "value": ref.mean().item(), "window": trained, "block": block,
            "by_bucket": [float(ref[:, i:i + block].mean()) for i in range(0, ref.shape[1], block)],
            "per_document": [float(r.mean()) for r in refs], "seconds": time.time() - t0}
        print(f"in-window reference beyond: {ref.mean().item():.4f} nats "
              f"({time.time() - t0:.0f} s)", flush=True)
    for method in args.methods.split(","):
        restore(lm)
        if method != "none":
            extend(lm, args.length, method=method, check_memory=False)
        t0 = time.time()
        nlls = [token_nll(hf, d) for d in docs]
        nll = torch.stack(nlls)  # [docs, len - 1]
        inside = nll[:, : trained - 1].mean().item()
        beyond = nll[:, trained - 1:].mean().item()
        result["methods"][method] = {
            "inside": inside, "beyond": beyond,
            "by_bucket": buckets(nll.mean(0), args.bucket),
            "per_document_beyond": [float(n[trained - 1:].mean()) for n in nlls],
            "seconds": time.time() - t0,
        }
        print(f"{method}: inside {inside:.4f} beyond {beyond:.4f} nats "
              f"({time.time() - t0:.0f} s)", flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    Path(args.out).write_text(json.dumps(result, indent=1))
    if not math.isfinite(sum(m["beyond"] for m in result["methods"].values())):
        print("a cross-entropy is not finite", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()

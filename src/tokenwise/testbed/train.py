"""Train the built-in models (`tokenwise testbed train`): tokenizer, then each model.

Everything is seeded: the worlds, the corpus, the tokenizer, the initial weights and the
batch order. On the same machine, torch version and thread count the weights come out bit
for bit the same.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path

import torch

from tokenwise.models.language_model import count_parameters
from tokenwise.testbed.reader import READER_SPEC, train_reader
from tokenwise.testbed.spec import ModelSpec
from tokenwise.testbed.tokenizer import train_tokenizer
from tokenwise.testbed.worlds import Testbed

# Many small steps rather than few large ones: copying from context (needles) and carrying
# (additions) appear only after enough optimizer steps, whatever the tokens seen.
SPECS: dict[str, ModelSpec] = {
    "tw-small": ModelSpec("tw-small", hidden_size=128, layers=3, heads=4,
                          intermediate_size=352, steps=1000, batch_size=16, lr=3e-3,
                          warmup=50),
    "tw-large": ModelSpec("tw-large", hidden_size=256, layers=6, heads=8,
                          intermediate_size=688, steps=1100, batch_size=16, lr=2.5e-3,
                          warmup=50),
}
VOCAB_SIZE = 1024
#: Every built-in model ``train_builtin`` can write: the two general models, and the reader
#: (``tokenwise.testbed.reader``), trained on needle questions only.
TRAINABLE = (*SPECS, "tw-reader")


def pack(docs: Sequence[list[int]], context: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack tokenised documents whole into ``(n, context)`` blocks, padding the rest.

    A document never straddles two blocks (a needle context must stay with its question);
    one longer than ``context`` is cut to ``context`` tokens.

    Args:
        docs: token ids of each document (BOS ... EOS).
        context: block length.
        pad_id: id used for padding (its labels are -100).

    Returns:
        ``input_ids`` and ``labels``, both ``(n_blocks, context)``.

    Example:
        >>> ids, labels = pack([[1, 5, 2], [1, 6, 6, 2]], context=4, pad_id=0)
        >>> ids.tolist(), labels[0].tolist()
        ([[1, 5, 2, 0], [1, 6, 6, 2]], [1, 5, 2, -100])
    """
    blocks: list[list[int]] = []
    current: list[int] = []
    for doc in docs:
        doc = doc[:context]
        if len(current) + len(doc) > context:
            blocks.append(current)
            current = []
        current = current + doc
    if current:
        blocks.append(current)
    ids = torch.full((len(blocks), context), pad_id, dtype=torch.long)
    labels = torch.full((len(blocks), context), -100, dtype=torch.long)
    for i, block in enumerate(blocks):
        ids[i, : len(block)] = torch.tensor(block)
        labels[i, : len(block)] = torch.tensor(block)
    return ids, labels


def _lr_at(step: int, spec: ModelSpec) -> float:
    if step < spec.warmup:
        return spec.lr * (step + 1) / spec.warmup
    progress = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
    return spec.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_model(spec: ModelSpec, tokenizer, ids: torch.Tensor, labels: torch.Tensor,
                seed: int, progress: bool = True,
                log: Callable[[str], None] = print) -> tuple[torch.nn.Module, dict]:
    """Train one Llama model from scratch on packed blocks.

    Args:
        spec: architecture and schedule.
        tokenizer: the shared tokenizer (for special-token ids and vocabulary size).
        ids: ``(n, context)`` packed input ids.
        labels: ``(n, context)`` labels (-100 on padding).
        seed: seeds the weights and the batch order.
        progress: show a progress bar.
        log: where to print a line of progress.

    Returns:
        The trained model (float32, eval mode) and a dict of training facts.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    from tokenwise.progress import progress_bar

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        max_position_embeddings=spec.context,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": spec.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=spec.lr, betas=(0.9, 0.95),
    )
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(ids.shape[0], generator=gen)
    cursor = 0
    losses: list[float] = []
    start = time.perf_counter()
    model.train()
    bar = progress_bar(range(spec.steps), desc=f"train {spec.name}", unit="step",
                       enabled=progress)
    for step in bar:
        if cursor + spec.batch_size > len(order):
            order = torch.randperm(ids.shape[0], generator=gen)
            cursor = 0
        idx = order[cursor : cursor + spec.batch_size]
        cursor += spec.batch_size
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, spec)
        loss = model(input_ids=ids[idx], labels=labels[idx]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 10 == 0 or step == spec.steps - 1:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if not progress and (step % 50 == 0 or step == spec.steps - 1):
            log(f"{spec.name} step {step}/{spec.steps} loss {losses[-1]:.4f}")
    seconds = time.perf_counter() - start
    model.eval()
    n_params = count_parameters(model)
    facts = {
        "spec": asdict(spec),
        "seed": seed,
        "parameters": n_params,
        "train_seconds": round(seconds, 1),
        "tokens_seen": spec.steps * spec.batch_size * spec.context,
        "epochs": round(spec.steps * spec.batch_size / ids.shape[0], 3),
        "final_loss": round(sum(losses[-20:]) / min(20, len(losses)), 4),
        "loss_curve": [round(sum(losses[i : i + 10]) / len(losses[i : i + 10]), 4)
                       for i in range(0, len(losses), 10)],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    return model, facts


def build_corpus(seed: int, testbed: Testbed | None = None):
    """The testbed corpus, the tokenizer trained on it, and the packed blocks.

    Args:
        seed: the testbed seed.
        testbed: a prepared testbed (default: ``Testbed(seed)``).

    Returns:
        ``(testbed, tokenizer, docs_ids, stats)``.
    """
    testbed = testbed or Testbed(seed)
    docs = testbed.training_documents()
    tokenizer = train_tokenizer(docs, VOCAB_SIZE)
    enc = tokenizer(docs, add_special_tokens=False)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    docs_ids = [[bos, *d, eos] for d in enc]
    stats = {"documents": len(docs), "tokens": sum(len(d) for d in docs_ids)}
    return testbed, tokenizer, docs_ids, stats


def train_builtin(out_dir: str | Path, names: Sequence[str] = tuple(SPECS), seed: int = 0,
                  steps: int | None = None, progress: bool = True,
                  log: Callable[[str], None] = print,
                  testbed: Testbed | None = None) -> dict[str, dict]:
    """Train the built-in models from scratch and write them to ``out_dir/NAME``.

    Weights are stored as float16 safetensors (half the size; loading casts them back to
    float32 on CPU), with the tokenizer and ``training.json`` beside them.

    Args:
        out_dir: parent directory; ``out_dir/tw-small`` etc. are (re)written.
        names: which models to train.
        seed: the testbed and training seed.
        steps: override every model's step count (for quick checks).
        progress: show progress bars.
        log: where to print progress lines.
        testbed: the worlds to train on (default ``Testbed(seed)``, the shipped models').

    Example:
        >>> facts = train_builtin("/tmp/tw-models", names=["tw-small"], steps=2,
        ...                       progress=False, log=lambda s: None)  # doctest: +SKIP
    """
    unknown = [n for n in names if n not in TRAINABLE]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; allowed: {list(TRAINABLE)}")
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return _train_all(out_dir, names, seed, steps, progress, log, testbed)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)


def _train_all(out_dir: str | Path, names: Sequence[str], seed: int, steps: int | None,
               progress: bool, log: Callable[[str], None],
               testbed: Testbed | None) -> dict[str, dict]:
    testbed, tokenizer, docs_ids, stats = build_corpus(seed, testbed)
    log(f"corpus: {stats['documents']} documents, {stats['tokens']:,} tokens")
    out = Path(out_dir)
    results = {}
    for name in names:
        if name == "tw-reader":
            results[name] = _train_reader(out / name, tokenizer, seed, steps, progress, log,
                                          testbed)
            continue
        spec = SPECS[name]
        if steps is not None:
            spec = replace(spec, steps=steps, warmup=min(spec.warmup, steps))
        ids, labels = pack(docs_ids, spec.context, tokenizer.pad_token_id)
        model, facts = train_model(spec, tokenizer, ids, labels, seed, progress, log)
        facts["corpus"] = {**stats, "blocks": int(ids.shape[0])}
        target = save_builtin(model, tokenizer, facts, out / name)
        log(f"{name}: {facts['parameters']:,} parameters, {facts['train_seconds']} s, "
            f"final loss {facts['final_loss']} -> {target}")
        results[name] = facts
    return results


def save_builtin(model: torch.nn.Module, tokenizer, facts: dict, target: str | Path) -> Path:
    """Write a built-in model: float16 safetensors, tokenizer, ``training.json``.

    Args:
        model: the trained model (converted to float16 in place).
        tokenizer: its tokenizer.
        facts: the training facts, written as ``training.json``.
        target: the model's directory (created; old weights removed).

    Returns:
        ``target`` as a path.

    Example:
        >>> from tokenwise.models import load
        >>> lm = load("tw-small")
        >>> save_builtin(lm.hf_model, lm.tokenizer, {"seed": 0}, "/tmp/tw-copy")  # doctest: +SKIP
        PosixPath('/tmp/tw-copy')
    """
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    for old in target.glob("*.safetensors"):
        old.unlink()
    model.to(torch.float16).save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    (target / "training.json").write_text(json.dumps(facts, indent=1) + "\n")
    for written in target.iterdir():
        written.chmod(0o644)  # readable by every user of a shared install
    return target


def _train_reader(target: Path, tokenizer, seed: int, steps: int | None, progress: bool,
                  log: Callable[[str], None], testbed: Testbed) -> dict:
    spec = READER_SPEC
    if steps is not None:
        spec = replace(spec, steps=steps, warmup=min(spec.warmup, steps))
    model, facts = train_reader(tokenizer, testbed.needles, seed, spec, progress, log)
    save_builtin(model, tokenizer, facts, target)
    log(f"tw-reader: {facts['parameters']:,} parameters, {facts['train_seconds']} s, "
        f"levels {facts['levels_reached']} -> {target}")
    return facts

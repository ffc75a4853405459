"""Fine-tune a local causal LM on a text or JSONL file (`tokenwise train`), with resume.

The loop is deliberately plain: one batch, one loss, AdamW, gradient clipping. What it adds:

* **Losses** through :func:`tokenwise.training.patch.patch`: ``loss="ce"`` or ``"emo"``,
  ``fused=True`` for the memory-light forms (the fused linear cross-entropy; EMO over
  recomputed logit chunks). Plain cross-entropy without fusing is the model's own loss.
* **Token selection**: ``select="sstoken"`` relabels each batch with
  :func:`tokenwise.training.sstoken.select_tokens` against a frozen history model.
* **Checkpoints** in one safetensors file (model, optimizer state, step, RNG states, data
  order), written atomically (temporary file, then rename), every ``save_every`` steps and
  when SIGTERM or SIGINT stops the run. A resumed run continues bit for bit as if it had
  never stopped: same batches, same updates, same weights.
* **A safe output directory** (:mod:`tokenwise.training.runs`): checked before any work,
  never written over unless it is this trainer's own run or ``overwrite`` is set.
* **A model directory** at the end (``save_pretrained`` + tokenizer), loadable with
  :func:`tokenwise.models.load`.

Data: a ``.jsonl`` file holds one JSON object per line, ``{"text": ...}`` (every token is a
target) or ``{"prompt": ..., "response": ...}`` (only the response is); any other file is
UTF-8 text, cut into ``seq_len`` windows that overlap by one token, so every token but the
first is a target exactly once.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tokenwise.errors import TokenwiseError
from tokenwise.models.loading import pick_device
from tokenwise.progress import progress_bar
from tokenwise.training.runs import (
    StopSignals,
    TrainingInterrupted,
    check_output_dir,
    read_checkpoint,
    restore_state,
    state_tensors,
    write_checkpoint,
)

__all__ = ["TrainConfig", "TrainResult", "load_examples", "train"]

LOSSES = ("ce", "emo")
SELECTIONS = (None, "sstoken")
SCHEDULES = ("constant", "cosine")
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILE = "state.safetensors"
CHECKPOINT_FORMAT = "tokenwise-train-1"
#: settings that must not change between a checkpoint and its resumed run.
_RESUME_KEYS = ("model", "loss", "fused", "select", "history_model", "rho", "gamma", "lr",
                "batch_size", "seq_len", "warmup", "schedule", "weight_decay", "grad_clip",
                "seed", "extend_context", "extend_method", "samples")


@dataclass
class TrainConfig:
    """Everything a training run depends on.

    Args:
        model: a built-in model name or a local Hugging Face directory.
        data: a ``.jsonl`` file (``text`` or ``prompt``/``response`` per line) or a text file.
        out: output directory (model files, ``training.json``, ``checkpoint/``).
        loss: ``"ce"`` or ``"emo"``.
        fused: compute the loss without materialising full logits (see ``patch``).
        select: None, or ``"sstoken"`` (needs ``history_model``).
        history_model: the frozen history model of ssToken (same tokenizer).
        rho: ssToken's share of response tokens kept.
        gamma: ssToken's weight of the loss term against the attention term.
        steps: total optimizer steps.
        lr: peak learning rate (AdamW, betas 0.9/0.95).
        batch_size: sequences per step.
        seq_len: tokens per sequence (default: the model's context length).
        warmup: linear warm-up steps.
        schedule: ``"constant"`` after warm-up, or ``"cosine"`` decay to 10% at ``steps``.
        weight_decay: AdamW weight decay on matrices (never on norms or biases).
        grad_clip: clip the global gradient norm to this (0 turns clipping off).
        save_every: write a checkpoint every this many steps (0: only at the end); also when
            SIGTERM or SIGINT stops the run.
        seed: seeds the data order and any randomness in the model.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``.
        resume: continue from ``out/checkpoint`` (it must exist and match these settings).
        overwrite: a non-empty ``out`` that is not this trainer's own run may be used: its
            contents are deleted just before the first step (see
            :mod:`tokenwise.training.runs`). Without it such an ``out`` is refused.
        extend_context: extend the model's context to this many tokens before training
            (:func:`tokenwise.context.extend`); the saved model keeps the extension.
        extend_method: the extension method (``"entropy_abf"``, the default, ``"pi"``,
            ``"ntk"``, ``"yarn"``).
        samples: train on the first this many examples of ``data`` only (None: all).
    """

    model: str
    data: str
    out: str
    loss: str = "ce"
    fused: bool = True
    select: str | None = None
    history_model: str | None = None
    rho: float = 0.6
    gamma: float = 0.5
    steps: int = 100
    lr: float = 1e-4
    batch_size: int = 8
    seq_len: int | None = None
    warmup: int = 0
    schedule: str = "constant"
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    save_every: int = 100
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    overwrite: bool = False
    extend_context: int | None = None
    extend_method: str | None = None
    samples: int | None = None

    def check(self) -> None:
        """Raise :class:`TokenwiseError` naming the first bad setting."""
        if self.loss not in LOSSES:
            raise TokenwiseError(f"loss={self.loss!r}: allowed {', '.join(LOSSES)}")
        if self.select not in SELECTIONS:
            raise TokenwiseError(f"select={self.select!r}: allowed none or 'sstoken'")
        if self.select == "sstoken" and not self.history_model:
            raise TokenwiseError("select='sstoken' needs a history model (--history-model)")
        if self.select is None and self.history_model:
            raise TokenwiseError("a history model is used only with select='sstoken'")
        if self.schedule not in SCHEDULES:
            raise TokenwiseError(f"schedule={self.schedule!r}: allowed {', '.join(SCHEDULES)}")
        for name, low in (("steps", 1), ("batch_size", 1), ("warmup", 0), ("save_every", 0),
                          ("seed", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise TokenwiseError(f"{name}={value!r}: allowed an integer >= {low}")
        for name in ("extend_context", "samples"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value < 1):
                raise TokenwiseError(f"{name}={value!r}: allowed an integer >= 1, or None")
        if self.extend_method is not None and self.extend_context is None:
            raise TokenwiseError(f"extend_method={self.extend_method!r} needs extend_context")
        if self.seq_len is not None and (not isinstance(self.seq_len, int) or self.seq_len < 2):
            raise TokenwiseError(f"seq_len={self.seq_len!r}: allowed an integer >= 2")
        for name in ("lr", "weight_decay", "grad_clip", "rho", "gamma"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise TokenwiseError(f"{name}={value!r}: allowed a finite number >= 0")
        if self.lr == 0:
            raise TokenwiseError("lr=0: allowed a number > 0")
        if not 0 < self.rho <= 1 or not 0 <= self.gamma <= 1:
            raise TokenwiseError(
                f"rho={self.rho}, gamma={self.gamma}: allowed 0 < rho <= 1, 0 <= gamma <= 1"
            )


@dataclass
class TrainResult:
    """What a run did: the final step, the per-step losses of the whole run (including the
    steps before a resume), where the model went, and the wall time of this invocation."""

    step: int
    losses: list[float]
    model_dir: Path
    seconds: float
    truncated: int = 0
    examples: int = 0
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# data


@dataclass(frozen=True)
class Example:
    """One training example: ``prompt`` is None for plain text (every token a target)."""

    text: str
    prompt: str | None = None


def load_examples(path: str | os.PathLike[str]) -> list[Example]:
    """Read training examples from a ``.jsonl`` file or a UTF-8 text file.

    Args:
        path: ``*.jsonl``: one JSON object per line with ``"text"``, or ``"prompt"`` and
            ``"response"``; blank lines are skipped. Any other file: one text.

    Example:
        >>> p = Path("ex.jsonl")
        >>> _ = p.write_text('{"prompt": "2+2=", "response": "4"}\\n{"text": "hi"}\\n')
        >>> load_examples(p)
        [Example(text='4', prompt='2+2='), Example(text='hi', prompt=None)]
    """
    file = Path(path)
    if not file.is_file():
        raise TokenwiseError(f"data file {str(path)!r} does not exist or is not a file")
    raw = file.read_bytes()
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TokenwiseError(
            f"data file {str(path)!r} is not UTF-8 (byte 0x{raw[exc.start]:02x} at offset "
            f"{exc.start})"
        ) from None
    if file.suffix.lower() != ".jsonl":
        if not content.strip():
            raise TokenwiseError(f"data file {str(path)!r} is empty")
        return [Example(content)]
    out = []
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{str(path)!r} line {number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TokenwiseError(f"{where} is not valid JSON: {exc.msg}") from None
        if not isinstance(obj, dict):
            raise TokenwiseError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        if "text" in obj:
            if not isinstance(obj["text"], str) or not obj["text"]:
                raise TokenwiseError(f"{where}: 'text' must be a non-empty string")
            out.append(Example(obj["text"]))
        elif "prompt" in obj and "response" in obj:
            prompt, response = obj["prompt"], obj["response"]
            if not isinstance(prompt, str) or not isinstance(response, str) or not response:
                raise TokenwiseError(
                    f"{where}: 'prompt' must be a string and 'response' a non-empty string"
                )
            out.append(Example(response, prompt))
        else:
            raise TokenwiseError(
                f"{where}: has keys {sorted(obj)}; allowed 'text', or 'prompt' and 'response'"
            )
    if not out:
        raise TokenwiseError(f"data file {str(path)!r} holds no examples")
    return out


def _tokenize(examples: list[Example], lm: Any, seq_len: int,
              progress: bool) -> tuple[list[tuple[list[int], list[int]]], int]:
    """Rows of (input ids, labels); returns them and how many examples were shortened."""
    # what the tokenizer itself puts before a text (a BOS for Llama-style tokenizers, nothing
    # for SmolLM2 or GPT-2), as at inference
    bos = list(lm.start_ids)
    eos = [lm.eos_token_id] if lm.eos_token_id is not None else []
    rows: list[tuple[list[int], list[int]]] = []
    truncated = 0
    for ex in progress_bar(examples, desc="tokenize", unit="example",
                           enabled=progress and len(examples) >= 1000):
        if ex.prompt is None:
            ids = bos + lm.encode(ex.text) + eos
            # windows overlap by one token so every token but the first is a target once
            for start in range(0, max(1, len(ids) - 1), seq_len - 1):
                window = ids[start : start + seq_len]
                if len(window) >= 2:
                    rows.append((window, list(window)))
            continue
        prompt = bos + lm.encode(ex.prompt)
        response = lm.encode(ex.text) + eos
        if len(prompt) + len(response) > seq_len:
            truncated += 1
            response = response[: seq_len - 1]
            keep = seq_len - len(response)
            prompt = prompt[:1] + prompt[len(prompt) - keep + 1 :] if keep > 1 else prompt[:1]
        rows.append((prompt + response, [-100] * len(prompt) + response))
    if not rows:
        raise TokenwiseError("the data gives no sequence of at least two tokens to train on")
    return rows, truncated


class _Batches:
    """Seeded shuffled batches that cross epoch boundaries; its state goes into checkpoints."""

    def __init__(self, n_rows: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size = n_rows, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(n_rows, generator=self.generator)
        self.cursor = 0
        self.epoch = 0

    def next(self) -> list[int]:
        picked: list[int] = []
        while len(picked) < self.batch_size:
            if self.cursor == self.n:
                self.order = torch.randperm(self.n, generator=self.generator)
                self.cursor = 0
                self.epoch += 1
            take = min(self.batch_size - len(picked), self.n - self.cursor)
            picked.extend(self.order[self.cursor : self.cursor + take].tolist())
            self.cursor += take
        return picked


def _collate(rows: list[tuple[list[int], list[int]]], pad_id: int,
             device: torch.device) -> dict[str, Tensor]:
    length = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), length), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, (row_ids, row_labels) in enumerate(rows):
        ids[i, : len(row_ids)] = torch.tensor(row_ids)
        labels[i, : len(row_labels)] = torch.tensor(row_labels)
        mask[i, : len(row_ids)] = 1
    return {"input_ids": ids.to(device), "labels": labels.to(device),
            "attention_mask": mask.to(device)}


# ---------------------------------------------------------------------------------------------
# loss


def _install_loss(model: torch.nn.Module, loss: str, fused: bool) -> None:
    """Plain CE is the model's own loss; anything else goes through ``patch``."""
    if loss == "ce" and not fused:
        return
    from tokenwise.training.patch import patch

    try:
        patch(model, loss=loss, fused=fused)
    except TokenwiseError as exc:
        hint = " (plain cross-entropy works with --no-fused)" if loss == "ce" else ""
        raise TokenwiseError(f"--loss {loss} {'--fused' if fused else '--no-fused'}: {exc}"
                             f"{hint}") from None


def _step_loss(model: torch.nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """The one place the training loss is computed (the installed loss, mean over targets)."""
    return model(**batch, use_cache=False).loss


# ---------------------------------------------------------------------------------------------
# checkpoints


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _fingerprint(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tensor_digest(tensor: Tensor) -> str:
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    batches: _Batches, step: int, losses: list[float], meta: dict) -> None:
    """Write the whole training state to ``path`` atomically (temporary file, then rename)."""
    tensors, state_meta = state_tensors(model, optimizer)
    tensors["rng/data"] = batches.generator.get_state().detach().cpu().clone()
    tensors["data/order"] = batches.order.clone()
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "step": str(step),
        "cursor": str(batches.cursor),
        "epoch": str(batches.epoch),
        "losses": json.dumps(losses),
        **state_meta,
        "meta": json.dumps(meta),
    }
    write_checkpoint(path, tensors, metadata)


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    batches: _Batches) -> tuple[int, list[float], dict]:
    """Restore what :func:`save_checkpoint` wrote; returns ``(step, losses, meta)``."""
    tensors, metadata = read_checkpoint(path, CHECKPOINT_FORMAT)
    restore_state(tensors, metadata, model, optimizer)
    batches.generator.set_state(tensors["rng/data"])
    batches.order = tensors["data/order"].clone()
    batches.cursor = int(metadata["cursor"])
    batches.epoch = int(metadata["epoch"])
    return int(metadata["step"]), json.loads(metadata["losses"]), json.loads(metadata["meta"])


# ---------------------------------------------------------------------------------------------
# the run


def _make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95),
    )


def _check_same_tokenizer(lm: Any, history: Any) -> None:
    if history.vocab_size != lm.vocab_size or history.tokenizer.get_vocab() != \
            lm.tokenizer.get_vocab():
        raise TokenwiseError(
            f"history model {history.name!r} does not share the tokenizer of {lm.name!r} "
            f"(vocabularies of {history.vocab_size} and {lm.vocab_size} logits, or different "
            "token maps); ssToken compares per-token losses, which needs the same tokens"
        )


def train(cfg: TrainConfig, *, progress: bool = True, log: Callable[[str], None] = print,
          on_step: Callable[[int, float], None] | None = None) -> TrainResult:
    """Run (or resume) a fine-tuning run; writes the model and checkpoints under ``cfg.out``.

    Args:
        cfg: the run's settings.
        progress: show a progress bar.
        log: where one-line messages go.
        on_step: called after every optimizer step with ``(step, loss)`` (1-based step),
            after any checkpoint of that step is written.

    Returns:
        A :class:`TrainResult`.

    Example:
        >>> import json
        >>> _ = Path("d.jsonl").write_text(json.dumps({"prompt": "2+2=", "response": "4"}))
        >>> res = train(TrainConfig("tw-small", "d.jsonl", "run", steps=2, batch_size=1),
        ...             progress=False, log=lambda s: None)
        >>> res.step, len(res.losses), (res.model_dir / "config.json").is_file()
        (2, 2, True)
    """
    from tokenwise.context import extend
    from tokenwise.models import load

    cfg.check()
    out = Path(cfg.out)
    ckpt_path = out / CHECKPOINT_DIR / CHECKPOINT_FILE
    plan = check_output_dir(out, checkpoint=f"{CHECKPOINT_DIR}/{CHECKPOINT_FILE}",
                            fmt=CHECKPOINT_FORMAT, command="tokenwise train",
                            resume=cfg.resume, overwrite=cfg.overwrite)
    device = pick_device(cfg.device)
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    lm = load(cfg.model, device=device, dtype="float32")
    if cfg.extend_context is not None:
        extend(lm, cfg.extend_context, method=cfg.extend_method or "entropy_abf")
    seq_len = cfg.seq_len or lm.context_length
    if seq_len > lm.context_length:
        raise TokenwiseError(
            f"seq_len={seq_len} exceeds the context length {lm.context_length} of {lm.name!r}"
        )
    history = None
    if cfg.select == "sstoken":
        history = load(cfg.history_model, device=device, dtype="float32")  # type: ignore[arg-type]
        _check_same_tokenizer(lm, history)
        history.hf_model.requires_grad_(False)
    model = lm.hf_model
    # The EMO cost embedding is taken here, from the weights on disk, before any checkpoint
    # is loaded, so a resumed run measures distances in the same space as the first.
    _install_loss(model, cfg.loss, cfg.fused)
    head = model.get_output_embeddings()
    embedding_digest = _tensor_digest(head.weight) if cfg.loss == "emo" else None

    examples = load_examples(cfg.data)
    if cfg.samples is not None:
        examples = examples[: cfg.samples]
    rows, truncated = _tokenize(examples, lm, seq_len, progress)
    if truncated:
        log(f"{truncated} of {len(examples)} examples were longer than seq_len={seq_len}: "
            "their prompts were cut from the left (and responses at the right if needed)")
    pad = lm.tokenizer.pad_token_id
    pad = pad if pad is not None else (lm.eos_token_id if lm.eos_token_id is not None else 0)
    batches = _Batches(len(rows), cfg.batch_size, cfg.seed)
    optimizer = _make_optimizer(model, cfg)
    settings = {k: v for k, v in asdict(cfg).items() if k in _RESUME_KEYS}
    settings["seq_len"] = seq_len
    if cfg.extend_context is not None and cfg.extend_method is None:
        settings["extend_method"] = "entropy_abf"  # the default, named: resumes compare it
    meta = {"settings": settings, "data_sha256": _fingerprint(cfg.data),
            "emo_embedding_sha256": embedding_digest, "total_steps": cfg.steps}

    step, losses = 0, []
    if cfg.resume:
        step, losses, saved = load_checkpoint(ckpt_path, model, optimizer, batches)
        _check_resumable(saved, meta, cfg, step)
        log(f"resumed from step {step} of {ckpt_path}")
    plan.prepare()  # from here on the run writes into out
    model.train()

    # A signal stops the run after the step in progress, with a checkpoint of that step. The
    # handlers are in place before the bar shows, so a signal sent on seeing it is caught.
    with StopSignals() as stop:
        bar = progress_bar(total=cfg.steps, initial=step, desc=f"train {cfg.loss}",
                           unit="step", enabled=progress)
        while step < cfg.steps:
            batch = _collate([rows[i] for i in batches.next()], pad, device)
            if history is not None:
                batch["labels"] = _select(model, history.hf_model, batch, cfg)
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, cfg)
            loss = _step_loss(model, batch)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            due = (cfg.save_every and step % cfg.save_every == 0) or step == cfg.steps
            if due:
                save_checkpoint(ckpt_path, model, optimizer, batches, step, losses, meta)
            if on_step is not None:
                on_step(step, losses[-1])
            if stop.signum is not None and step < cfg.steps:
                if not due:
                    save_checkpoint(ckpt_path, model, optimizer, batches, step, losses, meta)
                break
    bar.close()
    if stop.signum is not None and step < cfg.steps:
        message = (f"stopped by {stop.name} at step {step} of {cfg.steps}; checkpoint saved "
                   f"in {str(ckpt_path)!r}. To continue, run the same command again with "
                   "--resume (in Python: TrainConfig(..., resume=True))")
        log(message)
        raise TrainingInterrupted(message, stop.signum, step)

    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    lm.tokenizer.save_pretrained(out)
    seconds = time.perf_counter() - start
    record = {"settings": settings, "steps": step, "data": str(cfg.data),
              "data_sha256": meta["data_sha256"], "examples": len(examples),
              "sequences": len(rows), "truncated": truncated, "losses": losses,
              "seconds_this_run": round(seconds, 1), "torch": torch.__version__}
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    log(f"{step} steps, final loss {losses[-1]:.4f} -> {out}")
    return TrainResult(step, losses, out, seconds, truncated, len(examples))


def _select(model: torch.nn.Module, history: torch.nn.Module, batch: dict[str, Tensor],
            cfg: TrainConfig) -> Tensor:
    from tokenwise.training.sstoken import select_tokens

    return select_tokens(model, history, batch["input_ids"], batch["labels"],
                         batch["attention_mask"], rho=cfg.rho, gamma=cfg.gamma)


def _check_resumable(saved: dict, now: dict, cfg: TrainConfig, step: int) -> None:
    old, new = dict(saved["settings"]), now["settings"]
    if old.get("extend_context") is not None and old.get("extend_method") is None:
        old["extend_method"] = "entropy_abf"  # written before the default was named
    changed = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in _RESUME_KEYS
               if old.get(k) != new.get(k)]
    if changed:
        raise TokenwiseError("cannot resume with changed settings (" + "; ".join(changed) + ")")
    if saved["data_sha256"] != now["data_sha256"]:
        raise TokenwiseError(f"cannot resume: the data file {cfg.data!r} changed since the "
                             "checkpoint was written")
    if saved["emo_embedding_sha256"] != now["emo_embedding_sha256"]:
        raise TokenwiseError(f"cannot resume: the weights of {cfg.model!r} changed since the "
                             "run started (EMO's frozen embedding would differ)")
    if step > cfg.steps:
        raise TokenwiseError(f"the checkpoint is at step {step}, past steps={cfg.steps}")
    if cfg.schedule == "cosine" and saved.get("total_steps", cfg.steps) != cfg.steps:
        raise TokenwiseError("cannot change steps when resuming a cosine schedule")

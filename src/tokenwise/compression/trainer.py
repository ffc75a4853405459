"""Train an LLMLingua-2-style token classifier (keep/drop per word) from labelled texts.

An example is a text and which of its words to keep (:func:`label_words` turns a list of
kept words into that mask). Labels can be given, or distilled from a causal LM's surprisal
(:func:`surprisal_labels`: the most surprising ``rate`` of the tokens' words are "keep").
Every token of a word carries the word's label; the model sees ``[BOS] chunk [EOS]`` windows
of at most ``max_length`` tokens, exactly as :class:`TokenClassifierCompressor` feeds it at
inference, and is saved as a ``BertForTokenClassification`` (safetensors), its tokenizer and
``training.json``, a directory that compressor loads as it is.

The default tokenizer is the built-in byte-level BPE of ``tw-small``; a model from a config
(:class:`ClassifierConfig`), trained with AdamW and a cosine schedule, seeded: the same
examples, config and seed give the same weights.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokenwise.compression import words
from tokenwise.errors import TokenwiseError

IGNORE = -100
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILE = "state.safetensors"
CHECKPOINT_FORMAT = "tokenwise-classifier-train-1"


@dataclass
class ClassifierConfig:
    """Size and training of the classifier.

    Attributes:
        hidden_size, layers, heads, intermediate_size: the BERT encoder's shape.
        max_length: tokens per window, special tokens included (the model's positions).
        steps, batch_size, lr, warmup, weight_decay: AdamW with linear warm-up and cosine decay.
        keep_weight: loss weight of "keep" tokens (keeps are usually rarer than drops).
        seed: seeds the weights and the batch order.
    """

    hidden_size: int = 64
    layers: int = 2
    heads: int = 4
    intermediate_size: int = 128
    max_length: int = 256
    steps: int = 600
    batch_size: int = 16
    lr: float = 3e-3
    warmup: int = 30
    weight_decay: float = 0.01
    keep_weight: float = 1.0
    seed: int = 0

    def check(self) -> None:
        """Raise a TokenwiseError naming the first bad field."""
        ints = {"hidden_size": 8, "layers": 1, "heads": 1, "intermediate_size": 8,
                "max_length": 8, "steps": 1, "batch_size": 1, "warmup": 0, "seed": 0}
        for name, least in ints.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise TokenwiseError(f"{name}={value!r}: must be an integer >= {least}")
        if self.hidden_size % self.heads:
            raise TokenwiseError(f"hidden_size={self.hidden_size} is not a multiple of "
                                 f"heads={self.heads}")
        for name in ("lr", "keep_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise TokenwiseError(f"{name}={value!r}: must be a number > 0")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise TokenwiseError(f"weight_decay={self.weight_decay!r}: must be >= 0")


def label_words(text: str, kept_words: Sequence[str]) -> np.ndarray:
    """The keep mask over ``text``'s words for a list of kept words, matched in order.

    Each kept word is matched to the next word of the text equal to it (the kept words must
    be a subsequence of the text's words, as an extractive compression is).

    Args:
        text: the original text.
        kept_words: the words kept, in text order (as :func:`words.split_words` splits them).

    Example:
        >>> label_words("The code of Tavoun is 917.", ["Tavoun", "917"]).astype(int).tolist()
        [0, 0, 0, 1, 0, 1, 0]
    """
    starts, ends = words.split_words(text)
    tokens = [text[a:b] for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]
    keep = np.zeros(len(tokens), dtype=bool)
    pos = 0
    for w in kept_words:
        if not isinstance(w, str):
            raise TokenwiseError(f"kept word {w!r} is not a string")
        try:
            pos = tokens.index(w, pos)
        except ValueError:
            raise TokenwiseError(
                f"kept word {w!r} does not occur (in order) among the text's words after "
                f"position {pos}; kept words must be a subsequence of the text's words "
                f"(text starts {text[:60]!r})") from None
        keep[pos] = True
        pos += 1
    return keep


def surprisal_labels(lm: Any, text: str, rate: float) -> np.ndarray:
    """Keep mask: the words whose mean token surprisal under ``lm`` is highest, ``rate`` of tokens.

    Args:
        lm: a causal :class:`~tokenwise.models.LanguageModel` (or built-in name).
        text: the text.
        rate: fraction of the text's tokens (on ``lm``'s tokenizer) to label "keep", (0, 1].

    Example:
        >>> m = surprisal_labels("tw-small", "The code of Tavoun is 917.", 0.5)
        >>> m.dtype, len(m)
        (dtype('bool'), 7)
    """
    from tokenwise.compression.perplexity import (
        load_causal_lm,
        pool_words,
        token_surprisal,
        tokenize_spans,
        word_token_ranges,
    )

    if not (isinstance(rate, (int, float)) and 0 < rate <= 1):
        raise TokenwiseError(f"rate={rate!r} is outside (0, 1]")
    lm = load_causal_lm(lm)
    starts, ends = words.split_words(text)
    ids, ts, te = tokenize_spans(lm, text)
    if len(starts) == 0:
        return np.zeros(0, dtype=bool)
    lo, hi = word_token_ranges(ts, te, starts, ends)
    scores = pool_words(token_surprisal(lm, ids.tolist()), lo, hi, "mean")
    sizes = hi - lo
    keep = np.zeros(len(starts), dtype=bool)
    goal, used = rate * len(ids), 0
    for i in np.argsort(-scores, kind="stable").tolist():
        if used >= goal:
            break
        keep[i] = True
        used += int(sizes[i])
    return keep


def load_tokenizer(tokenizer: Any = None) -> Any:
    """A fast tokenizer: given, from a directory / built-in name, or the built-in BPE.

    Example:
        >>> len(load_tokenizer()) > 100
        True
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerBase

    if isinstance(tokenizer, PreTrainedTokenizerBase):
        tok = tokenizer
    else:
        from tokenwise.models import resolve

        _, path = resolve("tw-small" if tokenizer is None else tokenizer)
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if not getattr(tok, "is_fast", False):
        raise TokenwiseError("the classifier's tokenizer must be a fast (tokenizer.json) one: "
                             "character offsets map its tokens to words")
    return tok


def _specials(tok: Any) -> tuple[int | None, int | None, int]:
    cls = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
    sep = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
    pad = tok.pad_token_id
    pad = pad if pad is not None else (sep if sep is not None else 0)
    return cls, sep, pad


def encode_example(tok: Any, text: str, keep: np.ndarray,
                   max_length: int) -> list[tuple[list[int], list[int]]]:
    """``(input_ids, labels)`` windows of one example; special tokens and spaces are ignored.

    A token takes the label of the word it overlaps; a piece of whitespace alone takes the
    label of the word after it (trailing whitespace: ignored).

    Example:
        >>> tok = load_tokenizer()
        >>> rows = encode_example(tok, "a b", np.array([True, False]), 16)
        >>> rows[0][1]
        [-100, 1, 0, -100]
        >>> encode_example(tok, "a \\n b", np.array([True, False]), 16)[0][1]
        [-100, 1, 0, 0, 0, -100]
    """
    starts, ends = words.split_words(text)
    if len(keep) != len(starts):
        raise TokenwiseError(f"{len(keep)} labels for {len(starts)} words in {text[:60]!r}")
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True,
              split_special_tokens=True, verbose=False)
    ids = list(enc["input_ids"])
    off = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)  # (N, 2)
    labels = np.full(len(ids), IGNORE, dtype=np.int64)
    if len(starts) and len(ids):
        # The word whose span holds the token's last character.
        w = np.searchsorted(starts, off[:, 1] - 1, side="right") - 1  # (N,)
        safe = np.clip(w, 0, len(starts) - 1)
        inside = (w >= 0) & (off[:, 1] > starts[safe]) & (off[:, 0] < ends[safe])
        labels[inside] = keep[safe[inside]].astype(np.int64)
        # A bare space or line-break piece opens the next word at inference (it carries the
        # word-start marker), so it learns that word's label.
        nxt = np.searchsorted(starts, off[:, 1], side="left")  # (N,)
        lone = ~inside & (nxt < len(starts))
        labels[lone] = keep[nxt[lone]].astype(np.int64)
    cls, sep, _ = _specials(tok)
    room = max_length - (cls is not None) - (sep is not None)
    rows = []
    for a in range(0, len(ids), room):
        piece, lab = ids[a:a + room], labels[a:a + room].tolist()
        if cls is not None:
            piece, lab = [cls, *piece], [IGNORE, *lab]
        if sep is not None:
            piece, lab = [*piece, sep], [*lab, IGNORE]
        rows.append((piece, lab))
    return rows


def train_token_classifier(examples: Sequence[tuple[str, np.ndarray]], out: str | os.PathLike,
                           *, tokenizer: Any = None, config: ClassifierConfig | None = None,
                           command: str | None = None, extra: dict | None = None,
                           progress: bool = True, save_every: int = 100, resume: bool = False,
                           overwrite: bool = False,
                           on_step: Callable[[int, float], None] | None = None) -> dict:
    """Fit a ``BertForTokenClassification`` on ``(text, keep mask)`` examples; save it in ``out``.

    ``out`` is checked before any work (:func:`tokenwise.training.runs.check_output_dir`): it
    must be new or empty, or hold this trainer's checkpoint (continued with ``resume``), or
    ``overwrite`` must be set (its contents are deleted before the first step). A checkpoint
    goes to ``out/checkpoint/`` every ``save_every`` steps and when SIGTERM or SIGINT stops
    the run (:class:`~tokenwise.training.runs.TrainingInterrupted` is raised then); a resumed
    run ends with the same weights as one never stopped. The checkpoint is removed once the
    model is saved, so ``out`` is a plain classifier directory.

    Args:
        examples: texts with one bool per word of :func:`words.split_words`.
        out: the output directory (config.json, model.safetensors, tokenizer, training.json).
        tokenizer: a fast tokenizer, a directory or built-in name (default: the built-in BPE).
        config: model size and training settings.
        command: the command line that produced it (recorded in training.json).
        extra: more facts for training.json (label source, data, ...).
        progress: show a progress bar.
        save_every: write a checkpoint every this many steps (0: only when stopped).
        resume: continue from ``out/checkpoint`` (same examples, tokenizer and config).
        overwrite: use a non-empty ``out`` that is not a run of this trainer.
        on_step: called after every step with ``(step, loss)``, after its checkpoint if any.

    Returns:
        what training.json holds (config, loss curve, token accuracy on the examples, seconds).

    Example:
        >>> ex = [("keep 7 drop", np.array([1, 1, 0], bool))] * 4
        >>> info = train_token_classifier(ex, "tw-doc-clf", progress=False,
        ...                               config=ClassifierConfig(steps=2, hidden_size=16))
        >>> sorted(p.name for p in Path("tw-doc-clf").iterdir())[:2]
        ['config.json', 'model.safetensors']
    """
    from transformers import BertConfig, BertForTokenClassification

    from tokenwise.training.runs import StopSignals, TrainingInterrupted, check_output_dir

    cfg = config or ClassifierConfig()
    cfg.check()
    if isinstance(save_every, bool) or not isinstance(save_every, int) or save_every < 0:
        raise TokenwiseError(f"save_every={save_every!r}: must be an integer >= 0")
    out_path = Path(os.fspath(out))
    plan = check_output_dir(out_path, checkpoint=f"{CHECKPOINT_DIR}/{CHECKPOINT_FILE}",
                            fmt=CHECKPOINT_FORMAT, command="tokenwise compress train",
                            resume=resume, overwrite=overwrite)
    ckpt_path = out_path / CHECKPOINT_DIR / CHECKPOINT_FILE
    if not examples:
        raise TokenwiseError("no training examples")
    tok = load_tokenizer(tokenizer)
    rows: list[tuple[list[int], list[int]]] = []
    for text, keep in examples:
        rows.extend(encode_example(tok, text, np.asarray(keep, dtype=bool), cfg.max_length))
    n_labelled = sum(sum(x != IGNORE for x in lab) for _, lab in rows)
    n_keep = sum(sum(x == 1 for x in lab) for _, lab in rows)
    if n_labelled == 0:
        raise TokenwiseError("the examples have no labelled tokens (all texts empty?)")
    _, _, pad = _specials(tok)
    torch.manual_seed(cfg.seed)
    model_cfg = BertConfig(
        vocab_size=len(tok), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads, intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_length, num_labels=2, pad_token_id=pad,
        type_vocab_size=1, id2label={0: "drop", 1: "keep"}, label2id={"drop": 0, "keep": 1},
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertForTokenClassification(model_cfg)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        frac = (step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    weight = torch.tensor([1.0, float(cfg.keep_weight)])
    run = _RunState(random.Random(cfg.seed))
    # What a checkpoint must match to be continued: the settings, the data and the tokenizer.
    meta = {"config": asdict(cfg), "examples_sha256": _examples_digest(examples),
            "tokenizer_sha256": _tokenizer_digest(tok)}
    if plan.resume:
        _load_run(ckpt_path, model, opt, sched, run, meta)
    plan.prepare()
    from tokenwise.progress import progress_bar

    model.train()
    t0 = time.perf_counter()
    # A signal stops the run after the step in progress, with a checkpoint of that step. The
    # handlers are in place before the bar shows, so a signal sent on seeing it is caught.
    with StopSignals() as stop:
        bar = progress_bar(total=cfg.steps, initial=run.step, desc="train classifier",
                           unit="step", enabled=progress)
        while run.step < cfg.steps:
            step = run.step
            batch = []
            for _ in range(cfg.batch_size):
                if not run.order:
                    run.order = list(range(len(rows)))
                    run.rng.shuffle(run.order)
                batch.append(rows[run.order.pop()])
            ids, labels, mask = _collate(batch, pad)
            logits = model(input_ids=ids, attention_mask=mask).logits  # (B, T, 2)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 2), labels.reshape(-1),
                                                     weight=weight, ignore_index=IGNORE)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            value = float(loss.detach())
            run.running = value if run.running is None else 0.95 * run.running + 0.05 * value
            if step % 10 == 0 or step == cfg.steps - 1:
                run.curve.append(round(run.running, 4))
                bar.set_postfix(loss=f"{run.running:.3f}")
            bar.update(1)
            run.step += 1
            stopping = stop.signum is not None and run.step < cfg.steps
            if stopping or (save_every and run.step % save_every == 0
                            and run.step < cfg.steps):
                run.seconds += time.perf_counter() - t0
                t0 = time.perf_counter()
                _save_run(ckpt_path, model, opt, sched, run, meta)
            if on_step is not None:
                on_step(run.step, value)
            if stop.signum is not None and run.step < cfg.steps:
                if not stopping:  # the signal came during on_step
                    _save_run(ckpt_path, model, opt, sched, run, meta)
                break
    bar.close()
    run.seconds += time.perf_counter() - t0
    if stop.signum is not None and run.step < cfg.steps:
        message = (f"stopped by {stop.name} at step {run.step} of {cfg.steps}; checkpoint "
                   f"saved in {str(ckpt_path)!r}. To continue, run the same command again "
                   "with --resume (in Python: resume=True)")
        raise TrainingInterrupted(message, stop.signum, run.step)
    model.eval()
    accuracy = _accuracy(model, rows, pad)
    model.save_pretrained(out_path, safe_serialization=True)
    tok.save_pretrained(out_path)
    info = {
        "command": command,
        "config": asdict(cfg),
        "examples": len(examples),
        "windows": len(rows),
        "labelled_tokens": int(n_labelled),
        "keep_share": round(n_keep / n_labelled, 4),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(run.seconds, 1),
        "final_loss": run.curve[-1] if run.curve else None,
        "token_accuracy": round(accuracy, 4),
        "loss_curve": run.curve,
        "torch": torch.__version__,
        **(extra or {}),
    }
    (out_path / "training.json").write_text(json.dumps(info, indent=1) + "\n")
    # The directory is now a finished classifier; its checkpoint would only mislead a rerun.
    shutil.rmtree(out_path / CHECKPOINT_DIR, ignore_errors=True)
    return info


@dataclass
class _RunState:
    """The trainer's own state between steps (besides the model, optimizer and schedule)."""

    rng: random.Random
    order: list[int] = field(default_factory=list)
    step: int = 0
    running: float | None = None
    curve: list[float] = field(default_factory=list)
    seconds: float = 0.0


def _examples_digest(examples: Sequence[tuple[str, np.ndarray]]) -> str:
    digest = hashlib.sha256()
    for text, keep in examples:
        digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
        digest.update(np.packbits(np.asarray(keep, dtype=bool)).tobytes() + b"\0")
    return digest.hexdigest()


def _tokenizer_digest(tok: Any) -> str:
    vocab = sorted(tok.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode("utf-8")).hexdigest()


def _save_run(path: Path, model: Any, opt: Any, sched: Any, run: _RunState, meta: dict) -> None:
    from tokenwise.training.runs import state_tensors, write_checkpoint

    tensors, state_meta = state_tensors(model, opt)
    version, internal, gauss = run.rng.getstate()
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "step": str(run.step),
        **state_meta,
        "scheduler": json.dumps(sched.state_dict()),
        "run": json.dumps({"order": run.order, "running": run.running, "curve": run.curve,
                           "seconds": run.seconds,
                           "rng": [version, list(internal), gauss]}),
        "meta": json.dumps(meta),
    }
    write_checkpoint(path, tensors, metadata)


def _load_run(path: Path, model: Any, opt: Any, sched: Any, run: _RunState, meta: dict) -> None:
    from tokenwise.training.runs import read_checkpoint, restore_state

    tensors, metadata = read_checkpoint(path, CHECKPOINT_FORMAT)
    saved = json.loads(metadata["meta"])
    changed = [f"{k}: {saved['config'].get(k)!r} -> {v!r}"
               for k, v in meta["config"].items() if saved["config"].get(k) != v]
    if changed:
        raise TokenwiseError("cannot resume with changed settings (" + "; ".join(changed) + ")")
    if saved["examples_sha256"] != meta["examples_sha256"]:
        raise TokenwiseError("cannot resume: the training examples differ from the checkpoint's "
                             "(another --data file, --labels, --examples or seed?)")
    if saved["tokenizer_sha256"] != meta["tokenizer_sha256"]:
        raise TokenwiseError("cannot resume: the tokenizer differs from the checkpoint's")
    restore_state(tensors, metadata, model, opt)
    sched.load_state_dict(json.loads(metadata["scheduler"]))
    state = json.loads(metadata["run"])
    version, internal, gauss = state["rng"]
    run.rng.setstate((version, tuple(internal), gauss))
    run.order = state["order"]
    run.running = state["running"]
    run.curve = state["curve"]
    run.seconds = state["seconds"]
    run.step = int(metadata["step"])


def _collate(batch: list[tuple[list[int], list[int]]],
             pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(r) for r, _ in batch)
    ids = torch.full((len(batch), width), pad, dtype=torch.long)  # (B, T)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(batch), width), dtype=torch.long)  # (B, T)
    for i, (r, lab) in enumerate(batch):
        ids[i, :len(r)] = torch.tensor(r)
        labels[i, :len(r)] = torch.tensor(lab)
        mask[i, :len(r)] = 1
    return ids, labels, mask


@torch.inference_mode()
def _accuracy(model: Any, rows: list[tuple[list[int], list[int]]], pad: int) -> float:
    right = total = 0
    for b in range(0, min(len(rows), 512), 32):
        ids, labels, mask = _collate(rows[b:b + 32], pad)
        pred = model(input_ids=ids, attention_mask=mask).logits.argmax(-1)  # (B, T)
        use = labels != IGNORE
        right += int((pred[use] == labels[use]).sum())
        total += int(use.sum())
    return right / max(total, 1)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Rows of a JSONL file (blank lines skipped), each checked to have a ``"text"``.

    Example:
        >>> _ = Path("/tmp/tw-doc.jsonl").write_text('{"text": "a b", "keep": ["a"]}\\n')
        >>> read_jsonl("/tmp/tw-doc.jsonl")[0]["keep"]
        ['a']
    """
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TokenwiseError(f"{path}:{n}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise TokenwiseError(f"{path}:{n}: each line must be an object with a "
                                     "\"text\" string (and \"keep\": [words] or \"labels\")")
            rows.append(row)
    if not rows:
        raise TokenwiseError(f"{path}: no examples")
    return rows


def given_labels(row: dict) -> np.ndarray:
    """The keep mask of a JSONL row: ``"keep"`` (kept words) or ``"labels"`` (0/1 per word).

    Example:
        >>> given_labels({"text": "a b c", "labels": [1, 0, 1]}).tolist()
        [True, False, True]
    """
    text = row["text"]
    if "keep" in row:
        if not isinstance(row["keep"], list):
            raise TokenwiseError(f"\"keep\" must be a list of words; got {row['keep']!r:.60}")
        return label_words(text, row["keep"])
    if "labels" in row:
        n = len(words.split_words(text)[0])
        labels = row["labels"]
        if not isinstance(labels, list) or len(labels) != n or any(x not in (0, 1, True, False)
                                                                   for x in labels):
            raise TokenwiseError(f"\"labels\" must be {n} zeros and ones (one per word of "
                                 f"the text); got {labels!r:.80}")
        return np.asarray(labels, dtype=bool)
    raise TokenwiseError("a row with given labels needs \"keep\": [words] or \"labels\": "
                         "[0/1 per word]")

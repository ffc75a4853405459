"""Train tw-reader: a small Llama that answers needle questions from a memo, whole or cut.

The general built-in models (tw-small, tw-large) never learned to answer from context: their
corpus asks about needle memos, but with the loss spread over every token (most of them random
codes) no key-matching circuit formed in their training budget. A prompt compressor is judged
by how well a reader answers from what it kept, so this module trains one, on purpose:

- every document is a needle memo followed by as many questions as it has lines, drawn with
  replacement (drawn without, the last ones could be answered by elimination, a shortcut a
  fresh model takes instead of matching keys);
- the loss is on the answers (``" 917\n"``), plus a lighter next-token loss on the memo and
  question words (not the memo's random codes), which teaches the key names as units;
- a curriculum over distractors: memos of one line (copy the only code) until whole codes
  of documents' first questions are right ``advance`` of the time (teacher-forced, a moving
  mean over training batches), then up to 1, 3, 7 and 15 distractors (the needle world's
  counts);
- once at the last level, half of the memos are cut as compressors cut them (the header and
  a random share of words dropped, blank lines left), and only lines whose code survived are
  asked about: the reader must read compressed text, not only whole memos.

The result answers in the needle world's own format (``"...Q: What is the code of K?\nA:"``
-> ``" 917"``), so ``testbed eval`` and ``benchmarks/compression_qa.py`` measure it as they
measure any model. It shares the testbed tokenizer with the other built-in models.
"""

from __future__ import annotations

import math
import platform
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from tokenwise.models.language_model import count_parameters
from tokenwise.testbed.needle import DISTRACTOR_COUNTS, NeedleWorld, question_prompt
from tokenwise.testbed.spec import ModelSpec


@dataclass(frozen=True)
class ReaderSpec(ModelSpec):
    """Architecture and schedule of the reader: a :class:`ModelSpec` with the reader's
    defaults, and its curriculum.

    The learning rate warms up linearly, stays constant until the last level, then follows
    a cosine toward 10% over the remaining steps (the last step is at 10% + a little).
    The 2 layers of 8 narrow heads are the shape that learned to copy memo codes in the
    earlier experiments (see BENCHMARKS.md).

    Args:
        levels: the distractor curriculum (most distractors per memo at each level).
        advance: moving share of whole codes right on documents' first questions
            (teacher-forced, over the last 50 batches) that moves the curriculum on.
        deadlines: share of ``steps`` by which each level starts at the latest, whatever
            the accuracy: level ``i`` starts at the first step ``>= deadlines[i] * steps``
            (a float product: 0.55 x 12,000 starts at step 6,601); the first entry is the
            first level's, 0. The last level, with cut memos and the decaying learning
            rate, must get its share of training.
        corrupt: share of memos cut as a compressor would, once at the last level.
        context_weight: weight of the next-token loss on the other tokens (memo and
            questions, but not the memo's random codes) beside the answers' loss: it makes
            the model learn the key names as units, which key matching builds on.

    Example:
        >>> ReaderSpec().layers, ReaderSpec(steps=10).levels
        (2, (0, 1, 3, 7, 15))
    """

    name: str = "tw-reader"
    hidden_size: int = 128
    layers: int = 2
    heads: int = 8
    intermediate_size: int = 352
    steps: int = 12000
    batch_size: int = 16
    lr: float = 2e-3
    levels: tuple[int, ...] = (0, *DISTRACTOR_COUNTS)
    advance: float = 0.8
    deadlines: tuple[float, ...] = (0.0, 0.1, 0.25, 0.4, 0.55)
    corrupt: float = 0.5
    context_weight: float = 0.3

    def __post_init__(self) -> None:
        for field_ in ("hidden_size", "layers", "heads", "intermediate_size", "steps",
                       "batch_size", "context"):
            if getattr(self, field_) < 1:
                raise ValueError(f"{field_}={getattr(self, field_)}: must be >= 1")
        for field_ in ("advance", "corrupt", "context_weight"):
            value = getattr(self, field_)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{field_}={value}: allowed 0..1")
        if not self.levels or self.levels[0] < 0 or list(self.levels) != sorted(self.levels):
            raise ValueError(f"levels={self.levels}: non-empty, >= 0, never decreasing")
        if len(self.deadlines) != len(self.levels) or any(
                not 0.0 <= d <= 1.0 for d in self.deadlines) or list(
                self.deadlines) != sorted(self.deadlines):
            raise ValueError(f"deadlines={self.deadlines}: one per level "
                             f"({len(self.levels)}), each in 0..1, never decreasing")


READER_SPEC = ReaderSpec()


def cut_memo(lines: list[tuple[str, str]], rng: random.Random) -> tuple[str, list[int]]:
    """A memo cut as a compressor cuts one, and which of its lines still hold their code.

    The header goes with probability 1/2; each line loses every word independently with one
    probability drawn per memo (0.1 to 0.8); a line left empty stays as a blank line half the
    time. A line that kept its code but lost its key counts as answerable on purpose:
    compressors do cut keys (tw-keep keeps "The code of is 156" of a 2-line memo), and
    the reader should then answer with a code that survived rather than invent one.

    Args:
        lines: ``(key, code)`` of each memo line, in order.
        rng: the random source.

    Returns:
        The cut memo text and the indices of lines whose code survived.

    Example:
        >>> text, kept = cut_memo([("Brelix", "382"), ("Tavoun", "917")], random.Random(0))
        >>> all(("382", "917")[i] in text for i in kept)
        True
    """
    drop = rng.uniform(0.1, 0.8)
    out = [] if rng.random() < 0.5 else ["Memo:"]
    answerable = []
    for i, (key, code) in enumerate(lines):
        words = ["The", "code", "of", key, "is", code, "."]
        kept = [w for w in words if rng.random() >= drop]
        if code in kept:
            answerable.append(i)
        text = " ".join(kept).replace(" .", ".")
        if text or rng.random() < 0.5:
            out.append(text)
    return "\n".join(out) + "\n", answerable


def reader_document(world: NeedleWorld, tokenizer, rng: random.Random, max_distractors: int,
                    corrupt: float, room: int = 254) -> tuple[list[int], list[int], list[int]]:
    """One training document: a memo, then questions on its lines with their answers.

    Args:
        world: the needle world (key pool).
        tokenizer: the testbed tokenizer.
        rng: the random source.
        max_distractors: distractors are drawn from ``0..max_distractors`` (mostly ``>= 1``).
        corrupt: probability that the memo is cut (see :func:`cut_memo`).
        room: most tokens in the document (questions stop before it; the first one is
            always asked).

    Returns:
        ``(ids, labels, digits)``: token ids, labels (-100 except on answers) and, per
        answer, the positions of its three digits. (``reader_batch`` adds the EOS.)

    Example:
        >>> from tokenwise.models import load
        >>> tok = load("tw-small").tokenizer
        >>> ids, labels, digits = reader_document(NeedleWorld(0), tok, random.Random(0), 3, 0.0)
        >>> len(ids) == len(labels) and all(labels[i] == ids[i] for d in digits for i in d)
        True
    """
    low = 1 if rng.random() < 0.85 else 0
    item = world.item(rng, rng.randint(min(low, max_distractors), max_distractors))
    pairs = item.pairs()
    memo, answerable = item.context, list(range(len(pairs)))
    if rng.random() < corrupt:
        cut, left = cut_memo(pairs, rng)
        if left:  # a memo cut down to no code asks nothing: keep it whole instead
            memo, answerable = cut, left
    ids = tokenizer(memo, add_special_tokens=False)["input_ids"]
    labels = [-100] * len(ids)
    digits: list[list[int]] = []
    # Questions drawn with replacement: asked without, the last questions could be answered
    # by elimination (the code not yet given), a shortcut a fresh model takes instead of
    # matching keys; a repeated question is answered by the same key matching, over the
    # earlier answers.
    for i in (rng.choice(answerable) for _ in range(len(answerable))):
        key, code = pairs[i]
        question = tokenizer(question_prompt(key), add_special_tokens=False)["input_ids"]
        answer = tokenizer(f" {code}\n", add_special_tokens=False)["input_ids"]
        if digits and len(ids) + len(question) + len(answer) > room:
            break  # long memos leave room for fewer questions: a document fits one row
        ids += question
        labels += [-100] * len(question)
        pieces = tokenizer.convert_ids_to_tokens(answer)
        digits.append([len(ids) + j for j, t in enumerate(pieces) if t.strip("Ġ").isdigit()])
        ids += answer
        labels += answer
    return ids, labels, digits


def reader_batch(world: NeedleWorld, tokenizer, rng: random.Random, spec: ReaderSpec,
                 max_distractors: int, corrupt: float
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``spec.batch_size`` rows of whole documents (BOS doc EOS doc EOS ...), padded.

    A row ends at the first document that does not fit; a first document longer than the
    row leaves the row empty (BOS only), which only memos near the context length can do.
    Each document's closing EOS is labelled too (the reader learns to stop).

    Args:
        world: the needle world (key pool).
        tokenizer: the testbed tokenizer.
        rng: the random source.
        spec: ``batch_size`` and ``context`` are read.
        max_distractors: the level (see :func:`reader_document`).
        corrupt: probability that a memo is cut.

    Returns:
        ``input_ids`` and ``labels`` ``(B, context)``, and ``(n, 5)``: for every answer its
        row, the positions of its three digits, and 1 if it answers its document's first
        question (the one no earlier answer can help with).

    Example:
        >>> from tokenwise.models import load
        >>> ids, labels, answers = reader_batch(NeedleWorld(0), load("tw-small").tokenizer,
        ...                                     random.Random(0), READER_SPEC, 1, 0.0)
        >>> ids.shape, answers.shape[1], bool(answers[:, 4].sum() >= 16)  # >= 1 document a row
        (torch.Size([16, 256]), 5, True)
    """
    pad, bos, eos = tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id
    ids = torch.full((spec.batch_size, spec.context), pad, dtype=torch.long)
    labels = torch.full((spec.batch_size, spec.context), -100, dtype=torch.long)
    answers = []
    for r in range(spec.batch_size):
        row, lab = [bos], [-100]
        while True:
            d, lb, f = reader_document(world, tokenizer, rng, max_distractors, corrupt,
                                       room=spec.context - 2)
            if len(row) + len(d) + 1 > spec.context:
                break
            answers += [(r, *(len(row) + x for x in digits), int(j == 0))
                        for j, digits in enumerate(f)]
            row += [*d, eos]
            lab += [*lb, eos]
        ids[r, : len(row)] = torch.tensor(row)
        labels[r, : len(lab)] = torch.tensor(lab)
    return ids, labels, torch.tensor(answers, dtype=torch.long).reshape(-1, 5)


def train_reader(tokenizer, world: NeedleWorld, seed: int = 0,
                 spec: ReaderSpec = READER_SPEC, progress: bool = True,
                 log: Callable[[str], None] = print) -> tuple[torch.nn.Module, dict]:
    """Train the reader from scratch (see the module docstring for the recipe).

    Args:
        tokenizer: the testbed tokenizer (shared with the other built-in models).
        world: the needle world whose keys the memos use.
        seed: seeds the weights and the documents.
        spec: architecture and schedule.
        progress: show a progress bar.
        log: where to print curriculum moves (and progress lines without a bar).

    Returns:
        The trained model (float32, eval mode) and a dict of training facts.

    Example:
        >>> from tokenwise.models import load
        >>> spec = ReaderSpec(steps=4, batch_size=2)  # too short to earn a level: deadlines
        >>> model, facts = train_reader(load("tw-small").tokenizer, NeedleWorld(0), spec=spec,
        ...                             progress=False, log=lambda s: None)
        >>> facts["levels_reached"], facts["level_steps"]["15"]
        ([0, 1, 3, 7, 15], 3)
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    from tokenwise.progress import progress_bar

    torch.manual_seed(seed)
    rng = random.Random(f"tw-reader/{seed}")
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size, num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads, num_key_value_heads=spec.heads,
        max_position_embeddings=spec.context, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": spec.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=spec.lr, betas=(0.9, 0.95))
    digit_ids = torch.tensor(tokenizer.convert_tokens_to_ids([str(d) for d in range(10)]))
    level, last_start = 0, None
    recent: list[float] = []
    losses: list[float] = []
    reached = [(spec.levels[0], 0)]
    start = time.perf_counter()
    model.train()
    bar = progress_bar(range(spec.steps), desc=f"train {spec.name}", unit="step",
                       enabled=progress)
    for step in bar:
        while level < len(spec.levels) - 1 and step >= spec.deadlines[level + 1] * spec.steps:
            level += 1
            recent = []
            reached.append((spec.levels[level], step))
            log(f"{spec.name}: step {step}, deadline -> up to {spec.levels[level]} "
                "distractors")
        final = level == len(spec.levels) - 1
        if step < spec.warmup:
            lr = spec.lr * (step + 1) / spec.warmup
        elif not final:
            lr = spec.lr
        else:
            last_start = step if last_start is None else last_start
            progress_ = (step - last_start) / max(1, spec.steps - last_start)
            lr = spec.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * progress_)))
        for group in opt.param_groups:
            group["lr"] = lr
        ids, labels, answers = reader_batch(world, tokenizer, rng, spec, spec.levels[level],
                                           spec.corrupt if final else 0.0)
        if not (answers[:, 4] == 1).any():
            raise ValueError(f"context={spec.context} holds no document of "
                             f"{spec.levels[level]} distractors: every row of a batch was "
                             "empty; use a longer context or fewer distractors")
        logits = model(input_ids=ids).logits  # (B, T, V)
        targets = ids[:, 1:]  # (B, T-1)
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1),
            reduction="none").view_as(targets)  # (B, T-1)
        on_answer = labels[:, 1:] != -100
        on_context = ~on_answer & (targets != tokenizer.pad_token_id) & ~torch.isin(targets,
                                                                                     digit_ids)
        loss = nll[on_answer].mean() + spec.context_weight * nll[on_context].mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        with torch.no_grad():  # whole codes of first questions right (teacher-forced)
            first = answers[answers[:, 4] == 1]
            rows, cols = first[:, :1], first[:, 1:4]  # (n, 1), (n, 3)
            right = logits[rows, cols - 1].argmax(-1) == ids[rows, cols]  # (n, 3)
            hit = right.all(-1).float().mean()
        recent = [*recent[-49:], float(hit)]
        if not final and len(recent) == 50 and sum(recent) / 50 >= spec.advance:
            level += 1
            recent = []
            reached.append((spec.levels[level], step + 1))
            log(f"{spec.name}: step {step + 1}, codes right "
                f"{spec.advance:.0%}+ -> up to {spec.levels[level]} distractors")
        if step % 10 == 0 or step == spec.steps - 1:
            bar.set_postfix(loss=f"{losses[-1]:.3f}", level=spec.levels[level])
        if not progress and (step % 200 == 0 or step == spec.steps - 1):
            log(f"{spec.name} step {step}/{spec.steps} loss {losses[-1]:.4f}")
    model.eval()
    facts = {
        "spec": asdict(spec),
        "seed": seed,
        "parameters": count_parameters(model),
        "train_seconds": round(time.perf_counter() - start, 1),
        "steps": spec.steps,
        "levels_reached": [lv for lv, _ in reached],
        "level_steps": {str(lv): s for lv, s in reached},
        "final_loss": round(sum(losses[-20:]) / min(20, len(losses)), 4),
        "loss_curve": [round(sum(losses[i : i + 50]) / len(losses[i : i + 50]), 4)
                       for i in range(0, len(losses), 50)],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    return model, facts

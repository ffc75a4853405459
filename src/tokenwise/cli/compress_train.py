"""`tokenwise compress train`: fit a keep/drop token classifier for `--method token_classifier`."""

from __future__ import annotations

import random
import shlex
import sys

import click
import numpy as np

from tokenwise.errors import TokenwiseError

LABEL_SOURCES = ("given", "surprisal", "needle")


def _command_line() -> str | None:
    """The options of this run as a `tokenwise compress train ...` line (for training.json)."""
    argv = sys.argv
    if argv[1:3] == ["compress", "train"]:
        args = argv[3:]
    elif argv and argv[0].endswith("compress_train.py"):  # python -m tokenwise.cli.compress_train
        args = argv[1:]
    else:
        return None
    # How the run was carried out (resumed, over an old directory) is not what it computes:
    # the line must reproduce the classifier in a fresh directory.
    args = [a for a in args if a not in ("--resume", "--overwrite")]
    return "tokenwise compress train " + " ".join(shlex.quote(a) for a in args)


def needle_examples(n: int, seed: int = 0, question_first: bool = False,
                    ) -> list[tuple[str, np.ndarray]]:
    """Needle contexts labelled by the testbed's oracle.

    The text is the memo followed by its question (``"Q: ..."``), or the question line
    first (``question_first``), so a classifier can tell which line is asked about. "Keep":
    every word of the needle line, and the question's key words (the key's name and
    ``code``); everything else (distractor lines, the memo header, the question's function
    words) is "drop".

    Example:
        >>> text, keep = needle_examples(1, seed=3)[0]
        >>> from tokenwise.compression import words
        >>> s, e = words.split_words(text)
        >>> [text[a:b] for a, b, k in zip(s, e, keep) if k]
        ['The', 'code', 'of', 'Stazol', 'is', '229', '.', 'code', 'Stazol']
    """
    from tokenwise.compression import words
    from tokenwise.testbed import NeedleWorld

    world = NeedleWorld(seed)
    rng = random.Random(f"compress-train/{seed}")
    counts = (0, 1, 3, 7, 15)
    out = []
    for _ in range(n):
        item = world.item(rng, rng.choice(counts))
        q_line = f"Q: {item.question}\n"
        text = q_line + item.context if question_first else item.context + q_line
        q0 = 0 if question_first else len(item.context)
        starts, ends = words.split_words(text)
        keep = np.zeros(len(starts), dtype=bool)
        a = text.index("\n" + item.needle + "\n") + 1
        b = a + len(item.needle)
        keep |= (starts >= a) & (ends <= b)
        key = item.question.removeprefix("What is the code of ").removesuffix("?")
        w_text = [text[s:e] for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]
        in_q = (starts >= q0) & (ends <= q0 + len(q_line))
        keep |= in_q & np.isin(w_text, ["code", *key.split()])
        out.append((text, keep))
    return out


@click.command("train")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output directory (config.json, model.safetensors, tokenizer, training.json).")
@click.option("--data", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSONL: {\"text\": ..., \"keep\": [kept words]} or {\"text\", \"labels\": "
                   "[0/1 per word]} (labels given), or just {\"text\"} (--labels surprisal).")
@click.option("--labels", "label_source", type=click.Choice(LABEL_SOURCES), default="given",
              show_default=True,
              help="given: from --data; surprisal: distilled from --lm on --data's texts; "
                   "needle: the testbed's oracle on generated needle contexts (no --data).")
@click.option("--lm", default="tw-small", show_default=True,
              help="Causal LM for --labels surprisal (built-in name or directory).")
@click.option("--rate", type=click.FloatRange(0, 1, min_open=True), default=0.33,
              show_default=True, help="--labels surprisal: share of tokens labelled keep.")
@click.option("--examples", "n_examples", type=click.IntRange(min=1), default=2000,
              show_default=True, help="--labels needle: how many contexts to generate.")
@click.option("--question-first", is_flag=True,
              help="--labels needle: put the question line before the memo (the classifier "
                   "then reads 'Q: ...' first; give it texts in that order).")
@click.option("--tokenizer", default="tw-small", show_default=True,
              help="Tokenizer (built-in name or directory; a fast tokenizer).")
@click.option("--steps", type=click.IntRange(min=1), default=600, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=3e-3, show_default=True)
@click.option("--hidden-size", type=click.IntRange(min=8), default=64, show_default=True)
@click.option("--layers", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--heads", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--max-length", type=click.IntRange(min=8), default=256, show_default=True,
              help="Tokens per window, special tokens included.")
@click.option("--keep-weight", type=click.FloatRange(0, min_open=True), default=1.0,
              show_default=True, help="Loss weight of keep tokens.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Torch CPU threads (fix it for bit-identical reruns).")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("--save-every", type=click.IntRange(min=0), default=100, show_default=True,
              help="Checkpoint to OUT/checkpoint every N steps (0: only when stopped).")
@click.option("--resume", is_flag=True,
              help="Continue the run in OUT/checkpoint (same options and data); it ends with "
                   "the weights an unbroken run gives.")
@click.option("--overwrite", is_flag=True,
              help="Use a non-empty --out that is not a run of this command: delete its "
                   "contents just before the first step (never mixed with the new files).")
def compress_train_command(out: str, data: str | None, label_source: str, lm: str, rate: float,
                           n_examples: int, question_first: bool, tokenizer: str, steps: int,
                           batch_size: int,
                           lr: float, hidden_size: int, layers: int, heads: int,
                           max_length: int, keep_weight: float, seed: int,
                           threads: int | None, progress: bool, save_every: int, resume: bool,
                           overwrite: bool) -> None:
    """Train a token classifier that `tokenwise compress --method token_classifier --model OUT`
    (and `TokenClassifierCompressor(OUT)`) loads.

    --out must be new or empty, or hold an unfinished run of this command (continue it with
    --resume); anything else needs --overwrite. SIGTERM or Ctrl-C saves a checkpoint after the
    step in progress and exits; rerun the same command with --resume to continue. The
    checkpoint is removed when the classifier is saved.
    """
    import torch

    from tokenwise.compression.trainer import (
        CHECKPOINT_DIR,
        CHECKPOINT_FILE,
        CHECKPOINT_FORMAT,
        ClassifierConfig,
        given_labels,
        read_jsonl,
        surprisal_labels,
        train_token_classifier,
    )
    from tokenwise.training.runs import TrainingInterrupted, check_output_dir

    try:
        # Before any labelling or training: an unusable --out fails now, not at the end.
        check_output_dir(out, checkpoint=f"{CHECKPOINT_DIR}/{CHECKPOINT_FILE}",
                         fmt=CHECKPOINT_FORMAT, command="tokenwise compress train",
                         resume=resume, overwrite=overwrite)
        if threads is not None:
            torch.set_num_threads(threads)
        if label_source == "needle":
            if data is not None:
                raise TokenwiseError("--labels needle generates its own data; drop --data")
            examples = needle_examples(n_examples, seed, question_first)
        else:
            if data is None:
                raise TokenwiseError(f"--labels {label_source} needs --data FILE.jsonl")
            rows = read_jsonl(data)
            if label_source == "given":
                examples = [(r["text"], given_labels(r)) for r in rows]
            else:
                from tokenwise.compression.perplexity import load_causal_lm

                model = load_causal_lm(lm)
                examples = [(r["text"], surprisal_labels(model, r["text"], rate)) for r in rows]
        cfg = ClassifierConfig(hidden_size=hidden_size, layers=layers, heads=heads,
                               intermediate_size=2 * hidden_size, max_length=max_length,
                               steps=steps, batch_size=batch_size, lr=lr,
                               keep_weight=keep_weight, seed=seed)
        command = _command_line()
        extra = {"labels": label_source, "data": data, "threads": torch.get_num_threads()}
        if label_source == "needle":
            extra["layout"] = "question first" if question_first else "question last"
        if label_source == "surprisal":
            extra.update(lm=lm, rate=rate)
        info = train_token_classifier(examples, out, tokenizer=tokenizer, config=cfg,
                                      command=command, extra=extra, progress=progress,
                                      save_every=save_every, resume=resume,
                                      overwrite=overwrite)
    except TrainingInterrupted as exc:
        click.echo(str(exc), err=True)
        raise SystemExit(exc.exit_code) from None
    except TokenwiseError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"saved {out}: {info['parameters']:,} parameters, {info['examples']} examples, "
               f"final loss {info['final_loss']}, token accuracy {info['token_accuracy']:.3f}, "
               f"{info['train_seconds']} s")


if __name__ == "__main__":  # python -m tokenwise.cli.compress_train (same options)
    compress_train_command()

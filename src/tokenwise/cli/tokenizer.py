"""`tokenwise tokenizer train|transplant`: train a tokenizer (with supertokens), move a model
onto it."""

from __future__ import annotations

import json
from pathlib import Path

import click

from tokenwise.errors import TokenwiseError


def _check_out_dir(out: str, overwrite: bool) -> None:
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise TokenwiseError(f"-o {out!r} is a file; give a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise TokenwiseError(f"-o {out!r} is not empty; give an empty or new directory, or "
                             "--overwrite to replace the files of the same names in it")


def _read_corpus(corpus: str) -> list[str]:
    """Documents of a text file (one per line) or of a JSONL file (its "text" fields)."""
    from tokenwise.cli.common import read_text

    text = read_text(corpus)
    if not corpus.lower().endswith(".jsonl"):
        docs = [line for line in text.splitlines(keepends=True) if line.strip()]
    else:
        docs = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TokenwiseError(f"{corpus!r} line {number} is not valid JSON: "
                                     f"{exc.msg}") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise TokenwiseError(f"{corpus!r} line {number}: allowed an object with a "
                                     "string 'text'")
            docs.append(obj["text"])
    if not docs:
        raise TokenwiseError(f"corpus {corpus!r} holds no text")
    return docs


@click.group("tokenizer")
def tokenizer_group() -> None:
    """Train a byte-level BPE tokenizer (optionally with multi-word supertokens), and move a
    model onto a new tokenizer (TokenAdapt)."""


@tokenizer_group.command("train")
@click.argument("corpus", type=click.Path(dir_okay=False))
@click.option("--vocab-size", type=click.IntRange(min=300), required=True,
              help="Total vocabulary, special tokens included.")
@click.option("--supertokens", is_flag=True,
              help="Add a second stage whose merges cross single spaces (multi-word tokens).")
@click.option("--supertoken-share", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=0.25, show_default=True,
              help="Part of the vocabulary left to the supertoken stage.")
@click.option("--template", default=None,
              help="Carry the special tokens, BOS rule and chat template of this model's "
                   "tokenizer (built-in name or local directory).")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False),
              help="Directory for the tokenizer files.")
@click.option("--overwrite", is_flag=True, help="Write into a non-empty --out.")
def train_command(corpus: str, vocab_size: int, supertokens: bool, supertoken_share: float,
                  template: str | None, out: str, overwrite: bool) -> None:
    """Train a tokenizer on CORPUS (a text file, one document per line, or JSONL with
    "text")."""
    from tokenwise.progress import progress_bar
    from tokenwise.tokenizers import save_tokenizer, tokens_per_byte, train

    _check_out_dir(out, overwrite)
    steps = ["read corpus", *(["template"] if template else []), "train", "save"]
    with progress_bar(total=len(steps), desc="tokenizer", unit="stage") as bar:
        bar.set_postfix_str(steps[0])
        docs = _read_corpus(corpus)
        bar.update(1)
        tmpl = None
        if template:
            from transformers import AutoTokenizer

            from tokenwise.models.loading import resolve

            _, path = resolve(template)
            tmpl = AutoTokenizer.from_pretrained(path, local_files_only=True)
            bar.update(1)
        bar.set_postfix_str("train" + (" (two stages)" if supertokens else ""))
        tok = train(docs, vocab_size, supertokens=supertokens,
                    supertoken_share=supertoken_share, template=tmpl)
        bar.update(1)
        bar.set_postfix_str("save")
        save_tokenizer(tok, out)  # a tokenizer_class that transformers 4 and 5 both read
        bar.update(1)
    sample = docs[: min(len(docs), 2000)]
    click.echo(f"{len(tok)} tokens{' with supertokens' if supertokens else ''}, "
               f"{tokens_per_byte(tok, sample):.4f} tokens per byte on the corpus -> {out}")


@tokenizer_group.command("transplant")
@click.argument("model")
@click.argument("tokenizer_dir", type=click.Path(file_okay=False))
@click.option("--init", type=click.Choice(["tokenadapt", "mean", "subword_mean", "random"]),
              default="tokenadapt", show_default=True,
              help="How the new tokens' rows are made (shared tokens are always copied).")
@click.option("--embedder", default=None,
              help="TokenAdapt's embedder: none for the model's own input embeddings, "
                   "'minilm' for the installed all-MiniLM-L6-v2, or a local encoder directory.")
@click.option("--k", "k", type=click.IntRange(min=1), default=3, show_default=True,
              help="Neighbours of the global estimate.")
@click.option("--tau", type=click.FloatRange(0, min_open=True), default=0.3, show_default=True,
              help="Softmax temperature.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False),
              help="Directory for the new model (loadable by tokenwise and transformers).")
@click.option("--overwrite", is_flag=True, help="Write into a non-empty --out.")
def transplant_command(model: str, tokenizer_dir: str, init: str, embedder: str | None, k: int,
                       tau: float, seed: int, out: str, overwrite: bool) -> None:
    """Move MODEL (built-in name or directory) onto the tokenizer in TOKENIZER_DIR."""
    from tokenwise.tokenizers import transplant

    _check_out_dir(out, overwrite)
    if not Path(tokenizer_dir).is_dir():
        raise TokenwiseError(f"tokenizer directory {tokenizer_dir!r} does not exist")
    chosen = None
    if embedder is not None:
        from tokenwise.models.embedding import shared_embedder

        chosen = shared_embedder(None if embedder == "minilm" else embedder)
    result = transplant(model, tokenizer_dir, init, embedder=chosen, k=k, tau=tau, seed=seed,
                        out=out, progress=True)
    made = ", ".join(f"{n} {name}" for name, n in result.sources.items())
    click.echo(f"{result.model.vocab_size} tokens ({made}) -> {out}")

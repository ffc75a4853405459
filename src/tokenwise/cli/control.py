"""`tokenwise control train`: fit the logistic verifier that `SemanticControl` steers with."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import click

from tokenwise.cli.common import json_lines, model_option
from tokenwise.errors import TokenwiseError

EMBEDDINGS = ("hidden", "tokens")


def read_labelled(path: str) -> list[tuple[str, int]]:
    """``(text, 0/1)`` pairs from a JSONL file of ``{"text": ..., "label": 0|1|true|false}``.

    Args:
        path: the JSONL file.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "d.jsonl")
        >>> _ = open(p, "w").write('{"text": "a b", "label": true}\\n{"text": "c", "label": 0}')
        >>> read_labelled(p)
        [('a b', 1), ('c', 0)]
    """
    rows = []
    text = Path(path).read_text(encoding="utf-8")
    for place, row in json_lines(text, lambda n: f"{path}:{n}"):
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise TokenwiseError(f"{place}: allowed an object with a string \"text\"")
        label = row.get("label")
        if label not in (0, 1) or isinstance(label, float):
            raise TokenwiseError(f"{place}: label={label!r}: allowed 0, 1, true or false")
        rows.append((row["text"], int(label)))
    if not rows:
        raise TokenwiseError(f"{path} has no labelled texts")
    if len({label for _, label in rows}) < 2:
        raise TokenwiseError(f"{path}: every text has label {rows[0][1]}; a verifier needs "
                             "texts of both labels")
    return rows


def embed_texts(lm: Any, texts: list[str], embedding: str, layer: int) -> Any:
    """``(N, D)`` embeddings of ``texts`` as :class:`SemanticControl` sees a text: its token
    ids (no BOS) as one-hot rows through the embedder."""
    import torch
    import torch.nn.functional as F

    from tokenwise.sampling.semantic_control import HiddenStateEmbedder, TokenMeanEmbedder

    table = lm.hf_model.get_input_embeddings().weight
    embedder = (HiddenStateEmbedder(lm, layer) if embedding == "hidden"
                else TokenMeanEmbedder(table))
    rows = []
    with torch.no_grad():
        for text in texts:
            ids = lm.encode(text)
            if not ids:
                raise TokenwiseError(f"text {text!r} has no tokens: allowed non-empty texts")
            one_hot = F.one_hot(torch.tensor([ids], device=table.device), table.shape[0])
            rows.append(embedder(one_hot.float()).float().cpu())
    return torch.cat(rows)


@click.group("control")
def control_group() -> None:
    """Semantic control: fit the verifier that SemanticControl steers generation with."""


@control_group.command("train")
@click.argument("data", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Where to write the probe (JSON; LogisticProbe.load reads it).")
@model_option("tw-small")
@click.option("--embedding", type=click.Choice(EMBEDDINGS), default="hidden",
              show_default=True,
              help="hidden: the model's mean hidden state (HiddenStateEmbedder); tokens: the "
                   "mean of its input embeddings (TokenMeanEmbedder).")
@click.option("--layer", type=int, default=-1, show_default=True,
              help="--embedding hidden: which hidden state.")
@click.option("--l2", type=click.FloatRange(0, min_open=True), default=1e-2,
              show_default=True, help="L2 penalty of the logistic fit.")
@click.option("--holdout", type=click.FloatRange(0, 1, max_open=True), default=0.2,
              show_default=True, help="Share of texts held out to report accuracy on.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
def control_train_command(data: str, out: str, model: str, embedding: str, layer: int,
                          l2: float, holdout: float, seed: int) -> None:
    """Fit a logistic probe on sentence embeddings of DATA's labelled texts (JSONL, one
    {"text": ..., "label": 0/1} per line), label 1 = the attribute to steer towards. Give
    texts as SemanticControl judges a generation: the generated text, without the prompt.

    Use it with: SemanticControl(LogisticProbe.load(OUT), HiddenStateEmbedder(lm), lm).
    """
    from tokenwise.models import load
    from tokenwise.sampling.semantic_control import LogisticProbe

    rows = read_labelled(data)
    lm = load(model)
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_held = int(len(rows) * holdout)
    held, fit = order[:n_held], order[n_held:]
    x = embed_texts(lm, [text for text, _ in rows], embedding, layer)
    import torch

    y = torch.tensor([label for _, label in rows])
    if len(set(y[fit].tolist())) < 2:
        raise TokenwiseError("the training split holds one label only; lower --holdout or "
                             "add texts")
    probe = LogisticProbe.fit(x[fit], y[fit], l2=l2)

    def accuracy(index: list[int]) -> float | None:
        if not index:
            return None
        return float(((probe(x[index]) > 0).long() == y[index]).float().mean())

    info = {"model": model, "embedding": embedding, "layer": layer, "l2": l2,
            "texts": len(rows), "positives": int(y.sum()), "holdout": n_held, "seed": seed,
            "train_accuracy": accuracy(fit), "holdout_accuracy": accuracy(held)}
    probe.save(out, **info)
    held_text = ("" if info["holdout_accuracy"] is None
                 else f", held-out accuracy {info['holdout_accuracy']:.3f} ({n_held} texts)")
    click.echo(f"saved {out}: {x.shape[1]}-d probe on {embedding} embeddings of {model}, "
               f"{len(fit)} texts, train accuracy {info['train_accuracy']:.3f}{held_text}")

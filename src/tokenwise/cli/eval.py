"""`tokenwise eval compare|prune|quantize`: make compressed variants, and compare a model with one.

``compare`` reads both models on the same items and text (by default the testbed's: facts by
frequency, additions by digits, needles by distractors, fresh held-out documents; or your own
``--items`` JSONL and ``--text`` file) and prints accuracy per bucket with paired intervals,
the answer flips, KL(base || candidate), top-1 agreement, entropy shift and both perplexities.
``prune`` and ``quantize`` write a compressed copy of a model as a normal Hugging Face
directory (dense float weights, with ``tokenwise_compression.json`` giving the method and
the true bit budget).
"""

from __future__ import annotations

from pathlib import Path

import click

from tokenwise.cli.common import check_output_path, json_lines, read_text
from tokenwise.errors import TokenwiseError


@click.group("eval")
def eval_group() -> None:
    """Compressed models beyond perplexity: prune, quantize, and compare with the original."""


def _check_output_dir(path: str) -> None:
    target = Path(path)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise TokenwiseError(f"-o {path!r} exists and is not an empty directory; give a new "
                             "or empty directory")


def read_items(path: str) -> list:
    """Items from a JSONL file: one object a line with ``prompt``, ``answers`` (a list, or
    ``answer``: one string), ``bucket``, and optionally ``match`` and ``max_new_tokens``.

    Args:
        path: the file.

    Example:
        >>> read_items("items.jsonl")  # doctest: +SKIP
        [Item(prompt='2+2=', answers=('4',), bucket='arithmetic/1', ...)]
    """
    from tokenwise.evaluate import Item

    items = []
    for place, row in json_lines(read_text(path), lambda n: f"--items {path!r} line {n}"):
        if not isinstance(row, dict):
            raise TokenwiseError(f"{place}: expected an object")
        answers = row.get("answers", [row["answer"]] if "answer" in row else None)
        missing = [k for k, v in (("prompt", row.get("prompt")), ("answers", answers),
                                  ("bucket", row.get("bucket"))) if v is None]
        if missing:
            raise TokenwiseError(f"{place}: missing {', '.join(missing)} "
                                 "(each line needs prompt, answers or answer, bucket)")
        if isinstance(answers, str):
            answers = [answers]
        extra = {k: row[k] for k in ("match", "max_new_tokens", "stop") if k in row}
        try:
            items.append(Item(row["prompt"], tuple(str(a) for a in answers), str(row["bucket"]),
                              **extra))
        except TokenwiseError as exc:
            raise TokenwiseError(f"{place}: {exc}") from None
    if not items:
        raise TokenwiseError(f"--items {path!r} holds no items")
    return items


def _paragraphs(path: str, option: str) -> list[str]:
    parts = [p.strip() for p in read_text(path).split("\n\n") if p.strip()]
    if not parts:
        raise TokenwiseError(f"{option} {path!r} holds no text")
    return parts


@eval_group.command("compare")
@click.argument("base")
@click.argument("candidate")
@click.option("--tasks", default="facts,arithmetic,needle", show_default=True,
              help="Testbed item kinds (comma-separated: facts, arithmetic, needle), used "
                   "unless --items is given.")
@click.option("--facts", "facts_per_bucket", type=click.IntRange(min=1), default=50,
              show_default=True, help="Fact questions per frequency bucket.")
@click.option("--arithmetic", "arithmetic_per_level", type=click.IntRange(min=1), default=50,
              show_default=True, help="Additions per digit count (1-3 digits).")
@click.option("--needles", "needles_per_count", type=click.IntRange(min=1), default=25,
              show_default=True, help="Needle contexts per distractor count.")
@click.option("--docs", "docs_per_world", type=click.IntRange(min=0), default=8,
              show_default=True, help="Held-out testbed documents per world (unless --text).")
@click.option("--items", "items_file", type=click.Path(dir_okay=False), default=None,
              help="Your own items, JSONL (prompt, answers, bucket) instead of the testbed's.")
@click.option("--text", "text_file", type=click.Path(dir_okay=False), default=None,
              help="Held-out text file (paragraphs split at blank lines) instead of the "
                   "testbed's documents.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Bootstrap seed.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Write the full comparison (with every answer) as JSON to this file.")
@click.option("--png", "png_out", type=click.Path(dir_okay=False), default=None,
              help="Draw the comparison to this PNG.")
def compare_command(base: str, candidate: str, tasks: str, facts_per_bucket: int,
                    arithmetic_per_level: int, needles_per_count: int, docs_per_world: int,
                    items_file: str | None, text_file: str | None, seed: int,
                    json_out: str | None, png_out: str | None) -> None:
    """Compare CANDIDATE (e.g. a pruned or quantised copy) with BASE on the same items/text."""
    from tokenwise.evaluate import Suite, compare
    from tokenwise.models import load
    from tokenwise.testbed.compare_suite import held_out_texts, testbed_suite
    from tokenwise.testbed.worlds import Testbed

    check_output_path(json_out, "--json")
    check_output_path(png_out, "--png")
    testbed = Testbed(0)
    if items_file:
        items = read_items(items_file)
    else:
        chosen = tuple(t.strip() for t in tasks.split(",") if t.strip())
        if not chosen:
            raise TokenwiseError(f"--tasks {tasks!r}: name at least one of facts, arithmetic, "
                                 "needle (or give --items)")
        items = list(testbed_suite(testbed, tasks=chosen, facts_per_bucket=facts_per_bucket,
                                   arithmetic_per_level=arithmetic_per_level,
                                   needles_per_count=needles_per_count,
                                   docs_per_world=0).items)
    if text_file:
        texts = _paragraphs(text_file, "--text")
    else:
        texts = held_out_texts(testbed, docs_per_world) if docs_per_world else []
    name = "custom" if items_file or text_file else f"testbed seed {testbed.seed}"
    result = compare(load(base), load(candidate), Suite(items, texts, name=name), seed=seed,
                     progress=True)
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(result.to_json() + "\n")
    if png_out:
        result.save_png(png_out)
    click.echo(result.table())


@eval_group.command("prune")
@click.argument("model")
@click.option("--method", type=click.Choice(["magnitude", "wanda"]), default="magnitude",
              show_default=True, help="Importance: |W| (magnitude) or |W| * ||X|| (Wanda).")
@click.option("--sparsity", type=float, default=None,
              help="Share of each layer's weights to zero, 0 <= s < 1 (implied by --pattern).")
@click.option("--pattern", default=None, help="N:M semi-structured sparsity, e.g. 2:4.")
@click.option("--calibration", "calibration_file", type=click.Path(dir_okay=False),
              default=None, help="Text file for Wanda's activations (paragraphs split at "
                                 "blank lines).")
@click.option("--include-head", is_flag=True, help="Prune the output head too.")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="New (or empty) directory for the pruned model.")
def prune_command(model: str, method: str, sparsity: float | None, pattern: str | None,
                  calibration_file: str | None, include_head: bool, out_dir: str) -> None:
    """Write a pruned copy of MODEL (magnitude or Wanda; unstructured or N:M) to -o DIR."""
    from tokenwise.evaluate import prune
    from tokenwise.evaluate.prune import check_sparsity, parse_pattern
    from tokenwise.models import load

    _check_output_dir(out_dir)
    check_sparsity(sparsity, parse_pattern(pattern))  # before the model loads
    if method == "wanda" and not calibration_file:
        raise TokenwiseError("--method wanda needs --calibration FILE: a few paragraphs of "
                             "text like the model's inputs")
    calibration = _paragraphs(calibration_file, "--calibration") if calibration_file else None
    out = prune(load(model), method=method, sparsity=sparsity, pattern=pattern,
                calibration=calibration, include_head=include_head, progress=True)
    path = out.save(out_dir)
    click.echo(f"wrote {path}: {out.info['method']}, sparsity {out.info['sparsity']:g} "
               f"({out.info['pattern']}), {out.info['bits_per_parameter']:.2f} bits per "
               "parameter if packed (saved dense: the directory is not smaller)")


def _group_size(value: str) -> int | None:
    if value == "row":
        return None
    try:
        return int(value)
    except ValueError:
        raise TokenwiseError(f"--group-size {value!r}: allowed a positive int or 'row' (one "
                             "group per output row)") from None


@eval_group.command("quantize")
@click.argument("model")
@click.option("--bits", type=int, default=4, show_default=True, help="Code width: 2, 3, 4 or 8.")
@click.option("--group-size", default="64", show_default=True,
              help="Input weights per group (must divide every layer's width), or 'row'.")
@click.option("--symmetric", is_flag=True, help="Symmetric codes (no zero point).")
@click.option("--backend", type=click.Choice(["rtn", "quanto"]), default="rtn",
              show_default=True, help="Our round-to-nearest, or optimum-quanto's quantiser "
                                      "(the peer; 8, 4 or 2 bits, its own group sizes).")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="New (or empty) directory for the quantised model.")
def quantize_command(model: str, bits: int, group_size: str, symmetric: bool, backend: str,
                     out_dir: str) -> None:
    """Write a weight-quantised copy of MODEL (group-wise round-to-nearest) to -o DIR."""
    from tokenwise.evaluate import quantize, quanto_quantize
    from tokenwise.evaluate.quantize import check_settings
    from tokenwise.models import load

    _check_output_dir(out_dir)
    if backend == "rtn":  # before the model loads
        check_settings(bits, _group_size(group_size))
    if backend == "quanto":
        out = quanto_quantize(load(model), bits=bits)
    else:
        out = quantize(load(model), bits=bits, group_size=_group_size(group_size),
                       symmetric=symmetric, progress=True)
    path = out.save(out_dir)
    click.echo(f"wrote {path}: {out.info['method']} {bits}-bit, "
               f"{out.info['bits_per_compressed_weight']:.3f} bits per quantised weight, "
               f"{out.info['bits_per_parameter']:.2f} per parameter if packed (saved as "
               "dequantised floats: the directory is not smaller)")

"""`tokenwise compress`: shorten a prompt to a token budget, and show what was dropped."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from tokenwise.cli.common import read_text
from tokenwise.errors import TokenwiseError

if TYPE_CHECKING:
    from tokenwise.models import LanguageModel


def _method_names() -> list[str]:
    from tokenwise.compression.registry import ALIASES, names

    return [*names(), *sorted(ALIASES)]


@click.command("compress")
@click.argument("source", metavar="FILE|-")
@click.option("--rate", type=float, default=None,
              help="Fraction of the tokens to keep, in (0, 1].")
@click.option("--target-tokens", type=int, default=None,
              help="Tokens to keep (met within 1% on the target tokenizer).")
@click.option("--threshold", type=float, default=None,
              help="Keep every word scoring at least this (token_classifier: a probability).")
@click.option("--method", type=click.Choice(_method_names()), default="token_classifier",
              show_default=True, help="Compression method.")
@click.option("--model", "-m", default=None,
              help="The method's model: token_classifier: the built-in 'tw-keep' (default) "
                   "or a local token-classification model directory (e.g. LLMLingua-2); "
                   "perplexity / selective_context: a causal LM (default tw-small).")
@click.option("--target-model", default=None,
              help="Whose tokenizer counts tokens: a built-in name or a local directory "
                   "(default: the built-in models' tokenizer).")
@click.option("--question", "-q", default=None,
              help="A question the compressed prompt must answer (perplexity and extractive "
                   "score by it; the built-in classifier tw-keep reads it; generative keeps "
                   "its keywords in rewrites; see --force-question-words).")
@click.option("--force-question-words", is_flag=True,
              help="Keep the question's keywords wherever they occur (function words and "
                   "wh-words excepted); not for generative.")
@click.option("--percentile", type=click.Choice(["global", "chunk"]), default="global",
              show_default=True,
              help="global: one cut over the whole text that meets the budget; chunk: "
                   "LLMLingua-2's per-chunk cut.")
@click.option("--force", "force_tokens", multiple=True,
              help="A string always kept where it is a whole word (repeatable; '\\n' keeps "
                   "every line break).")
@click.option("--keep-digits", is_flag=True, help="Keep every word containing a digit.")
@click.option("--no-protect", is_flag=True,
              help="Let code, URLs, numbers, JSON keys, quoted strings and tags be cut too.")
@click.option("--context-filter", is_flag=True,
              help="First drop whole paragraphs (or messages / contexts) with low scores.")
@click.option("--messages", "as_messages", is_flag=True,
              help="FILE is JSON: a list of {role, content} messages, or a list of texts.")
@click.option("--role", "roles", multiple=True,
              help="Message roles to compress (repeatable; default user and assistant).")
@click.option("--device", default=None, help="cpu, cuda or cuda:N for the method's model.")
@click.option("--batch-size", type=int, default=None, help="Chunks per forward pass.")
@click.option("--show", is_flag=True,
              help="Print the input with kept words bright and dropped words dim.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the result as JSON (text, counts, per-word decisions).")
def compress_command(source: str, rate: float | None, target_tokens: int | None,
                     threshold: float | None, method: str, model: str | None,
                     target_model: str | None, question: str | None, percentile: str,
                     force_question_words: bool, force_tokens: tuple[str, ...],
                     keep_digits: bool, no_protect: bool,
                     context_filter: bool, as_messages: bool, roles: tuple[str, ...],
                     device: str | None, batch_size: int | None, show: bool,
                     as_json: bool) -> None:
    """Compress the prompt in FILE (or standard input with -) to a token budget.

    Give exactly one of --rate, --target-tokens or --threshold. The compressed text goes to
    standard output and a one-line summary (tokens before and after, on the target
    tokenizer) to standard error.
    """
    from tokenwise.compression import check_budget, compress
    from tokenwise.compression.base import DEFAULT_ROLES
    from tokenwise.compression.registry import ALIASES

    check_budget(rate, target_tokens, threshold)
    canonical = ALIASES.get(method, method)
    text = read_text(source)
    data: object = text
    if as_messages:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TokenwiseError(f"--messages: {source!r} is not JSON ({exc.msg} at line "
                                 f"{exc.lineno})") from None
    force = tuple(t.replace("\\n", "\n") for t in force_tokens)
    options: dict[str, object] = {}
    if device is not None:
        options["device"] = device
    if batch_size is not None:
        options["batch_size"] = batch_size
    if force_question_words:
        options["force_question_words"] = True
    if canonical == "token_classifier" and not as_json:
        options["progress"] = True
    result = compress(
        data, method=method, rate=rate, target_tokens=target_tokens, threshold=threshold,
        question=question, force_tokens=force, keep_digits=keep_digits,
        protect=not no_protect, model=model, target_model=target_model,
        roles=roles or DEFAULT_ROLES, percentile=percentile, context_filter=context_filter,
        **options,
    )
    if as_json:
        click.echo(result.to_json())
        return
    if show:
        _show(result)
    else:
        out = result.text
        if result.messages is not None:
            out = json.dumps(result.messages, ensure_ascii=False, indent=2)
        click.echo(out)
    click.echo(
        f"{result.method}: {result.tokens_before} -> {result.tokens_after} tokens "
        f"({100 * result.rate:.1f}%, {result.target_tokenizer} tokenizer), "
        f"{len(result.kept_words)}/{len(result.words)} words kept, {result.seconds:.2f} s",
        err=True,
    )


def _show(result, console=None) -> None:
    from rich.text import Text

    from tokenwise.cli.common import console as make_console

    console = console if console is not None else make_console(highlight=False)
    roles = None
    if result.messages is not None:
        roles = [m.get("role", "?") for m in result.messages]
    current = None
    line = Text()
    for seg, piece, kept in result.pieces():
        if seg != current:
            if current is not None:
                console.print(line)
                line = Text()
            if roles is not None:
                console.print(Text(f"[{roles[seg]}]", style="bold cyan"))
            elif current is not None:
                console.print()
            current = seg
        style = "" if kept is None else ("bold bright_white" if kept else "dim")
        line.append(piece, style=style)
    console.print(line)


class _CompressGroup(click.Group):
    """``tokenwise compress FILE ...`` compresses; ``tokenwise compress SUBCOMMAND ...`` (e.g.
    ``train``) runs that sub-command. A file that shares a sub-command's name is reached as
    ``./NAME``."""

    def resolve_command(self, ctx: click.Context, args: list[str]):  # type: ignore[override]
        if args and args[0] in self.commands:
            return super().resolve_command(ctx, args)
        return "compress", compress_command, args

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(ctx.command_path, "FILE|- [OPTIONS] | train [OPTIONS]")

    def format_help_text(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_help_text(ctx, formatter)
        sub = click.Context(compress_command, info_name=ctx.info_name, parent=ctx.parent)
        rows = [r for p in compress_command.get_params(sub)
                if isinstance(p, click.Option) and (r := p.get_help_record(sub)) is not None]
        with formatter.section("Options of `compress FILE|-`"):
            formatter.write_dl(rows)


def _compress_group() -> click.Group:
    group = _CompressGroup(
        "compress", no_args_is_help=True,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                          "help_option_names": ["-h", "--help"]},
        help="Compress a prompt to a token budget (FILE or - for standard input), or train a "
             "token classifier for it (`compress train`).",
    )
    try:
        from tokenwise.cli.compress_train import compress_train_command
    except ImportError:  # the trainer is optional
        return group
    group.add_command(compress_train_command, "train")
    return group


#: What the `tokenwise` group registers: `compress FILE|- ...` and `compress train ...`.
compress_group = _compress_group()


#: The demo's memo: one needle (Tavoun's code) among distractors, then its question.
DEMO_FACTS = (("Brelix", 382), ("Kivibath", 204), ("Tavoun", 917), ("Lego", 526),
              ("Gounasas", 904), ("Mirodel", 155), ("Pelanor", 731), ("Suvik", 648))
DEMO_KEY = "Tavoun"


def demo_lines(console=None, *, rate: float = 0.33,
               methods: tuple[str, ...] = ("token_classifier", "perplexity"),
               reader: str | LanguageModel | None = None) -> list[dict]:
    """Compress a short needle memo with each method and print what was kept.

    Kept words print bright and dropped ones dim, then whether the needle's answer survived
    and, given a ``reader``, what it answers from the compressed memo (question last).
    The question line comes first (as tw-keep was trained) and is a force token (it survives
    whole); the budget is ``rate`` of the memo's tokens plus the question line's; number
    protection is off, since every code is a number. token_classifier is the built-in tw-keep;
    perplexity is tw-small's contrastive surprisal. For `tokenwise demo`.

    Args:
        console: a ``rich.console.Console`` to print to (default: a new one on stdout).
        rate: share of the memo's tokens to keep.
        methods: compression methods to show.
        reader: a model (or built-in name) that answers the question from the compressed
            memo, e.g. the built-in ``"tw-reader"``; none by default.

    Returns:
        one dict per method: ``method``, ``tokens_before``, ``tokens_after``, ``survived``,
        ``seconds``, and with a reader its ``reader_answer``.

    Example:
        >>> import io
        >>> from rich.console import Console
        >>> rows = demo_lines(Console(file=io.StringIO()), methods=("token_classifier",))
        >>> rows[0]["method"], rows[0]["tokens_after"] < rows[0]["tokens_before"]
        ('token_classifier', True)
    """
    import re

    from rich.markup import escape

    from tokenwise.cli.common import console as make_console
    from tokenwise.compression import TokenCounter, get

    console = console if console is not None else make_console(highlight=False)
    memo = "Memo:\n" + "\n".join(f"The code of {k} is {v}." for k, v in DEMO_FACTS)
    question = f"What is the code of {DEMO_KEY}?"
    q_line = f"Q: {question}"
    answer = str(dict(DEMO_FACTS)[DEMO_KEY])
    counter = TokenCounter.resolve(None)
    target = round(rate * counter.count(memo)) + counter.count(q_line)
    if reader is not None:
        from tokenwise.models import load
        from tokenwise.testbed.evaluate import greedy_complete

        reader = load(reader) if isinstance(reader, str) else reader
        whole = greedy_complete(reader, [f"{memo}\n{q_line}\nA:"], max_new_tokens=5)[0]
        console.print(f"{escape(reader.name)} reads the whole memo and answers "
                      f"{escape(whole.strip())!r} (truth {answer}; how often this small "
                      "reader is right, by memo length: BENCHMARKS.md)", highlight=False)
    rows = []
    for method in methods:
        comp = get(method)
        result = comp.compress(f"{q_line}\n{memo}", target_tokens=target, question=question,
                               force_tokens=[q_line], protect=False, target_model=counter)
        context = result.text.replace(q_line, "", 1)
        ok = re.search(rf"(?<!\d){answer}(?!\d)", context) is not None
        reads_with = getattr(comp, "model_name", None) or getattr(getattr(comp, "lm", None),
                                                                  "name", "")
        console.print(f"[bold]{escape(method)}[/bold] ({escape(reads_with)}): "
                      f"{result.tokens_before} -> {result.tokens_after} tokens, "
                      f"{result.seconds:.2f} s", highlight=False)
        _show(result, console)
        console.print(f"  answer {answer} " + ("[green]survived[/green]" if ok else
                                               "[red]was dropped[/red]"), highlight=False)
        rows.append({"method": method, "tokens_before": result.tokens_before,
                     "tokens_after": result.tokens_after, "survived": ok,
                     "seconds": result.seconds})
        if reader is not None:
            said = greedy_complete(reader, [f"{context.strip()}\n{q_line}\nA:"],
                                   max_new_tokens=5)[0].strip()
            verdict = "[green]right[/green]" if said == answer else "[red]wrong[/red]"
            console.print(f"  {escape(reader.name)} answers from what was kept: "
                          f"{escape(said)!r} {verdict}", highlight=False)
            rows[-1]["reader_answer"] = said
    return rows

"""Helpers shared by the sub-commands: model option, reading input text, output consoles."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from tokenwise.errors import TokenwiseError

if TYPE_CHECKING:
    from rich.console import Console

#: Width of a console that writes to a file or a pipe: wide enough for any table we print,
#: so nothing is cropped (rich would otherwise assume 80 columns).
PIPE_WIDTH = 10_000
_BOM = "\ufeff"


def model_option(default: str = "tw-large"):
    """The ``--model`` option: a built-in name or a local directory."""
    return click.option(
        "--model", "-m", default=default, show_default=True,
        help="Built-in model name (see `tokenwise models`) or a local Hugging Face directory.",
    )


def read_text(source: str) -> str:
    """Read UTF-8 text from a file path, or from standard input when ``source`` is ``-``.

    A leading byte order mark (U+FEFF, which some Windows editors write) is dropped: it marks
    the encoding and is not part of the text.

    Args:
        source: a path, or ``-``.

    Example:
        >>> read_text("README.md").startswith("# tokenwise")  # doctest: +SKIP
        True
    """
    if source == "-":
        data = sys.stdin.buffer.read()
        name = "standard input"
    else:
        path = Path(source)
        if not path.exists():
            raise TokenwiseError(f"file {source!r} does not exist")
        if path.is_dir():
            raise TokenwiseError(f"{source!r} is a directory; give a text file or - for stdin")
        data = path.read_bytes()
        name = repr(source)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TokenwiseError(
            f"{name} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "convert it first, e.g. `iconv -f latin1 -t utf-8`"
        ) from None
    return text.removeprefix(_BOM)



def json_lines(text: str, where: Callable[[int], str]) -> Iterator[tuple[str, Any]]:
    """Each non-blank line of a JSONL text parsed, with its place for error messages.

    Args:
        text: the file's text.
        where: line number (from 1) -> how an error names that line (e.g. ``"data.jsonl:3"``).

    Yields:
        ``(where(n), value)`` for every non-blank line; a line that is not JSON raises
        :class:`~tokenwise.errors.TokenwiseError` naming it.

    Example:
        >>> list(json_lines('{"a": 1}\\n\\n[2]', lambda n: f"f:{n}"))
        [('f:1', {'a': 1}), ('f:3', [2])]
    """
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield where(n), json.loads(line)
        except json.JSONDecodeError as exc:
            raise TokenwiseError(f"{where(n)}: not JSON ({exc.msg})") from None

def check_output_path(path: str | None, option: str) -> None:
    """Fail before any work when an output file cannot be written where asked.

    Args:
        path: the output file, or None when the option was not given.
        option: the option's name, for the message (e.g. ``"--html"``).

    Example:
        >>> check_output_path(None, "--html")
    """
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise TokenwiseError(f"{option} {path!r} is a directory; give a file name")
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise TokenwiseError(f"{option} {path!r}: {str(parent)!r} is a file, not a folder")
            break


def show_piece(piece: str) -> str:
    """A token piece with whitespace made visible, for tables."""
    return piece.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥") or "∅"


def _rule_width() -> int:
    """Width for rules on a pipe: ``COLUMNS`` when it is a positive integer, else 80."""
    try:
        width = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        return 80
    return width if width > 0 else 80


def console(*, stderr: bool = False, **kwargs: Any) -> Console:
    """A rich console for command output that never crops when it writes to a file or pipe.

    On a terminal this is rich's usual console (tables fit the terminal's width). Anywhere
    else rich would assume 80 columns and crop wide tables (``tokenwise uncertainty eval >
    out.txt`` lost its last columns); here tables get their natural width and text wraps
    only past :data:`PIPE_WIDTH` columns. Rules (``console.rule``) stay ``COLUMNS`` (or 80)
    wide. Tables must not use ``expand=True``, which would stretch them to the pipe width.

    Args:
        stderr: write to standard error instead of standard output.
        **kwargs: passed to :class:`rich.console.Console` (e.g. ``highlight=False``).

    Example:
        >>> out = console()
        >>> out.print("ready")  # doctest: +SKIP
        ready
    """
    from rich.console import Console

    terminal = Console(stderr=stderr, **kwargs)
    if terminal.is_terminal or "width" in kwargs or "file" in kwargs:
        return terminal
    return _pipe_console_class()(stderr=stderr, width=PIPE_WIDTH, **kwargs)


@functools.cache
def _pipe_console_class() -> type:
    from rich.console import Console
    from rich.rule import Rule

    class PipeConsole(Console):
        """A console for files and pipes: wide; rules at ``COLUMNS`` width, not 10,000."""

        def rule(self, title: Any = "", *, characters: str = "─", style: Any = "rule.line",
                 align: Any = "center") -> None:
            self.print(Rule(title=title, characters=characters, style=style, align=align),
                       width=_rule_width())

    return PipeConsole

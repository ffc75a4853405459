"""Helpers shared by the sub-commands: model option, reading input text, number formats."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tokenwise.errors import TokenwiseError


def model_option(default: str = "tw-large"):
    """The ``--model`` option: a built-in name or a local directory."""
    return click.option(
        "--model", "-m", default=default, show_default=True,
        help="Built-in model name (see `tokenwise models`) or a local Hugging Face directory.",
    )


def read_text(source: str) -> str:
    """Read UTF-8 text from a file path, or from standard input when ``source`` is ``-``.

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
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TokenwiseError(
            f"{name} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "convert it first, e.g. `iconv -f latin1 -t utf-8`"
        ) from None


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

"""`tokenwise.cli.common`: reading input text (a leading BOM dropped) and the output console."""

from __future__ import annotations

import io
import sys

import pytest
from rich.table import Table

from tokenwise.cli.common import PIPE_WIDTH, console, read_text
from tokenwise.errors import TokenwiseError

BOM = b"\xef\xbb\xbf"


def test_a_leading_bom_is_dropped_from_files(tmp_path) -> None:
    path = tmp_path / "bom.txt"
    path.write_bytes(BOM + b"The meeting is on Tuesday.\n")
    assert read_text(str(path)) == "The meeting is on Tuesday.\n"


def test_a_leading_bom_is_dropped_from_standard_input(monkeypatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(BOM + "café\n".encode())))
    assert read_text("-") == "café\n"


def test_only_the_leading_bom_is_dropped(tmp_path) -> None:
    # U+FEFF inside a text is a zero-width no-break space: text, kept as written.
    path = tmp_path / "two.txt"
    path.write_bytes(BOM + b"a" + BOM + b"b")
    assert read_text(str(path)) == "a\ufeffb"


def test_a_bom_only_file_is_empty_text(tmp_path) -> None:
    from tokenwise.scoring import check_text

    path = tmp_path / "bom-only.txt"
    path.write_bytes(BOM)
    with pytest.raises(TokenwiseError, match="empty"):
        check_text(read_text(str(path)))


def _wide_table() -> Table:
    table = Table(title="wide")
    for i in range(10):
        table.add_column(f"column {i}")
    table.add_row(*[f"value-{i}-" * 3 for i in range(10)])
    return table


def test_tables_written_to_a_pipe_are_not_cropped(monkeypatch) -> None:
    out = io.StringIO()  # not a terminal, as `tokenwise ... > file` is
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.delenv("COLUMNS", raising=False)
    c = console()
    assert not c.is_terminal and c.width == PIPE_WIDTH
    c.print(_wide_table())
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) > 80
    for i in range(10):  # every column whole, on one line
        assert any(f"value-{i}-" * 3 in line for line in lines), i
        assert any(f"column {i}" in line for line in lines), i


def test_rules_on_a_pipe_stay_columns_wide(monkeypatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setenv("COLUMNS", "60")
    console().rule("step 1")
    assert [len(line) for line in out.getvalue().splitlines()] == [60]
    monkeypatch.delenv("COLUMNS")
    out.seek(0)
    out.truncate()
    console().rule("step 2")
    assert [len(line) for line in out.getvalue().splitlines()] == [80]


def test_a_terminal_gets_rich_s_own_console(monkeypatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdout", Terminal())
    monkeypatch.setenv("COLUMNS", "72")
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    c = console()
    assert c.is_terminal and c.width == 72


def test_stderr_console_and_explicit_width(monkeypatch) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert console(stderr=True).width == PIPE_WIDTH
    assert console(width=50).width == 50  # an explicit width is the caller's choice

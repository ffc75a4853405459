"""The README's examples work as written: each Python block runs on its own, and the example
files its commands name are shipped and readable by the commands that take them.

A block that needs something a test machine does not have (a running server, vLLM) says so
on its first line, ``# needs: ...``, and is skipped with that reason.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
NEEDS = "# needs:"


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line number, code)`` of every fenced ```python block of ``text``."""
    blocks = []
    for match in re.finditer(r"^```python\n(.*?)^```", text, flags=re.S | re.M):
        line = text.count("\n", 0, match.start()) + 1
        blocks.append((line, match.group(1)))
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_the_readme_has_python_blocks() -> None:
    assert len(BLOCKS) >= 4, [line for line, _ in BLOCKS]


@pytest.mark.slow  # the blocks load models, sample and train: seconds each
@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"line{line}" for line, _ in BLOCKS])
def test_python_block_runs_alone(line: int, code: str, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    first = code.lstrip().splitlines()[0]
    if first.startswith(NEEDS):
        pytest.skip(f"README line {line}: {first.removeprefix('#').strip()}")
    monkeypatch.chdir(tmp_path)  # blocks that write files (trace.html) write them here
    namespace: dict[str, object] = {"__name__": f"readme_line_{line}"}
    exec(compile(code, f"README.md:{line}", "exec"), namespace)  # a fresh namespace per block


def test_example_files_named_by_the_readme_exist() -> None:
    text = README.read_text(encoding="utf-8")
    named = sorted(set(re.findall(r"\bexamples/[\w.-]+", text)))
    assert named, "the README names no example files"
    for name in named:
        path = ROOT / name
        assert path.is_file(), f"the README names {name}, which is not in the repository"
        assert path.read_text(encoding="utf-8").strip(), name
    # The commands' inputs, by the files the README gives them.
    for name in ("examples/notes.txt", "examples/memo.txt", "examples/long.txt",
                 "examples/keep.jsonl", "examples/data.jsonl"):
        assert name in named, f"the README no longer uses {name}"


def test_example_long_text_is_longer_than_the_context() -> None:
    from tokenwise.models import declared_context_length, load

    lm = load("tw-small")
    n = len(lm.encode((ROOT / "examples/long.txt").read_text(encoding="utf-8")))
    assert n > 2 * declared_context_length("tw-small"), n


def test_example_jsonl_files_read_as_their_commands_expect() -> None:
    from tokenwise.compression.trainer import given_labels, read_jsonl
    from tokenwise.training.trainer import load_examples

    rows = read_jsonl(ROOT / "examples/keep.jsonl")  # `compress train --data`
    assert len(rows) >= 10
    for row in rows:
        assert given_labels(row).any()
    examples = load_examples(ROOT / "examples/data.jsonl")  # `tokenwise train MODEL DATA`
    assert len(examples) >= 10 and all(ex.prompt for ex in examples)

"""`tokenwise.progress`: bars on standard error, redrawn rarely when it is not a terminal."""

from __future__ import annotations

import io
import sys

from tokenwise.progress import FILE_INTERVAL, TERMINAL_INTERVAL, is_terminal, progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_on_a_file_is_throttled(monkeypatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    bar = progress_bar(range(5), desc="work", unit="step")
    assert bar.mininterval == FILE_INTERVAL and bar.maxinterval >= FILE_INTERVAL
    assert list(bar) == [0, 1, 2, 3, 4]
    text = err.getvalue()
    assert "work" in text and "5/5" in text  # the last state is always drawn


def test_a_bar_on_a_terminal_redraws_often(monkeypatch) -> None:
    monkeypatch.setattr(sys, "stderr", _Terminal())
    bar = progress_bar(range(2), desc="work")
    assert bar.mininterval == TERMINAL_INTERVAL
    list(bar)


def test_a_disabled_bar_writes_nothing(monkeypatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    assert sum(progress_bar(range(4), desc="work", enabled=False)) == 6
    assert err.getvalue() == ""


def test_is_terminal_handles_odd_streams() -> None:
    closed = io.StringIO()
    closed.close()
    assert not is_terminal(None) and not is_terminal(closed) and not is_terminal(object())
    assert is_terminal(_Terminal())

"""Progress bars on standard error that stay readable when stderr is a file or a pipe.

On a terminal a bar redraws itself in place, ten times a second. Written to a file (a log, a
CI job's output) every redraw is kept, so a long run would leave megabytes of bars; there the
bar is drawn at most once every :data:`FILE_INTERVAL` seconds, plus its first and last state.
Progress never goes to standard output, which carries the result (a table, JSON).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TextIO

#: Seconds between redraws when standard error is a terminal (tqdm's default).
TERMINAL_INTERVAL = 0.1
#: Seconds between redraws when standard error is a file or a pipe.
FILE_INTERVAL = 10.0


def is_terminal(stream: TextIO | None) -> bool:
    """Whether ``stream`` is an interactive terminal (False for None or a closed stream).

    Example:
        >>> import io
        >>> is_terminal(io.StringIO())
        False
    """
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def progress_bar(iterable: Iterable[Any] | None = None, *, desc: str, unit: str = "it",
                 total: int | None = None, enabled: bool = True, **kwargs: Any) -> Any:
    """A tqdm bar on standard error, redrawn less often when stderr is not a terminal.

    Args:
        iterable: what to iterate over (None for a bar updated by hand).
        desc: the bar's label.
        unit: what one step counts.
        total: number of steps (default: ``len(iterable)`` when it has one).
        enabled: False for no bar at all (the iterable is still iterated).
        **kwargs: other tqdm arguments (e.g. ``initial``).

    Returns:
        A ``tqdm`` object: iterate it, or call ``update``/``close`` on it.

    Example:
        >>> sum(progress_bar(range(3), desc="demo", enabled=False))
        3
    """
    from tqdm.auto import tqdm

    stream = sys.stderr
    interval = TERMINAL_INTERVAL if is_terminal(stream) else FILE_INTERVAL
    # maxinterval bounds how long tqdm's monitor thread lets a bar go unredrawn; above the
    # interval it would redraw a throttled bar anyway.
    kwargs.setdefault("mininterval", interval)
    kwargs.setdefault("maxinterval", max(interval, kwargs["mininterval"]))
    return tqdm(iterable, desc=desc, unit=unit, total=total, disable=not enabled, file=stream,
                **kwargs)

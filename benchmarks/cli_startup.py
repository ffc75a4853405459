"""Start-up time of the `tokenwise` command: `--help` and `--version`, lazy vs eager.

The command loads each sub-command's module only when that sub-command runs. The baseline is
the same group with every sub-command module imported first (what `cli.main` did before the
lazy group: `tokenwise score`'s module alone pulls in torch and transformers). Both are fresh
Python processes, timed in alternation, median of --repeats.

Run:
    .venv/bin/python benchmarks/cli_startup.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

#: The baseline: import every sub-command module, then run the same group.
EAGER = ("import importlib, sys; from tokenwise.cli.main import COMMANDS, main; "
         "[importlib.import_module('tokenwise.cli.' + m) for m, _, _ in COMMANDS.values()]; "
         "sys.argv = ['tokenwise', {arg!r}]; main()")
LAZY = "import sys; from tokenwise.cli.main import main; sys.argv = ['tokenwise', {arg!r}]; main()"


def _run_s(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    _run_s(LAZY.format(arg="--version"))  # warm the file cache for both
    _run_s(EAGER.format(arg="--version"))
    print(f"{'command':<20} {'lazy (ours) s':>14} {'eager s':>9} {'speed-up':>9}")
    for arg in ("--help", "--version"):
        lazy, eager = [], []
        for _ in range(args.repeats):
            lazy.append(_run_s(LAZY.format(arg=arg)))
            eager.append(_run_s(EAGER.format(arg=arg)))
        lz, eg = statistics.median(lazy), statistics.median(eager)
        print(f"tokenwise {arg:<10} {lz:>14.3f} {eg:>9.3f} {eg / lz:>8.1f}x")


if __name__ == "__main__":
    main()

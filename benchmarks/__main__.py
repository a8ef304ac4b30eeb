"""``python -m benchmarks [NAME ...]``: the benchmarks named (default: all), each in a fresh interpreter.

The names come first; the arguments after them (``--smoke``, ``--out FILE``) are passed on to
each. An unknown name is refused (exit status 2) before anything runs. A benchmark whose store
or channel has not been built yet is reported as missing, and the others still run.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from collections.abc import Sequence

from ._common import ROOT, run

BENCHMARKS = (
    "pending_scale",
    "click_to_resume",
    "across_processes",
    "fleet",
    "peers",
    "slack_rate_limit",
    "import_time",
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run the benchmarks named (default: all); other arguments go to each.",
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"one of: {', '.join(BENCHMARKS)}")
    args, arguments = parser.parse_known_args(argv)
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}: the benchmarks are {', '.join(BENCHMARKS)}")
    failed: list[str] = []
    for name in args.names or BENCHMARKS:
        if importlib.util.find_spec(f"benchmarks.{name}") is None:
            print(f"== {name}: not written yet (its store or channel has not landed)\n")
            continue
        completed = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *arguments], cwd=ROOT)
        print()
        if completed.returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    run(main)

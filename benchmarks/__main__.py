"""``python -m benchmarks``: every benchmark in turn, each in a fresh interpreter.

Arguments (``--smoke``) are passed on to each. A benchmark whose store or channel has not
been built yet is reported as missing, and the others still run.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Sequence

from ._common import ROOT, run

BENCHMARKS = (
    "pending_scale",
    "click_to_resume",
    "across_processes",
    "peers",
    "slack_rate_limit",
)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(argv or [])
    failed: list[str] = []
    for name in BENCHMARKS:
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

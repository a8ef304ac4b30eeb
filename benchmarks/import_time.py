"""Benchmark 6: what ``import humanlayer_async`` costs.

Each sample is a fresh interpreter that times one import statement with ``perf_counter``
(interpreter start-up left out, the same for both): the baseline ``import anyio, structlog``
(the two libraries every gated call needs) and ours, ``from humanlayer_async import
HumanLayer``, taken in turns in the same run; the medians are compared. Bytecode is cached
in a temporary directory, warmed once before measuring, as it is after ``pip install``
(``PYTHONDONTWRITEBYTECODE`` would otherwise compile our modules from source every time).
Each sample of ours also lists which channel, store and listener dependencies it loaded:
none should be, and a ``-X importtime`` run names the modules that take the most.

    python -m benchmarks.import_time [--smoke] [--out FILE]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from ._common import ROOT, Report, Row, Target, arguments, median, run

NAME = "import_time"
SAMPLES = 31
SMOKE_SAMPLES = 3
TARGET = 1.5
BASELINE = "import anyio, structlog"
OURS = "from humanlayer_async import HumanLayer"
HEAVY = ("slack_sdk", "slack_bolt", "aiohttp", "aiosmtplib", "uvicorn", "asyncpg", "starlette", "httpx")
TOP = 12

_PROBE = """\
import sys, time
start = time.perf_counter()
{statement}
seconds = time.perf_counter() - start
import json
top = {{name.partition(".")[0] for name in sys.modules}}
print(json.dumps({{"seconds": seconds, "modules": len(sys.modules), "heavy": sorted(top & set({heavy!r}))}}))
"""


def _sample(statement: str, env: dict[str, str]) -> dict[str, Any]:
    """Time ``statement`` in a fresh interpreter; what it loaded."""
    completed = subprocess.run(
        [sys.executable, "-c", _PROBE.format(statement=statement, heavy=HEAVY)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(completed.stdout)
    return result


def _heaviest(env: dict[str, str]) -> list[dict[str, Any]]:
    """``-X importtime`` on ours, after the baseline: the modules with the most self time."""
    completed = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"{BASELINE}\n{OURS}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    rows = []
    for line in completed.stderr.splitlines():
        own, _, rest = line.removeprefix("import time:").partition("|")
        cumulative, _, name = rest.partition("|")
        if own.strip().isdigit():
            rows.append((int(own), int(cumulative), name.strip()))
    # The baseline's modules come first and are already loaded when ours is imported.
    ours = rows[next(i for i, row in enumerate(rows) if row[2] == "structlog") + 1 :]
    return [
        {"module": name, "self_ms": own / 1e3, "cumulative_ms": cumulative / 1e3}
        for own, cumulative, name in sorted(ours, reverse=True)[:TOP]
    ]


def measure(samples: int) -> dict[str, Any]:
    """``samples`` timings each of the baseline and ours, taken in turns."""
    with tempfile.TemporaryDirectory(prefix="hl-import-time-") as cache:
        env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = cache
        for statement in (BASELINE, OURS):  # warm the bytecode cache
            _sample(statement, env)
        baseline, ours = [], []
        for _ in range(samples):
            baseline.append(_sample(BASELINE, env))
            ours.append(_sample(OURS, env))
        heaviest = _heaviest(env)
    return {
        "baseline_ms": [sample["seconds"] * 1e3 for sample in baseline],
        "ours_ms": [sample["seconds"] * 1e3 for sample in ours],
        "baseline_modules": median([sample["modules"] for sample in baseline]),
        "ours_modules": median([sample["modules"] for sample in ours]),
        "heavy_loaded": sorted({name for sample in ours for name in sample["heavy"]}),
        "heaviest_imports": heaviest,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = arguments(NAME, __doc__ or "", argv)
    samples = SMOKE_SAMPLES if args.smoke else SAMPLES
    report = Report(
        NAME,
        f"Import time: `{OURS}` against `{BASELINE}`, {samples} fresh interpreters each",
        args.smoke,
        settings={
            "samples": samples,
            "baseline": BASELINE,
            "ours": OURS,
            "bytecode": "cached in a temporary PYTHONPYCACHEPREFIX, warmed once before measuring",
            "logging": "not configured (importing logs nothing)",
        },
    )
    figures = measure(samples)
    base, ours = median(figures["baseline_ms"]), median(figures["ours_ms"])
    report.rows += [
        Row("import, median", "ms", base, ours, BASELINE),
        Row("import, fastest", "ms", min(figures["baseline_ms"]), min(figures["ours_ms"]), BASELINE),
        Row("modules loaded", "count", figures["baseline_modules"], figures["ours_modules"], BASELINE),
    ]
    heavy = figures["heavy_loaded"]
    report.targets += [
        Target(
            "import_vs_baseline",
            f"at most {TARGET:g}x the time of `{BASELINE}` (medians)",
            f"{ours / base:.2f}x ({ours:.0f} ms against {base:.0f} ms)",
            ours <= TARGET * base,
        ),
        Target(
            "no_heavy_imports",
            f"none of {', '.join(HEAVY)} imported",
            ", ".join(heavy) if heavy else "none imported",
            not heavy,
        ),
    ]
    top = ", ".join(f"{row['module']} {row['self_ms']:.1f}" for row in figures["heaviest_imports"][:5])
    report.notes.append(f"Most self time beyond the baseline (-X importtime, ms): {top}")
    report.extra["figures"] = figures
    report.finish(args.out)
    return 0


if __name__ == "__main__":
    run(main)

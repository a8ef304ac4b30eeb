"""What every benchmark shares: its arguments, the machine, the logging set-up, the table, the JSON."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import structlog
from starlette.types import ASGIApp

from humanlayer_async.listener import Listener

ROOT = Path(__file__).resolve().parent.parent
"""The repository: the working directory of the subprocesses that run ``benchmarks.*``."""
RESULTS = ROOT / "benchmarks" / "results"

LOGGING = (
    "structlog and logging filtered below WARNING (info events dropped before rendering; "
    "loggers cached on first use; warnings to stderr)"
)


def arguments(
    name: str,
    description: str,
    argv: Sequence[str] | None = None,
    extend: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    """``--smoke`` (tiny N, for the smoke test), ``--out`` (where the JSON goes), and ``extend``'s."""
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=description)
    if extend is not None:
        extend(parser)
    parser.add_argument("--smoke", action="store_true", help="tiny N and few repeats: checks it runs")
    parser.add_argument(
        "--out",
        type=Path,
        help=f"the JSON file to write (default: benchmarks/results/{name}.json, "
        f"or {name}.smoke.tmp there with --smoke, which git ignores)",
    )
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = RESULTS / (f"{name}.smoke.tmp" if args.smoke else f"{name}.json")
    return args


def quiet_logging() -> str:
    """Filter structlog and the standard library's logging below WARNING; say so."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),  # stdout is for the table
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=logging.WARNING)
    return LOGGING


def machine() -> dict[str, Any]:
    """The machine a figure came from: cores, CPU model, Python, load when measured."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "system": f"{platform.system()} {platform.release()}",
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def revision() -> dict[str, Any]:
    """The commit measured, and whether the library's files differed from it.

    Outside a git checkout (an exported tree), ``BENCH_REVISION`` names the commit.
    """
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "humanlayer_async"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {"commit": os.environ.get("BENCH_REVISION"), "library_modified": None}
    return {"commit": commit, "library_modified": bool(changed)}


def rss_bytes() -> int | None:
    """The process's resident set size now (Linux), or ``None`` where it cannot be read."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by nearest rank."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


@dataclass
class Row:
    """One line of a table: a quantity for the baseline and for us, and their ratio."""

    metric: str
    unit: str
    baseline: float | None
    ours: float | None
    baseline_name: str
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """ours / baseline: below 1 means we need less (time, memory) than the baseline."""
        if self.baseline is None or self.ours is None or self.baseline == 0:
            return None
        return self.ours / self.baseline

    def as_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "unit": self.unit,
            "baseline_name": self.baseline_name,
            "baseline": self.baseline,
            "ours": self.ours,
            "ratio": self.ratio,
            "note": self.note,
        }


@dataclass
class Target:
    """A goal from the issue, what was measured against it, and whether it was met."""

    name: str
    goal: str
    measured: str
    met: bool

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "goal": self.goal, "measured": self.measured, "met": self.met}


@dataclass
class Report:
    """What a benchmark prints and writes."""

    name: str
    title: str
    smoke: bool
    settings: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "benchmark": self.name,
            "title": self.title,
            "smoke": self.smoke,
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "revision": revision(),
            "settings": self.settings,
            "results": [row.as_dict() for row in self.rows],
            "targets": [target.as_dict() for target in self.targets],
            "notes": self.notes,
            **self.extra,
        }

    def finish(self, out: Path) -> None:
        """Print the table and write the JSON to ``out``."""
        print(render(self))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(self.as_dict(), indent=2) + "\n", encoding="utf-8")
        print(f"wrote {out}")


def number(value: float | None) -> str:
    if value is None:
        return "—"
    if float(value).is_integer() and abs(value) >= 10:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def render(report: Report) -> str:
    """The report as a plain-text table, then its targets and notes."""
    header = ("metric", "unit", "baseline", "baseline value", "ours", "ours/baseline")
    lines: list[tuple[str, ...]] = [header]
    for row in report.rows:
        ratio = row.ratio
        lines.append(
            (
                row.metric,
                row.unit,
                row.baseline_name,
                number(row.baseline),
                number(row.ours),
                "—" if ratio is None else f"{ratio:.3g}x",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = [f"== {report.title}{'  (smoke run: tiny N)' if report.smoke else ''}"]
    for index, line in enumerate(lines):
        out.append("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
        if index == 0:
            out.append("  ".join("-" * width for width in widths))
    for target in report.targets:
        out.append(f"target {'MET' if target.met else 'MISSED'}: {target.goal} — measured {target.measured}")
    out.extend(f"note: {note}" for note in report.notes)
    return "\n".join(out)


def _short(path: str | None) -> str:
    if not path:
        return "?"
    for marker in ("site-packages/", f"{ROOT.as_posix()}/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return Path(path).name


def profile(work: Callable[[], object], top: int = 12) -> dict[str, Any]:
    """Profile ``work()`` with pyinstrument: the functions with the most time, inclusive and self.

    Paths are shortened to the package (never this machine's absolute paths).
    """
    try:
        from pyinstrument import Profiler
    except ImportError:
        return {"skipped": "pyinstrument is not installed (pip install -e '.[bench]')"}
    profiler = Profiler(interval=0.0002, async_mode="disabled")
    profiler.start()
    work()
    session = profiler.stop()
    root = session.root_frame()
    if root is None:
        return {"skipped": "no samples"}
    inclusive: dict[str, float] = {}
    own: dict[str, float] = {}
    stack = [(root, frozenset[str]())]
    while stack:
        frame, above = stack.pop()
        if frame.function.startswith("["):  # pyinstrument's own [self] / [await] frames
            continue
        key = f"{frame.function} ({_short(frame.file_path)})"
        if key not in above:  # recursion counts once
            inclusive[key] = inclusive.get(key, 0.0) + frame.time
        own[key] = own.get(key, 0.0) + frame.total_self_time
        stack.extend((child, above | {key}) for child in frame.children)
    total = root.time or 1.0

    def ranked(times: dict[str, float], keep: Callable[[str], bool]) -> list[dict[str, Any]]:
        chosen = sorted(((t, k) for k, t in times.items() if keep(k)), reverse=True)[:top]
        return [{"function": k, "seconds": round(t, 4), "share": round(t / total, 3)} for t, k in chosen]

    return {
        "tool": "pyinstrument",
        "seconds": round(total, 3),
        "ours_inclusive": ranked(inclusive, lambda key: "humanlayer_async/" in key),
        "self_time": ranked(own, lambda key: True),
    }


@contextlib.asynccontextmanager
async def serving(app: ASGIApp) -> AsyncIterator[str]:
    """Serve ``app`` on a free loopback port with the SDK's own listener; yield its URL."""
    listener = Listener(app, "127.0.0.1", 0)
    async with anyio.create_task_group() as task_group:
        await task_group.start(listener.serve)
        yield listener.url
        task_group.cancel_scope.cancel()


def run(main: Callable[[Sequence[str] | None], int]) -> None:
    """Run a benchmark's ``main`` as a script."""
    sys.exit(main(sys.argv[1:]))

"""The committed results as Markdown tables, for docs/performance.md and README.md.

python -m benchmarks._markdown            # every benchmarks/results/*.json
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from ._common import RESULTS, number


def table(report: dict[str, Any]) -> str:
    """One benchmark's rows, targets and notes as Markdown."""
    lines = [
        f"### {report['title']}",
        "",
        "| metric | unit | baseline | baseline value | ours | ours / baseline |",
        "|---|---|---|---:|---:|---:|",
    ]
    for row in report["results"]:
        ratio = "—" if row["ratio"] is None else f"{row['ratio']:.3g}x"
        lines.append(
            f"| {row['metric']} | {row['unit']} | {row['baseline_name']} | {number(row['baseline'])} "
            f"| {number(row['ours'])} | {ratio} |"
        )
    lines.append("")
    for target in report["targets"]:
        verdict = "**met**" if target["met"] else "**missed**"
        lines.append(f"- Target {verdict}: {target['goal']}: {target['measured']}.")
    for note in report["notes"]:
        lines.append(f"- {note}")
    machine, revision = report["machine"], report.get("revision", {})
    lines.append(
        f"- Measured {report['measured_at']} on {machine['nproc']} × {machine['cpu']}, "
        f"Python {machine['python']}, "
        f"load average {', '.join(f'{v:.2f}' for v in machine['load_average'] or [])}"
        f"{', commit ' + str(revision['commit']) if revision.get('commit') else ''}; "
        f"logging: {report['settings'].get('logging', 'n/a')}."
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    for path in sorted(RESULTS.glob("*.json")):
        print(table(json.loads(path.read_text(encoding="utf-8"))))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

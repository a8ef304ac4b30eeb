"""Every benchmark runs at a tiny N and writes the JSON it promises (values, not speed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
KEYS = {"benchmark", "title", "smoke", "measured_at", "machine", "settings", "results", "targets", "notes"}


async def smoke(name: str, out: Path) -> dict[str, Any]:
    """Run ``python -m benchmarks.<name> --smoke``; return the JSON it wrote, checked for shape."""
    completed = await anyio.run_process(
        [sys.executable, "-m", f"benchmarks.{name}", "--smoke", "--out", str(out)], cwd=ROOT, check=False
    )
    assert completed.returncode == 0, completed.stderr.decode()
    printed = completed.stdout.decode()
    assert "ours/baseline" in printed and f"wrote {out}" in printed
    report: dict[str, Any] = json.loads(await anyio.Path(out).read_text(encoding="utf-8"))
    assert report.keys() >= KEYS
    assert report["benchmark"] == name and report["smoke"] is True
    assert report["machine"]["nproc"] >= 1 and report["machine"]["python"].startswith("3.")
    for row in report["results"]:
        assert {"metric", "unit", "baseline_name", "baseline", "ours", "ratio"} <= row.keys()
        for value in (row["baseline"], row["ours"]):
            assert value is None or value >= 0, row
        if row["baseline"] and row["ours"] is not None:
            assert row["ratio"] == pytest.approx(row["ours"] / row["baseline"])
    for target in report["targets"]:
        assert isinstance(target["met"], bool) and target["goal"] and target["measured"]
    return report


async def test_pending_scale(tmp_path: Path) -> None:
    report = await smoke("pending_scale", tmp_path / "pending.json")
    sizes = report["settings"]["sizes"]
    assert list(map(int, report["per_n"])) == sizes
    for figures in report["per_n"].values():
        for kind in ("baseline", "ours"):
            assert figures[kind]["suspend_us"] > 0 and figures[kind]["resume_us"] > 0
            # Every pending call holds at least its task and its future: hundreds of bytes.
            assert figures[kind]["tracemalloc_bytes"] > 200
        assert figures["ours"]["tracemalloc_bytes"] > figures["baseline"]["tracemalloc_bytes"]
    assert {target["name"] for target in report["targets"]} == {"time_vs_baseline", "memory_per_pending"}
    assert "WARNING" in report["settings"]["logging"]


async def test_peers(tmp_path: Path) -> None:
    report = await smoke("peers", tmp_path / "peers.json")
    polling = report["polling"]
    for path in ("ours_listener_ms", "ours_decide_ms"):
        assert 0 < polling[path]["p50"] <= polling[path]["p99"]
    names = {target["name"] for target in report["targets"]}
    if "skipped" in report["langgraph"]:
        assert any("LangGraph skipped" in note for note in report["notes"])
    else:
        assert {"cpu_vs_langgraph", "memory_vs_langgraph"} <= names
        figures = report["langgraph"]["figures"]
        assert figures["langgraph"]["cpu_total_us"] > 0 and figures["langgraph"]["memory_bytes"] > 0
    if "skipped" in polling.get("humanlayer", {}):
        assert any("HumanLayer 0.7.9 skipped" in note for note in report["notes"])
    else:
        assert "latency_vs_polling" in names
        # A decision waits for the next poll: never less than nothing, never more than one interval.
        assert 0 < polling["humanlayer_ms"]["p50"] <= polling["poll_interval_s"] * 1e3 * 1.5
        assert polling["humanlayer_polls"] >= report["settings"]["polling_calls"]


async def test_all_together_runs_every_script() -> None:
    # `make bench` runs `python -m benchmarks`, which runs the scripts listed there: none forgotten.
    from benchmarks.__main__ import BENCHMARKS

    written = {path.stem for path in (ROOT / "benchmarks").glob("*.py") if not path.stem.startswith("_")}
    assert written and written <= set(BENCHMARKS)

"""Every benchmark runs at a tiny N and writes the JSON it promises (values, not speed)."""

from __future__ import annotations

import json
import os
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


async def test_slack_rate_limit(tmp_path: Path) -> None:
    report = await smoke("slack_rate_limit", tmp_path / "slack.json")
    figures = report["figures"]
    n = report["settings"]["requests"]
    # The stand-in refused some posts with 429, and still every request got through once.
    assert figures["refused_429"] > 0
    assert figures["posted"] == figures["distinct_requests"] == figures["ran"] == n
    assert figures["seconds"] >= figures["lower_bound_seconds"] > 0
    assert [target["met"] for target in report["targets"]] == [True]


async def test_click_to_resume(tmp_path: Path) -> None:
    report = await smoke("click_to_resume", tmp_path / "click.json")
    figures = report["figures"]
    paced = figures["ours"]["paced"]
    assert paced["statuses"] == [200] and paced["resumed"] == report["settings"]["pending"]
    assert 0 < paced["resume_ms"]["p50"] <= paced["resume_ms"]["p99"] <= paced["resume_ms"]["max"]
    for kind in ("ours", "bolt", "starlette"):
        assert figures[kind]["throughput_per_s"] > 0
    for kind in ("bolt", "starlette"):
        assert figures[kind]["paced"]["statuses"] == [200]


def _postgres_reachable() -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


def _need_postgres() -> None:
    if not os.environ.get("HUMANLAYER_TEST_DSN") and not _postgres_reachable():
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL is not reachable at 127.0.0.1:5432 (CI must start it)")
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432 (set HUMANLAYER_TEST_DSN)")


async def test_across_processes(tmp_path: Path) -> None:
    _need_postgres()
    report = await smoke("across_processes", tmp_path / "across.json")
    for key in ("notify_ms", "decision_ms"):
        figures = report["figures"][key]
        assert 0 < figures["p50"] <= figures["p99"] <= figures["max"]
    assert [target["name"] for target in report["targets"]] == ["p99_across_processes"]


async def test_fleet(tmp_path: Path) -> None:
    _need_postgres()
    report = await smoke("fleet", tmp_path / "fleet.json")
    figures = report["figures"]
    settings = report["settings"]
    calls = settings["agent_processes"] * settings["pending_per_process"]
    ours = figures["postgres"]
    # Every call was decided and its tool ran once: the figures are of a run that completed.
    assert ours["tool_runs"] == ours["resumed"] == calls
    for store in ("postgres", "plain_postgres", "sqlite", "plain_sqlite"):
        assert figures[store]["created_per_s"] > 0 and figures[store]["decided_per_s"] > 0
    for key in ("resume_ms", "resume_unpaced_ms"):
        assert ours[key]["p50"] <= ours[key]["p99"] <= ours[key]["max"]
    assert 0 < ours["rss_per_pending_bytes"] < 1 << 20
    assert figures["sqlite"]["tool_runs"] == settings["pending_per_process"]
    names = {target["name"] for target in report["targets"]}
    assert {"resume_p99", "rss_per_pending", "every_call_once", "sqlite_decided_per_s"} <= names


async def test_named_benchmarks_run_alone(tmp_path: Path) -> None:
    out = tmp_path / "slack.json"
    completed = await anyio.run_process(
        [sys.executable, "-m", "benchmarks", "slack_rate_limit", "--smoke", "--out", str(out)],
        cwd=ROOT,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr.decode()
    printed = completed.stdout.decode()
    assert printed.count("wrote ") == 1 and f"wrote {out}" in printed  # that one, and no other
    report = json.loads(await anyio.Path(out).read_text(encoding="utf-8"))
    assert report["benchmark"] == "slack_rate_limit" and report["smoke"] is True


async def test_an_unknown_benchmark_name_lists_the_names() -> None:
    from benchmarks.__main__ import BENCHMARKS

    completed = await anyio.run_process(
        [sys.executable, "-m", "benchmarks", "pending_scale", "pending_scael", "--smoke"],
        cwd=ROOT,
        check=False,
    )
    err = completed.stderr.decode()
    assert completed.returncode == 2 and "unknown benchmark 'pending_scael'" in err
    assert all(name in err for name in BENCHMARKS) and completed.stdout == b""  # nothing ran


async def test_import_time(tmp_path: Path) -> None:
    report = await smoke("import_time", tmp_path / "import.json")
    figures = report["figures"]
    samples = report["settings"]["samples"]
    assert len(figures["baseline_ms"]) == len(figures["ours_ms"]) == samples
    assert all(ms > 0 for ms in figures["baseline_ms"] + figures["ours_ms"])
    # Ours imports anyio and structlog too, so it loads more modules than the baseline.
    assert figures["ours_modules"] > figures["baseline_modules"] > 0
    assert figures["heavy_loaded"] == []
    assert any(row["module"].startswith("humanlayer_async") for row in figures["heaviest_imports"])
    assert {target["name"] for target in report["targets"]} == {"import_vs_baseline", "no_heavy_imports"}

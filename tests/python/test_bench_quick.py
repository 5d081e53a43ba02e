"""bench/run --quick: every measurement runs and yields sane numbers (never a speed threshold)."""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("SHMARROW_BUILD", ROOT / "build"))
BINARY = BUILD / "bench" / "handover_bench"
COUNTER = BUILD / "tests" / "proof" / "libmalloc_counter.so"

pytestmark = pytest.mark.skipif(not os.access(BINARY, os.X_OK) or not COUNTER.exists(),
                                reason=f"{BINARY} or {COUNTER} not built")


def _positive(value):
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _differenced(value, floor):
    """A per-batch figure from the difference of two runs' totals: where nothing happens per batch
    (no allocation, no system call) the runs' fixed costs, which vary a little, can leave it just
    below zero; once per batch makes it at least 1."""
    return isinstance(value, (int, float)) and math.isfinite(value) and value > floor


def test_bench_quick(tmp_path):
    pytest.importorskip("matplotlib")
    env = dict(os.environ, SHMARROW_BUILD=str(BUILD))
    rust = bool(env.get("SHMARROW_RUST_BIN")) or shutil.which("cargo") is not None
    if rust and not env.get("SHMARROW_RUST_BIN"):
        # Built here, with a build's time limit, so that bench/run's own cargo build is a no-op.
        build = subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "shmarrow-rs"],
                               cwd=ROOT / "rust", capture_output=True, text=True, timeout=3600)
        assert build.returncode == 0, build.stderr[-3000:]
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "run"), "--quick", "--out", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "latest.json").read_text())
    assert results["errors"] == []

    transports = {"ring", "sealed", "uds", "devshm", "flight", "inproc"}
    sizes = {1 << 10, 1 << 20, 16 << 20}
    seen = {(r["transport"], r["bytes"]) for r in results["handover"]}
    assert seen == {(t, s) for t in transports for s in sizes}
    for r in results["handover"]:
        assert r["n"] > 0
        for key in ("min", "median", "p99", "max"):
            assert _positive(r[key]), r

    assert results["idle_control"] and all(_positive(r["median"]) for r in results["idle_control"])
    assert _positive(results["idle_control_floor"]["median"])
    assert {(r["transport"], r["bytes"]) for r in results["handover_busy"]} == {
        (t, s) for t in ("ring_busy", "ring_busy_reuse") for s in (min(sizes), max(sizes))} | {
        ("ring_busy_cold", min(sizes))}
    for r in results["handover_busy"]:
        assert r["reps"] == 3, r
        assert r["cold_bytes"] == (max(sizes) if r["transport"] == "ring_busy_cold" else 0), r
        _check_spread(r)
    _check_rust_consumer(results["handover_rust"], sizes, rust)

    e2e = results["e2e"]
    for mode in ("one", "two"):
        assert _positive(e2e[mode]["median"]) and e2e[mode]["n"] > 0
    assert _positive(e2e["ratio"]) and e2e["checks_equal"]

    for t in ("ring", "uds", "spsc", "ring_busy", "uds_busy", "spsc_busy"):
        lat = results["latency"][t]
        assert lat["n"] > 0 and lat["reps"] == 3, (t, lat)
        for k in ("median", "p99", "p999"):
            _check_spread(lat[k])

    _check_syscalls(results)
    _check_small_latency(results)

    assert {(r["consumers"], r["batch_bytes"], r["build"]) for r in results["throughput"]} == {
        (0, 24, "arrays"), (0, 24, "block"), (0, 24, "heap"), (1, 24, "arrays"), (1, 24, "block"),
        (1, 24, "heap"), (4, 24, "arrays"), (1, 24, "uds"), (4, 24, "uds"), (1, 1 << 20, "arrays"), (4, 1 << 20, "arrays"),
        (1, 256, "floor"), (4, 256, "floor")}
    for r in results["throughput"]:
        assert _positive(r["batches_per_s"]) and _positive(r["gb_per_s"])
        assert _positive(r["producer_cpu_us_per_batch"]), r
        if r["build"] == "floor":  # no Arrow batch is built, nothing is copied into a pool
            assert r["producer_build_us_per_batch"] is None and r["bytes_copied"] is None, r
            assert _positive(r["consumer_cpu_us_per_batch"]), r
        else:
            assert _positive(r["producer_build_us_per_batch"]), r
        # Built in the ring: published where it lies; on the heap: each batch's 24 bytes copied.
        if r["build"] in ("arrays", "block"):
            assert r["bytes_copied"] == 0, r
        if r["build"] == "heap":
            assert r["bytes_copied"] == 24 * r["batches"], r
        assert r["reps"] == 3 and r["batches_per_s_min"] <= r["batches_per_s"] <= r["batches_per_s_max"], r
    # Each small-batch goal beside the floor: ring / floor, with the goal over the floor.
    floor_targets = [t for t in results["targets"] if "shmarrow ring / the floor" in t["target"]]
    assert len(floor_targets) == 2 and all(_positive(t["measured"]) for t in floor_targets), floor_targets
    assert "floor: SPSC ring of 256-byte messages, no Arrow" in (tmp_path / "latest.md").read_text()

    assert {h["transport"] for h in results["heap"]} == {"ring", "sealed"}
    floor = results["heap_floor"]
    assert _positive(floor["write_calls_per_batch"]) and _positive(floor["read_calls_per_batch"])
    for h in results["heap"]:
        for key, value in h.items():
            if key.endswith("_per_batch"):
                floor = -1 if key.endswith("_calls_per_batch") else -4096
                assert _differenced(value, floor), (key, value)
            elif key.endswith("_kb"):
                assert _positive(value), (key, value)

    assert results["targets"] and all(isinstance(t["met"], bool) for t in results["targets"])
    table = "### Ring hand-over: the C++ and the Rust consumer"
    assert (table in (tmp_path / "latest.md").read_text()) == rust
    for name in ("latest.md", "handover.png", "latency.png", "small_latency.png", "throughput.png"):
        assert (tmp_path / name).stat().st_size > 0


def _check_spread(r):
    """A figure repeated in interleaved runs: the median and min-max of the runs."""
    assert all(_positive(r[k]) for k in ("min", "median", "max")), r
    assert r["min"] <= r["median"] <= r["max"], r


def _check_syscalls(results):
    """System calls per batch for each side of every route; unmeasured only without strace."""
    if shutil.which("strace") is None:  # scripts/bootstrap.sh installs it
        assert "strace is not installed" in results["syscalls"]["unavailable"]
        return
    calls = {r["route"]: r for r in results["syscalls"]["rows"]}
    assert set(calls) == {"ring", "ring_busy", "ring_throughput", "ring_behind", "uds", "uds_busy", "spsc",
                          "spsc_busy"}
    for route, r in calls.items():
        assert _differenced(r["producer_per_batch"], -1), r
        # The socket consumer that busy-polls makes a system call per spin, as many as time allows
        # whether batches come or not: differenced over two run lengths, its count is noise.
        assert _differenced(r["consumer_per_batch"], -math.inf if route == "uds_busy" else -1), r
    # Arrow's socket stream makes a system call per batch on each side at the least.
    assert calls["uds"]["producer_per_batch"] >= 1 and calls["uds"]["consumer_per_batch"] >= 1


def _check_rust_consumer(measured, sizes, rust):
    """The C++ and the Rust consumer, blocking and busy-polling, every size, three interleaved
    repetitions each; skipped, saying why, only without cargo and $SHMARROW_RUST_BIN."""
    if not rust:
        assert "cargo is not installed" in measured["skipped"], measured
        return
    assert "skipped" not in measured, measured
    consumers = ("ring", "ring_rust", "ring_busy", "ring_rust_busy")
    assert {(r["transport"], r["bytes"]) for r in measured["rows"]} == {(t, s) for t in consumers for s in sizes}
    for r in measured["rows"]:
        assert r["reps"] == measured["reps"] == 3, r
        assert all(_positive(r[k]) for k in ("min", "median", "max")), r
        assert r["min"] <= r["median"] <= r["max"], r


def _iceoryx2_imports():
    try:
        import iceoryx2  # noqa: F401
    except ImportError:
        return False
    return True


def _check_small_latency(results):
    """bench/small_latency.py: every route measured (iceoryx2 skipped only when it cannot import),
    ordered percentiles, and the ratio against iceoryx2 in the targets."""
    measured = results["small_latency"]["measurements"]
    assert set(measured) == {"iceoryx2", "ring-busy", "ring-blocking", "uds-busy", "uds-blocking",
                             "ring-throughput", "uds-throughput"}
    have_iceoryx2 = _iceoryx2_imports()
    for name, m in measured.items():
        if name == "iceoryx2" and not have_iceoryx2:
            assert m["skipped"], m
            continue
        assert m["reps"] == 3, (name, m)
        if name.endswith("-throughput"):
            assert m["batches"] > 0, (name, m)
            _check_spread(m["batches_per_s"])
            continue
        assert m["n"] > 0 and _positive(m["max"]), (name, m)
        for k in ("median", "p99", "p999"):
            _check_spread(m[k])
        assert m["median"]["median"] <= m["p99"]["max"] and m["p999"]["max"] <= m["max"], (name, m)
    ratio = [t for t in results["targets"] if "shmarrow ring / iceoryx2" in t["target"]]
    assert len(ratio) == (1 if have_iceoryx2 else 0)
    assert all(_positive(t["measured"]) for t in ratio)
    assert [t for t in results["targets"] if "Python publish/iterate" in t["target"]]


def test_small_latency_reports_iceoryx2_skipped_when_it_does_not_import():
    script = ROOT / "bench" / "small_latency.py"
    code = ("import runpy, sys; sys.modules['iceoryx2'] = None; "
            f"sys.argv = [{str(script)!r}, '--quick', '--only', 'iceoryx2']; "
            f"runpy.run_path({str(script)!r}, run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    m = json.loads(out.stdout)["measurements"]["iceoryx2"]
    assert "iceoryx2 does not import" in m["skipped"] and "median" not in m

"""bench/compare --quick: HEAD against itself builds, measures every row and gives each a verdict.

It builds the commit (in a temporary directory; ccache, when installed, keeps that cheap), so it
needs git, cmake and a C++ compiler; without them it skips. The verdicts of a quick run mean little: it asserts that each row
was measured and judged by the stated rule, never a speed.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPARE = ROOT / "bench" / "compare"

MISSING = [tool for tool in ("git", "cmake", "c++") if shutil.which(tool) is None]
pytestmark = [
    pytest.mark.skipif(bool(MISSING), reason=f"bench/compare builds commits: no {', '.join(MISSING)}"),
    pytest.mark.skipif(not (ROOT / ".git").exists(), reason="bench/compare needs a git checkout"),
]

ROWS = [
    "small-batch latency ring, blocking",
    "small-batch latency ring, busy-polling",
    "throughput small batches, 1 consumer (per batch)",
    "throughput small batches, 4 consumers (per batch)",
    *(f"hand-over {t} {size}" for t in ("ring", "sealed") for size in ("1 KiB", "1 MiB", "64 MiB")),
]
# name, BASE median [min-max], HEAD median [min-max], ratio, verdict
ROW = re.compile(r"^(?P<name>.+?)\s+(?P<base>\S+ \S+ \[\S+ \S+-\S+ \S+\])\s+(?P<head>\S+ \S+ \[\S+ \S+-\S+ \S+\])"
                 r"\s+(?P<ratio>\d+\.\d+)\s+(?P<verdict>within noise|HEAD slower|HEAD faster)$")


def test_compare_head_with_itself_quick(tmp_path):
    out = subprocess.run([sys.executable, str(COMPARE), "--quick", "--work", str(tmp_path), "HEAD", "HEAD"],
                         capture_output=True, text=True, timeout=3600, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = out.stdout.splitlines()
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert lines[0].startswith(f"BASE {head[:12]} ") and lines[1].startswith(f"HEAD {head[:12]} ")
    assert "2 interleaved repetitions (--quick)" in lines[2]
    rows = {}
    for line in lines:
        match = ROW.match(line)
        if match:
            rows[match["name"]] = match
    assert sorted(rows) == sorted(ROWS), out.stdout
    for match in rows.values():
        ratio = float(match["ratio"])
        assert ratio > 0
        if match["verdict"] != "within noise":  # only ranges apart and beyond the tolerance
            assert abs(ratio - 1) > 0.05, match.group(0)
    assert lines[-1].startswith("verdict: within noise when the min-max ranges overlap")
    # One build served both sides (the same commit).
    assert [p.name for p in tmp_path.iterdir()] == [head]
    assert (tmp_path / head / "built").read_text().strip() == head
    assert os.access(tmp_path / head / "build" / "bench" / "handover_bench", os.X_OK)

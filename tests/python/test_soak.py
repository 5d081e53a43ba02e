"""Soak: one ring-mode `shmarrow send` streams many small batches to three `shmarrow recv`.

Every consumer must receive exactly what was published: the same batch and row counts and the same
per-column checksums, which weigh each value by its row number over the whole stream, so a lost,
duplicated or reordered batch changes them. While the stream runs, the fd count and RSS of all four
processes are sampled: fd counts must not change at all, RSS must not keep growing.

SHMARROW_SOAK_BATCHES sets the length (default 100000, the CI form). The long form, with figures:
    .venv/bin/python tests/python/test_soak.py --batches 10000000 [--build build-robust]
docs/robustness.md, "Soak".
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONSUMERS = 3
ROWS = 16
SCHEMA = "seq:int64,s:utf8"
WAIT_MS = 20000
RING_KIB = 4096  # small, so that the stream wraps the ring many times
# After the ring, the memfd holds the consumers' queues (one slot each for up to 64 consumers of
# 64 credits: 168 KiB; docs/protocol.md, "The queue") and the producer's wait block (protocol 1.3:
# 64 bytes, here one more page).
QUEUES_KIB = 168 + 4
# Each consumer's region (protocol 1.3): one page, mapped by it and by the producer.
REGION_KIB = 4
# Private RSS may settle (allocator caches) but not grow with the stream: the last quarter's peak
# may exceed the first quarter's by at most this much.
RSS_GROWTH_LIMIT_KIB = 8 * 1024


def _rss_kib(pid: int) -> tuple:
    """(RssAnon, RssShmem) of a process: private memory, where a leak would show, and the pages of
    the ring it has touched (they grow until the whole ring has been used once)."""
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            fields[key] = value
    return int(fields["RssAnon"].split()[0]), int(fields["RssShmem"].split()[0])


def _fds(pid: int) -> list:
    fd_dir = f"/proc/{pid}/fd"
    return [os.readlink(f"{fd_dir}/{name}") for name in os.listdir(fd_dir)]


def _maps_ring(pid: int) -> bool:
    with open(f"/proc/{pid}/maps") as maps:
        return "/memfd:" in maps.read()


def soak(shmarrow: Path, socket_path: str, batches: int, interval_s: float) -> dict:
    """Runs the stream; returns the summaries of producer and consumers and the samples taken
    (each {"t": seconds, "anon_kib": [...], "shmem_kib": [...], "fds": [...]}, producer
    first)."""
    producer = subprocess.Popen(
        [str(shmarrow), "send", "--mode", "ring", "--socket", socket_path, "--batches",
         str(batches), "--rows", str(ROWS), "--ring-size", f"{RING_KIB}KiB", "--schema", SCHEMA,
         "--seed", "7",
         "--wait-consumers", str(CONSUMERS), "--accept-timeout-ms", str(WAIT_MS), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    consumers = [subprocess.Popen(
        [str(shmarrow), "recv", "--socket", socket_path, "--connect-timeout-ms", str(WAIT_MS),
         "--read-timeout-ms", str(WAIT_MS), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(CONSUMERS)]
    procs = [producer, *consumers]
    samples = []
    try:
        start = time.monotonic()
        # Sample from the moment every consumer has mapped the ring (its handshake is done).
        while not all(_maps_ring(c.pid) for c in consumers):
            if any(p.poll() is not None for p in procs) or time.monotonic() - start > 60:
                raise RuntimeError("the consumers did not all connect")
            time.sleep(0.01)
        start = time.monotonic()
        while all(p.poll() is None for p in procs):
            try:
                rss = [_rss_kib(p.pid) for p in procs]
                samples.append({"t": round(time.monotonic() - start, 2),
                                "anon_kib": [anon for anon, _ in rss],
                                "shmem_kib": [shmem for _, shmem in rss],
                                "fds": [len(_fds(p.pid)) for p in procs]})
            except (FileNotFoundError, ProcessLookupError, RuntimeError, KeyError):
                break  # one just ended (a zombie's status has no RssAnon)
            time.sleep(interval_s)
        elapsed = time.monotonic() - start
        del samples[-1:]  # it may have caught a process closing its fds as it exits
        results = [p.communicate(timeout=WAIT_MS / 1000 * 3) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, (out, err) in zip(procs, results):
        if p.returncode != 0:
            raise AssertionError(f"{p.args[1]} exited with {p.returncode}: {err}")
    summaries = [json.loads(out) for out, _ in results]
    return {"producer": summaries[0], "consumers": summaries[1:], "samples": samples,
            "seconds": elapsed}


def check(result: dict, batches: int) -> None:
    producer = result["producer"]
    assert producer["producer"]["published"] == batches
    assert producer["producer"]["dropped"] == 0
    for consumer in result["consumers"]:
        assert consumer["mode"] == "ring"
        assert consumer["dropped"] == 0
        assert consumer["batches"] == batches
        assert consumer["rows"] == batches * ROWS
        assert consumer["columns"] == producer["columns"]
    samples = result["samples"]
    assert len(samples) >= 4, f"only {len(samples)} samples: the stream was too short to judge"
    for sample in samples:
        assert sample["fds"] == samples[0]["fds"], f"fd counts changed: {samples[0]} -> {sample}"
    quarter = len(samples) // 4
    for i in range(1 + CONSUMERS):
        first = max(s["anon_kib"][i] for s in samples[:quarter])
        last = max(s["anon_kib"][i] for s in samples[-quarter:])
        assert last - first <= RSS_GROWTH_LIMIT_KIB, \
            f"process {i} private RSS grew from {first} KiB to {last} KiB"
        shmem = max(s["shmem_kib"][i] for s in samples)
        regions_kib = REGION_KIB * (CONSUMERS if i == 0 else 1)
        assert shmem <= RING_KIB + QUEUES_KIB + regions_kib, \
            f"process {i} maps {shmem} KiB of shared memory"


def test_soak_ring_three_consumers(shmarrow_bin, sock_path):
    batches = int(os.environ.get("SHMARROW_SOAK_BATCHES", "100000"))
    result = soak(shmarrow_bin, sock_path, batches, interval_s=0.02)  # many samples, even if fast
    check(result, batches)


def main() -> None:
    repo = Path(__file__).resolve().parents[2]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=10_000_000)
    parser.add_argument("--build", default=str(repo / "build"))
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="soak", dir="/tmp") as tmp:
        result = soak(Path(args.build) / "shmarrow", f"{tmp}/soak.sock", args.batches,
                      args.interval)
    print(json.dumps({"batches": args.batches, "rows_per_batch": ROWS,
                      "seconds": round(result["seconds"], 1),
                      "batches_per_s": round(args.batches / result["seconds"]),
                      "columns": result["producer"]["columns"]}))
    for sample in result["samples"]:
        print(json.dumps(sample))
    check(result, args.batches)
    print("soak: passed")


if __name__ == "__main__":
    sys.exit(main())

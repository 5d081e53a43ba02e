"""Throughput of the Flight bridge over loopback, beside pyarrow's own Flight server serving the same
table from memory and the local shared-memory path. Prints one JSON object.

  flight_bridge.py [--quick] [--runs N]

Every route moves the same batches (int64 columns) to a pyarrow reader in this process:
  bridge          a shmarrow.Producer (child process) -> `shmarrow flight-serve` -> pyarrow.flight
                  client: do_get(Ticket(b"stream")), every batch read
  pyarrow_flight  a pyarrow.flight server (child process) serving the table from memory -> the
                  same client code
  shm_local       the same producer -> shmarrow.Consumer in this process (no network)
A run is timed from the call that starts the stream to the last batch in hand; the producer is
already listening, its batches already built on the heap (Producer.publish copies them into the
ring once; pyarrow's server sends them as they are).

Ingest, the other way: a pyarrow.flight client in this process writes the same batches with
do_put to
  ingest_bridge          `shmarrow flight-serve --ingest --wait-consumers 1` (its ring producer
                         publishing each batch, validated, to a shmarrow.Consumer child process)
  ingest_pyarrow_flight  the pyarrow.flight server child, whose do_put reads every batch
timed from do_put to the writer's close() returning, i.e. until the server took the last batch
(the bridge: published it; its consumer then reads the rest, which is checked afterwards).

All routes run interleaved, once each per run. Figures are the median of the runs with their
min and max; GB/s = table bytes / median seconds / 1e9. The CLI comes from $SHMARROW_BUILD
(default build/).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLUMNS = 4
TIMEOUT = 120


def make_batches(count: int, nbytes: int) -> list[pa.RecordBatch]:
    rows = max(1, nbytes // (8 * COLUMNS))
    return [pa.record_batch({f"c{c}": pa.array(np.arange(rows, dtype=np.int64) + i * c)
                             for c in range(COLUMNS)}) for i in range(count)]


def producer_child(address: str, count: int, nbytes: int) -> None:
    """Listens, says "ready", publishes to the first consumer, ends, waits for the drain."""
    import shmarrow
    batches = make_batches(count, nbytes)
    producer = shmarrow.Producer(address, batches[0].schema,
                                 ring_size=max(64 << 20, 8 * nbytes), max_in_flight=8)
    print("ready", flush=True)
    producer.wait_for_consumers(1, timeout=TIMEOUT)
    for batch in batches:
        producer.publish(batch)
    producer.end()
    producer.wait_until_drained(timeout=TIMEOUT)
    producer.close()


def flight_server_child(count: int, nbytes: int) -> None:
    batches = make_batches(count, nbytes)

    class Server(flight.FlightServerBase):
        def do_get(self, context, ticket):
            return flight.RecordBatchStream(pa.Table.from_batches(batches))

        def do_put(self, context, descriptor, reader, writer):
            for chunk in reader:
                chunk.data.num_rows  # every batch received, as the bridge takes each one

    server = Server("grpc://127.0.0.1:0")
    print(server.port, flush=True)
    server.serve()


# Every call has a deadline: a failed peer (a consumer child that died, a bridge waiting for it)
# fails the run instead of hanging it.
CALL = flight.FlightCallOptions(timeout=TIMEOUT)


def child(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)


def read_flight(location: str) -> int:
    reader = flight.connect(location).do_get(flight.Ticket(b"stream"), CALL)
    got = 0
    for chunk in reader:
        got += chunk.data.num_rows
    return got


def read_local(address: str) -> int:
    import shmarrow
    got = 0
    with shmarrow.Consumer(address, read_timeout=TIMEOUT) as consumer:
        for batch in consumer:
            got += batch.num_rows
    return got


def consumer_child(address: str) -> None:
    """Reads the stream at `address` (waiting for its producer) and prints the rows it got."""
    import shmarrow
    got = 0
    with shmarrow.Consumer(address, connect_timeout=TIMEOUT, read_timeout=TIMEOUT) as consumer:
        for batch in consumer:
            got += batch.num_rows
    print(got, flush=True)


def write_flight(location: str, schema: pa.Schema, batches: list[pa.RecordBatch]) -> float:
    """DoPut of `batches`; seconds until the server has taken the last one."""
    t0 = time.perf_counter()
    writer, _ = flight.connect(location).do_put(flight.FlightDescriptor.for_path("stream"),
                                                schema, CALL)
    for batch in batches:
        writer.write_batch(batch)
    writer.close()
    return time.perf_counter() - t0


def timed_ingest(cli: str, address: str, batches: list[pa.RecordBatch]) -> tuple[float, int]:
    """A fresh ingest bridge and a local consumer; DoPut into it, then end the stream."""
    bridge = subprocess.Popen([cli, "flight-serve", "--socket", address, "--ingest",
                               "--wait-consumers", "1", "--max-in-flight", "8",
                               "--ring-size", str(max(64 << 20, 8 * batches[0].nbytes))],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    consumer = child(["consumer", address])
    try:
        location = bridge.stdout.readline().strip()
        # Untimed: a DoPut without batches creates the producer and waits for the consumer.
        write_flight(location, batches[0].schema, [])
        seconds = write_flight(location, batches[0].schema, batches)
        bridge.send_signal(signal.SIGTERM)  # ends the stream once the consumer took the rest
        rows = int(consumer.stdout.readline())
        bridge.wait(timeout=TIMEOUT)
    finally:
        for proc in (bridge, consumer):
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    return seconds, rows


def timed_with_producer(address: str, count: int, nbytes: int, read) -> tuple[float, int]:
    proc = child(["producer", address, str(count), str(nbytes)])
    try:
        assert proc.stdout.readline().strip() == "ready"
        t0 = time.perf_counter()
        rows = read()
        seconds = time.perf_counter() - t0
        proc.wait(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return seconds, rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "producer":
        producer_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "consumer":
        consumer_child(sys.argv[2])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "flight-server":
        flight_server_child(int(sys.argv[2]), int(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--runs", type=int, default=0)
    args = ap.parse_args()
    count, nbytes = (16, 1 << 20) if args.quick else (64, 4 << 20)
    runs = args.runs or (3 if args.quick else 7)
    build = os.path.abspath(os.environ.get("SHMARROW_BUILD", os.path.join(ROOT, "build")))
    cli = os.path.join(build, "shmarrow")
    batches = make_batches(count, nbytes)
    expect_rows = sum(b.num_rows for b in batches)
    table_bytes = sum(b.nbytes for b in batches)

    samples: dict[str, list[float]] = {"bridge": [], "pyarrow_flight": [], "shm_local": [],
                                       "ingest_bridge": [], "ingest_pyarrow_flight": []}
    with tempfile.TemporaryDirectory(prefix="shmarrow-flight-bench-") as tmp:
        address = os.path.join(tmp, "producer.sock")
        bridge = subprocess.Popen([cli, "flight-serve", "--socket", address, "--validate", "basic"],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        server = child(["flight-server", str(count), str(nbytes)])
        try:
            location = bridge.stdout.readline().strip()
            server_location = f"grpc://127.0.0.1:{server.stdout.readline().strip()}"
            for _ in range(runs):
                seconds, rows = timed_with_producer(address, count, nbytes,
                                                    lambda: read_flight(location))
                assert rows == expect_rows, (rows, expect_rows)
                samples["bridge"].append(seconds)
                t0 = time.perf_counter()
                assert read_flight(server_location) == expect_rows
                samples["pyarrow_flight"].append(time.perf_counter() - t0)
                seconds, rows = timed_with_producer(address, count, nbytes,
                                                    lambda: read_local(address))
                assert rows == expect_rows
                samples["shm_local"].append(seconds)
                seconds, rows = timed_ingest(cli, os.path.join(tmp, "ingest.sock"), batches)
                assert rows == expect_rows, (rows, expect_rows)
                samples["ingest_bridge"].append(seconds)
                samples["ingest_pyarrow_flight"].append(
                    write_flight(server_location, batches[0].schema, batches))
        finally:
            for proc in (bridge, server):
                proc.send_signal(signal.SIGTERM if proc is bridge else signal.SIGKILL)
                proc.wait(timeout=TIMEOUT)

    result = {"batches": count, "batch_bytes": nbytes, "table_bytes": table_bytes, "runs": runs,
              "routes": {}}
    for route, seconds in samples.items():
        median = statistics.median(seconds)
        result["routes"][route] = {"median_s": median, "min_s": min(seconds),
                                   "max_s": max(seconds), "gbps": table_bytes / median / 1e9,
                                   "samples_s": seconds}
    routes = result["routes"]
    result["bridge_vs_pyarrow_flight"] = routes["bridge"]["gbps"] / routes["pyarrow_flight"]["gbps"]
    result["ingest_bridge_vs_pyarrow_flight"] = (routes["ingest_bridge"]["gbps"] /
                                                 routes["ingest_pyarrow_flight"]["gbps"])
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""The pyarrow routes of bench/run: an Arrow IPC file in /dev/shm read with pyarrow.memory_map, and
Arrow Flight DoGet over loopback. Each runs its other end in a child process (this file, with a
role) and prints one JSON line {"samples_ns": [...]} per size. Times are time.monotonic_ns()
(CLOCK_MONOTONIC, the clock of the C++ bench), so producer and consumer stamps compare.

  py_transports.py devshm  BYTES ITERS WARMUP     (producer; spawns the devshm-consumer)
  py_transports.py flight  BYTES ITERS WARMUP     (client; spawns the flight-server)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa


def make_batch(nbytes: int) -> pa.RecordBatch:
    rows = max(1, nbytes // 8)
    return pa.record_batch({"c0": pa.array(np.arange(rows, dtype=np.int64))})


def devshm_producer(nbytes: int, iters: int, warmup: int) -> None:
    path = f"/dev/shm/shmarrow-bench-{os.getpid()}.arrow"
    batch = make_batch(nbytes)
    child = subprocess.Popen([sys.executable, __file__, "devshm-consumer", path],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
    samples = []
    try:
        for i in range(iters + warmup):
            t0 = time.monotonic_ns()
            # The write is counted: the file is what the consumer maps.
            with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, batch.schema) as writer:
                writer.write_batch(batch)
            child.stdin.write(f"{t0}\n")
            child.stdin.flush()
            dt = int(child.stdout.readline())
            if i >= warmup:
                samples.append(dt)
        child.stdin.close()
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
        if os.path.exists(path):
            os.unlink(path)
    print(json.dumps({"samples_ns": samples}))


def devshm_consumer(path: str) -> None:
    for line in sys.stdin:
        t0 = int(line)
        with pa.memory_map(path, "r") as source:
            batch = pa.ipc.open_file(source).get_batch(0)
            batch.column(0)  # a readable batch in hand (its buffers are the mapping)
            t1 = time.monotonic_ns()
            del batch
        sys.stdout.write(f"{t1 - t0}\n")
        sys.stdout.flush()


def flight_client(nbytes: int, iters: int, warmup: int) -> None:
    import pyarrow.flight as fl

    server = subprocess.Popen([sys.executable, __file__, "flight-server", str(nbytes)],
                              stdout=subprocess.PIPE, text=True)
    samples = []
    try:
        port = int(server.stdout.readline())
        client = fl.connect(f"grpc://127.0.0.1:{port}")
        ticket = fl.Ticket(b"batch")
        for i in range(iters + warmup):
            t0 = time.monotonic_ns()
            reader = client.do_get(ticket)
            batch = reader.read_chunk().data
            t1 = time.monotonic_ns()
            assert batch.num_rows == max(1, nbytes // 8)
            reader.read_all()  # end of stream
            del batch, reader
            if i >= warmup:
                samples.append(t1 - t0)
        client.close()
    finally:
        server.kill()
        server.wait()
    print(json.dumps({"samples_ns": samples}))


def flight_server(nbytes: int) -> None:
    import pyarrow.flight as fl

    batch = make_batch(nbytes)

    class Server(fl.FlightServerBase):
        def do_get(self, context, ticket):
            return fl.RecordBatchStream(pa.Table.from_batches([batch]))

    server = Server("grpc://127.0.0.1:0")
    print(server.port, flush=True)
    server.serve()


if __name__ == "__main__":
    role = sys.argv[1]
    if role == "devshm":
        devshm_producer(*map(int, sys.argv[2:5]))
    elif role == "devshm-consumer":
        devshm_consumer(sys.argv[2])
    elif role == "flight":
        flight_client(*map(int, sys.argv[2:5]))
    elif role == "flight-server":
        flight_server(int(sys.argv[2]))
    else:
        sys.exit(f"unknown role {role}")

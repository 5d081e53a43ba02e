#!/usr/bin/env python3
"""One-way latency of small messages between two Python processes: iceoryx2 publish-subscribe,
shmarrow ring mode and an Arrow IPC stream over a UNIX socket, each receiver busy-polling (and,
for shmarrow and the socket, blocking too); and the unpaced throughput of the same batches through
shmarrow (publish / iterate) and the socket (write_batch / read_next_batch).

  small_latency.py [--quick] [--samples N] [--warmup N] [--only NAME,...]

Prints one JSON object (one line): per latency measurement the one-way latency summary in ns (n,
min, median, p99, p999, max), per throughput measurement batches and batches_per_s (from just
before the first send to the receiver holding the last batch), or "skipped"/"error" with the
reason; versions and the machine. Every process runs with OPENBLAS_NUM_THREADS=1 (unless set). Exits 1 when a measurement failed (its error also goes to
stderr).

Every route sends the same row (t int64, id int64, value float64) from a value built once and
updated in place, with one call that copies it into the transport: iceoryx2 `send_copy` of a
ctypes struct (loan, copy, send), shmarrow `Producer.publish` of a pyarrow RecordBatch over numpy
buffers (copied into the ring, metadata written, consumer notified), and pyarrow's IPC stream
writer's `write_batch` plus one flush.

The sender is this process; the receiver a child process (this file, with --recv). The sender
writes time.monotonic_ns() (CLOCK_MONOTONIC, one clock for every process of the host) into the
message just before the call that sends it; the receiver subtracts it from time.monotonic_ns()
taken as soon as the receiving call hands it the message. Paced: after recording a sample and
letting the message go, the receiver writes one byte to a pipe, and the sender sleeps in a read of
that pipe before sending the next message; so every sample is one message into an idle, polling
receiver, and the acknowledgement is outside the timed path of both ends. The garbage collector
is off in both processes while measuring (the same for every route). A route whose library does
not import is reported as skipped.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import select
import socket
import subprocess
import sys
import time

# numpy's OpenBLAS starts threads that take CPU from the processes measured (a tenth of the samples
# of a profile); no route uses BLAS. Set before numpy loads, for every route alike (the receiving
# processes inherit it).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import pyarrow as pa

SCHEMA = pa.schema([("t", pa.int64()), ("id", pa.int64()), ("value", pa.float64())])

# name: (label, receiver polling)
MEASUREMENTS = {
    "iceoryx2": ("iceoryx2 publish-subscribe, 24-byte struct, subscriber busy-polling receive()", "busy"),
    "ring-busy": ("shmarrow ring, 1-row RecordBatch, consumer busy-polling try_next()", "busy"),
    "ring-blocking": ("shmarrow ring, 1-row RecordBatch, consumer blocking in read_next_batch()",
                      "blocking"),
    "uds-busy": ("Arrow IPC stream over a UNIX socket, reader after busy-polling the socket", "busy"),
    "uds-blocking": ("Arrow IPC stream over a UNIX socket, reader blocking in read_next_batch()",
                     "blocking"),
    # Unpaced: batches/s from the first publish to the last batch read, not latency.
    "ring-throughput": ("shmarrow ring, 1-row RecordBatch, publish / iterate unpaced", "blocking"),
    "uds-throughput": ("Arrow IPC stream over a UNIX socket, write_batch / read_next_batch unpaced",
                       "blocking"),
}
THROUGHPUT = ("ring-throughput", "uds-throughput")
ACK_TIMEOUT_MS = 20000


class Payload(ctypes.Structure):
    """The iceoryx2 message: the three values of the batch's row."""
    _fields_ = [("t", ctypes.c_int64), ("id", ctypes.c_int64), ("value", ctypes.c_double)]


class StampedBatch:
    """A 1-row batch (t int64, id int64, value float64) whose buffers are numpy arrays, so the
    stamp is written into the batch itself without building a new one."""

    def __init__(self):
        self.t = np.zeros(1, np.int64)
        self.id = np.zeros(1, np.int64)
        self.value = np.zeros(1, np.float64)
        columns = [pa.Array.from_buffers(field.type, 1, [None, pa.py_buffer(arr)])
                   for field, arr in zip(SCHEMA, (self.t, self.id, self.value))]
        self.batch = pa.RecordBatch.from_arrays(columns, schema=SCHEMA)


def row_of(batch: pa.RecordBatch) -> tuple[int, int]:
    return batch.column(0)[0].as_py(), batch.column(1)[0].as_py()


# ---- sender side ------------------------------------------------------------------------------

class Receiver:
    """The child process receiving one route's messages, and its acknowledgement pipe."""

    def __init__(self, name: str, count: int, address: str, extra_fds: tuple[int, ...] = ()):
        ack_r, ack_w = os.pipe()
        cmd = [sys.executable, os.path.abspath(__file__), "--recv", name, "--count", str(count),
               "--address", address, "--ack-fd", str(ack_w)]
        self.child = subprocess.Popen(cmd, pass_fds=(ack_w,) + extra_fds, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
        os.close(ack_w)
        self.ack = ack_r
        self.poller = select.poll()
        self.poller.register(ack_r, select.POLLIN)

    def wait_ack(self) -> None:
        if not self.poller.poll(ACK_TIMEOUT_MS) or os.read(self.ack, 1) == b"":
            raise RuntimeError(f"no acknowledgement from the receiver: {self._stderr()}")

    def result(self) -> list[int]:
        out, err = self.child.communicate(timeout=60)
        if self.child.returncode != 0:
            raise RuntimeError(f"receiver exited {self.child.returncode}: {err.strip()[-800:]}")
        return json.loads(out)["samples_ns"]

    def _stderr(self) -> str:
        self.child.kill()
        return self.child.communicate()[1].strip()[-800:]

    def close(self) -> None:
        os.close(self.ack)
        if self.child.poll() is None:
            self.child.kill()
            self.child.wait()


def send_iceoryx2(count: int) -> list[int]:
    import iceoryx2 as iox2

    iox2.set_log_level(iox2.LogLevel.Warn)
    service_name = f"shmarrow-bench/small-latency/{os.getpid()}"
    node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
    service = node.service_builder(iox2.ServiceName.new(service_name)) \
        .publish_subscribe(Payload).open_or_create()
    publisher = service.publisher_builder().create()
    receiver = Receiver("iceoryx2", count, service_name)
    try:
        receiver.wait_ack()  # the subscriber exists
        message = Payload(0, 0, 0.5)
        for i in range(count):
            message.id = i
            message.t = time.monotonic_ns()
            publisher.send_copy(message)
            receiver.wait_ack()
        return receiver.result()
    finally:
        receiver.close()


def send_ring(name: str, count: int) -> list[int]:
    import shmarrow

    address = f"@shmarrow-bench-small-latency-{os.getpid()}"
    stamped = StampedBatch()
    with shmarrow.Producer(address, SCHEMA, mode="ring", ring_size=1 << 20) as producer:
        receiver = Receiver(name, count, address)
        try:
            producer.wait_for_consumers(1, timeout=ACK_TIMEOUT_MS / 1000)
            receiver.wait_ack()
            paced = name not in THROUGHPUT
            start = time.monotonic_ns()
            for i in range(count):
                stamped.id[0] = i
                stamped.t[0] = time.monotonic_ns()
                producer.publish(stamped.batch)
                if paced:
                    receiver.wait_ack()
            producer.end()
            return receiver.result() if paced else [start] + receiver.result()
        finally:
            receiver.close()


def send_uds(name: str, count: int) -> list[int]:
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    stamped = StampedBatch()
    try:
        receiver = Receiver(name, count, str(theirs.fileno()), extra_fds=(theirs.fileno(),))
        theirs.close()
        try:
            receiver.wait_ack()
            paced = name not in THROUGHPUT
            sink = mine.makefile("wb")
            start = time.monotonic_ns()
            with pa.ipc.new_stream(sink, SCHEMA) as writer:
                for i in range(count):
                    stamped.id[0] = i
                    stamped.t[0] = time.monotonic_ns()
                    writer.write_batch(stamped.batch)
                    sink.flush()  # one send() per batch
                    if paced:
                        receiver.wait_ack()
            return receiver.result() if paced else [start] + receiver.result()
        finally:
            receiver.close()
    finally:
        mine.close()


# ---- receiver side (the child process) -----------------------------------------------------------

def recv_iceoryx2(address: str, count: int, ack: int) -> list[int]:
    import iceoryx2 as iox2

    iox2.set_log_level(iox2.LogLevel.Warn)
    node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
    service = node.service_builder(iox2.ServiceName.new(address)) \
        .publish_subscribe(Payload).open_or_create()
    subscriber = service.subscriber_builder().create()
    os.write(ack, b"r")
    samples = []
    for i in range(count):
        while (sample := subscriber.receive()) is None:
            pass
        t1 = time.monotonic_ns()
        row = sample.payload().contents
        check(i, row.id)
        samples.append(t1 - row.t)
        del row, sample  # the sample goes back to the publisher before the acknowledgement
        os.write(ack, b"a")
    return samples


def recv_unpaced(batches, count: int) -> list[int]:
    """Reads `count` batches as they come, checking each one's id (only: pyarrow's scalars cost
    more than a small batch's transport); [the moment the last one was read]."""
    for i in range(count):
        batch = next(batches)
        check(i, batch.column(1)[0].as_py())
        del batch
    return [time.monotonic_ns()]


def recv_ring(busy: bool, address: str, count: int, ack: int, paced: bool = True) -> list[int]:
    import shmarrow

    consumer = shmarrow.Consumer(address, connect_timeout=ACK_TIMEOUT_MS / 1000,
                                 read_timeout=ACK_TIMEOUT_MS / 1000)
    os.write(ack, b"r")
    if not paced:
        return recv_unpaced(iter(consumer), count)  # as the socket's reader: iter(), then next()
    samples = []
    for i in range(count):
        if busy:
            while (batch := consumer.try_next()) is None:
                pass
        else:
            batch = consumer.read_next_batch()
        t1 = time.monotonic_ns()
        t0, ident = row_of(batch)
        check(i, ident)
        samples.append(t1 - t0)
        del batch  # released to the producer before the acknowledgement
        os.write(ack, b"a")
    if next(consumer, None) is not None:
        raise RuntimeError("more batches than sent")
    return samples


def recv_uds(busy: bool, fd: int, count: int, ack: int, paced: bool = True) -> list[int]:
    sock = socket.socket(fileno=fd)
    readable = select.poll()
    readable.register(sock, select.POLLIN)
    os.write(ack, b"r")
    if not paced:
        return recv_unpaced(iter(pa.ipc.open_stream(sock.makefile("rb"))), count)
    reader = None
    samples = []
    for i in range(count):
        if busy:
            # pyarrow's reader has no non-blocking mode (a file object returning no bytes is the
            # end of the stream): spin on the socket until bytes arrive, then read them. Messages
            # are paced, so when the socket is empty, so is the reader's buffer.
            while not readable.poll(0):
                pass
        if reader is None:  # pyarrow writes the schema with the first batch (a warm-up one)
            reader = pa.ipc.open_stream(sock.makefile("rb"))
        batch = reader.read_next_batch()
        t1 = time.monotonic_ns()
        t0, ident = row_of(batch)
        check(i, ident)
        samples.append(t1 - t0)
        del batch
        os.write(ack, b"a")
    return samples


def check(expected: int, got: int) -> None:
    if got != expected:
        raise RuntimeError(f"received message {got}, expected {expected}")


def receive(args) -> None:
    gc.disable()
    if args.recv == "iceoryx2":
        samples = recv_iceoryx2(args.address, args.count, args.ack_fd)
    elif args.recv.startswith("ring-"):
        samples = recv_ring(args.recv == "ring-busy", args.address, args.count, args.ack_fd,
                            args.recv not in THROUGHPUT)
    else:
        samples = recv_uds(args.recv == "uds-busy", int(args.address), args.count, args.ack_fd,
                           args.recv not in THROUGHPUT)
    print(json.dumps({"samples_ns": samples}))


# ---- driver -------------------------------------------------------------------------------------

def summary(samples_ns: list[int]) -> dict:
    a = np.asarray(samples_ns, dtype=np.int64)
    p50, p99, p999 = np.percentile(a, [50, 99, 99.9], method="inverted_cdf")
    return {"n": int(a.size), "min": float(a.min()), "median": float(p50), "p99": float(p99),
            "p999": float(p999), "max": float(a.max())}


def measure(name: str, samples: int, warmup: int) -> dict:
    label, polling = MEASUREMENTS[name]
    record = {"label": label, "polling": polling}
    if name == "iceoryx2":
        try:
            import iceoryx2  # noqa: F401
        except ImportError as e:
            return {**record, "skipped": f"iceoryx2 does not import: {e}"}
    count = samples + warmup
    try:
        gc.disable()
        if name == "iceoryx2":
            got = send_iceoryx2(count)
        elif name.startswith("ring-"):
            got = send_ring(name, count)
        else:
            got = send_uds(name, count)
    except Exception as e:  # one failed route is reported, the others still run
        return {**record, "error": f"{type(e).__name__}: {e}"}
    finally:
        gc.enable()
    if name in THROUGHPUT:
        start, end = got
        return {**record, "batches": count, "batches_per_s": count / ((end - start) / 1e9)}
    return {**record, **summary(got[warmup:])}


def versions() -> dict:
    out = {"python": platform.python_version(), "pyarrow": pa.__version__, "numpy": np.__version__}
    for module in ("iceoryx2", "shmarrow"):
        try:
            from importlib.metadata import version
            out[module] = version(module)
        except Exception as e:
            out[module] = f"unavailable ({type(e).__name__})"
    return out


def machine() -> dict:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "nproc": os.cpu_count(), "kernel": platform.release()}


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few samples (the whole run < 20 s)")
    ap.add_argument("--samples", type=int, help="samples per measurement (default 20000, quick 500)")
    ap.add_argument("--warmup", type=int, help="messages dropped first (default 1000, quick 100)")
    ap.add_argument("--only", help="comma-separated measurements: " + ",".join(MEASUREMENTS))
    ap.add_argument("--recv", choices=list(MEASUREMENTS), help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--address", help=argparse.SUPPRESS)
    ap.add_argument("--ack-fd", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.recv:
        receive(args)
        return 0

    samples = args.samples or (500 if args.quick else 20000)
    warmup = args.warmup if args.warmup is not None else (100 if args.quick else 1000)
    names = args.only.split(",") if args.only else list(MEASUREMENTS)
    unknown = set(names) - set(MEASUREMENTS)
    if unknown:
        ap.error(f"unknown measurement(s): {', '.join(sorted(unknown))}")
    result = {"quick": args.quick, "samples": samples, "warmup": warmup, "versions": versions(),
              "machine": machine(), "loadavg_before": loadavg()}
    t0 = time.monotonic()
    result["measurements"] = {name: measure(name, samples, warmup) for name in names}
    result["elapsed_s"] = time.monotonic() - t0
    result["loadavg_after"] = loadavg()
    print(json.dumps(result))
    failed = [f"{name}: {m['error']}" for name, m in result["measurements"].items() if "error" in m]
    for line in failed:
        print(line, file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

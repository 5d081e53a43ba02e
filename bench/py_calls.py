#!/usr/bin/env python3
"""Per-call times of shmarrow's Python fast path, producer and consumer in one process (ring
mode), 1-row batches of 3 columns (t int64, id int64, value float64):

  py_calls.py [N]    (default 20000 calls of each)

- publish of a heap batch (built once with pa.array; copied into the ring),
- publish of a batch built in allocate() (no copy; the building is not timed),
- try_next() with a batch waiting (the call that returns it),
- next() right after a publish (the batch may still be on its way),
- the same through iter(consumer), as a for loop reads (the binding's own __next__).

Prints the median of each (time.perf_counter_ns around the call, the garbage collector off).
For profiling: `perf record -F 4000 -- .venv/bin/python bench/py_calls.py`.
"""
import gc
import os
import sys
import time

import numpy as np
import pyarrow as pa

import shmarrow

SCHEMA = pa.schema([("t", pa.int64()), ("id", pa.int64()), ("value", pa.float64())])


def median(samples):
    samples.sort()
    return samples[len(samples) // 2]


def built_in(producer, i):
    """A 1-row batch whose three values live in one allocate() block."""
    block = producer.allocate(24)
    np.frombuffer(block, np.int64)[:] = (i, i, 0)
    columns = [pa.Array.from_buffers(field.type, 1, [None, pa.py_buffer(memoryview(block)[8 * k:8 * k + 8])])
               for k, field in enumerate(SCHEMA)]
    return pa.RecordBatch.from_arrays(columns, schema=SCHEMA)


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    address = f"@shmarrow-py-calls-{os.getpid()}"
    heap = pa.RecordBatch.from_arrays([pa.array([1]), pa.array([2]), pa.array([0.5])], schema=SCHEMA)
    with shmarrow.Producer(address, SCHEMA, mode="ring", ring_size=1 << 22) as producer:
        consumer = shmarrow.Consumer(address, connect_timeout=5)
        producer.wait_for_consumers(1, timeout=5)
        # next() of the consumer (its Python __next__) and of iter(consumer) (the binding's, as a
        # for loop calls it)
        readers = {"next() right after a publish": consumer,
                   "next() of iter(consumer) right after a publish": iter(consumer)}
        times = {"publish heap batch": [], "publish allocate()-built batch": [],
                 "try_next() with a batch waiting": [], **{what: [] for what in readers}}
        gc.disable()
        for i in range(2 * n):
            heap_built = i % 2 == 0
            batch = heap if heap_built else built_in(producer, i)
            t0 = time.perf_counter_ns()
            producer.publish(batch)
            t1 = time.perf_counter_ns()
            times["publish heap batch" if heap_built else "publish allocate()-built batch"].append(t1 - t0)
            del batch
            got = None
            while got is None:  # the time of the call that returns the batch
                t0 = time.perf_counter_ns()
                got = consumer.try_next()
                t1 = time.perf_counter_ns()
            times["try_next() with a batch waiting"].append(t1 - t0)
            del got
            for what, reader in readers.items():
                producer.publish(heap)
                t0 = time.perf_counter_ns()
                got = next(reader)
                t1 = time.perf_counter_ns()
                times[what].append(t1 - t0)
                del got
        gc.enable()
        consumer.close()
    for what, samples in times.items():
        print(f"{what}: {median(samples) / 1e3:.2f} µs (median of {len(samples)})")


if __name__ == "__main__":
    main()

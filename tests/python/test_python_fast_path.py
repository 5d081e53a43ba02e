"""The binding's batch path: a consumer hands pyarrow the C++ batch itself, a producer takes the
C++ batch a pyarrow batch wraps; neither may show a batch under a schema it was not sent with, or
keep memory after Python lets go."""

from __future__ import annotations

import gc
import threading
import uuid

import pyarrow as pa
import pytest

from conftest import TIMEOUT_S

try:
    from shmarrow import ClosedError, Consumer, InvalidError, Producer, ShmarrowTimeoutError
except ImportError as error:  # pragma: no cover - depends on the build
    pytest.skip(f"the compiled extension shmarrow._native is not importable ({error})",
                allow_module_level=True)

BASE = pa.schema([pa.field("a", pa.int64()), pa.field("b", pa.float64())])
# Differs from BASE only in metadata, in a field name, in a type: each must come through as sent.
SCHEMAS = [
    BASE,
    BASE.with_metadata({"unit": "m"}),
    BASE,
    pa.schema([pa.field("a", pa.int64(), metadata={"k": "v"}), pa.field("b", pa.float64())]),
    pa.schema([pa.field("a", pa.int64()), pa.field("c", pa.float64())]),
    pa.schema([pa.field("a", pa.int64()), pa.field("b", pa.float32())]),
    BASE,
]


def batch_of(schema: pa.Schema, i: int) -> pa.RecordBatch:
    return pa.record_batch([pa.array([i, i + 1], schema.field(0).type),
                            pa.array([i / 2, i / 3], schema.field(1).type)], schema=schema)


@pytest.mark.parametrize("mode", ["ring", "sealed"])
# iter: the binding's own __next__ (what a for loop calls)
@pytest.mark.parametrize("read", ["next", "iter", "try_next"])
@pytest.mark.parametrize("validate", ["full", "basic"])  # basic: batches are taken with the GIL held
def test_every_batch_has_the_schema_it_was_published_with(mode, read, validate):
    address = f"@py-fast-{uuid.uuid4().hex}"
    with Producer(address, BASE, mode=mode, block_timeout=TIMEOUT_S) as producer:
        consumer = Consumer(address, read_timeout=TIMEOUT_S, validate=validate,
                            busy_poll=0.001 if read == "try_next" else 0)
        producer.wait_for_consumers(1, timeout=TIMEOUT_S)
        sent = []
        for n, schema in enumerate(SCHEMAS):
            if n:
                producer.change_schema(schema)
            for i in range(3):
                sent.append(batch_of(schema, 10 * n + i))
                producer.publish(sent[-1])
        producer.end()
        got = []
        batches = iter(consumer)
        while len(got) < len(sent):
            if read == "next":
                got.append(next(consumer))
            elif read == "iter":
                got.append(next(batches))
            elif (batch := consumer.try_next()) is not None:
                got.append(batch)
        for expected, batch in zip(sent, got):
            assert batch.schema.equals(expected.schema, check_metadata=True), (expected.schema, batch.schema)
            assert batch.equals(expected)
        del got, batch
        gc.collect()
        producer.wait_until_drained(timeout=TIMEOUT_S)
        assert producer.stats["in_flight"] == 0
        consumer.close()


def test_iterating_reads_the_one_stream_honours_read_timeout_and_close():
    """iter(consumer) and the consumer itself read the same stream; both wait up to read_timeout,
    stop at the end, and refuse to read once the consumer is closed."""
    address = f"@py-fast-{uuid.uuid4().hex}"
    with Producer(address, BASE, mode="ring", block_timeout=TIMEOUT_S) as producer:
        consumer = Consumer(address, read_timeout=0.05)
        producer.wait_for_consumers(1, timeout=TIMEOUT_S)
        batches = iter(consumer)
        with pytest.raises(ShmarrowTimeoutError):
            next(batches)
        for i in range(4):
            producer.publish(batch_of(BASE, i))
        producer.end()
        got = [next(batches), next(consumer)]
        got += list(consumer)
        assert [b.column(0)[0].as_py() for b in got] == [0, 1, 2, 3]
        with pytest.raises(StopIteration):
            next(batches)
        del got
        consumer.close()
        with pytest.raises(ClosedError):
            next(batches)


def test_next_on_a_native_consumer_never_initialized_raises():
    """The native consumer's next() is a type slot of its own, outside nanobind's checks: on an
    object whose __init__ never ran it raises instead of reading freed memory."""
    from shmarrow import _native

    native = _native._Consumer.__new__(_native._Consumer)
    with pytest.raises(TypeError, match="uninitialized"):
        next(native)


def test_a_for_loop_over_an_unnamed_consumer_reads_every_batch():
    """The loop holds only iter(consumer) (the native consumer): the Python object going away
    closes nothing."""
    address = f"@py-fast-{uuid.uuid4().hex}"
    with Producer(address, BASE, mode="ring", block_timeout=TIMEOUT_S) as producer:
        def publish():
            producer.wait_for_consumers(1, timeout=TIMEOUT_S)
            for i in range(3):
                producer.publish(batch_of(BASE, i))
            producer.end()

        publisher = threading.Thread(target=publish)
        publisher.start()
        got = []
        for batch in Consumer(address, connect_timeout=TIMEOUT_S, read_timeout=TIMEOUT_S):
            gc.collect()
            got.append(batch.column(0)[0].as_py())
        publisher.join(TIMEOUT_S)
        assert got == [0, 1, 2]


def test_publish_refuses_a_batch_whose_schema_differs_only_after_the_first():
    """The producer's reuse of the previous publish's schema never lets a different one through."""
    address = f"@py-fast-{uuid.uuid4().hex}"
    with Producer(address, BASE, mode="ring", block_timeout=TIMEOUT_S) as producer:
        consumer = Consumer(address, read_timeout=TIMEOUT_S)
        producer.wait_for_consumers(1, timeout=TIMEOUT_S)
        producer.publish(batch_of(BASE, 0))
        for schema in SCHEMAS[4:6]:  # another field name, another type
            with pytest.raises(InvalidError):
                producer.publish(batch_of(schema, 1))
        producer.publish(batch_of(BASE, 2))
        producer.end()
        assert [b.column(0)[0].as_py() for b in consumer] == [0, 2]
        consumer.close()


@pytest.mark.parametrize("validate", ["full", "basic"])
def test_batches_read_on_several_threads_keep_their_schema(validate):
    """Threads reading one consumer while the schema changes: each batch as it was sent."""
    address = f"@py-fast-{uuid.uuid4().hex}"
    schemas = [BASE, BASE.with_metadata({"unit": "m"})] * 20
    with Producer(address, BASE, mode="ring", block_timeout=TIMEOUT_S) as producer:
        consumer = Consumer(address, read_timeout=TIMEOUT_S, validate=validate)
        producer.wait_for_consumers(1, timeout=TIMEOUT_S)
        got, lock = [], threading.Lock()

        def read():  # try_next: a thread blocked in next() would wait for a batch another took
            while len(got) < len(schemas):
                if (batch := consumer.try_next()) is not None:
                    with lock:
                        got.append(batch)

        readers = [threading.Thread(target=read) for _ in range(3)]
        for t in readers:
            t.start()
        for n, schema in enumerate(schemas):
            if n:
                producer.change_schema(schema)
            producer.publish(batch_of(schema, n))
        for t in readers:
            t.join(TIMEOUT_S)
        assert sorted(b.column(0)[0].as_py() for b in got) == list(range(len(schemas)))
        for batch in got:
            assert batch.schema.equals(schemas[batch.column(0)[0].as_py()], check_metadata=True)
        del got, batch
        gc.collect()
        producer.wait_until_drained(timeout=TIMEOUT_S)
        consumer.close()

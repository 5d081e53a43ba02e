"""The Python API's conventions: ``async for`` over a Consumer (with cancellation and
read_timeout), read_next_batch's StopIteration, publish refusing another schema unless asked to
cast, and draining against a consumer process iterating ``for batch in consumer``."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid

import pyarrow as pa
import pytest

from conftest import TIMEOUT_S, child_env

shmarrow = pytest.importorskip("shmarrow._native_api", reason="the compiled extension is not built")
from shmarrow import (  # noqa: E402
    ClosedError,
    Consumer,
    InvalidError,
    Producer,
    ShmarrowTimeoutError,
)

SCHEMA = pa.schema([("n", pa.int64()), ("s", pa.string())])


def _address() -> str:
    return f"@py-conv-{uuid.uuid4().hex}"


def batch(i: int) -> pa.RecordBatch:
    return pa.record_batch([pa.array([i, i + 1]), pa.array([f"row {i}", None])], schema=SCHEMA)


@pytest.fixture
def producer():
    made: list[Producer] = []

    def make(**options: object) -> Producer:
        made.append(Producer(_address(), SCHEMA, drain_timeout=0, **options))
        return made[-1]

    yield make
    for p in made:
        p.close()


# ---- asyncio -------------------------------------------------------------------------------------

def test_async_for_reads_the_stream_while_the_loop_runs(producer):
    p = producer()

    async def main() -> list[pa.RecordBatch]:
        consumer = Consumer(p.address, read_timeout=TIMEOUT_S)
        p.wait_for_consumers(1, timeout=TIMEOUT_S)

        async def publish_later() -> None:
            for i in range(3):
                await asyncio.sleep(0.02)  # the consumer is waiting in the loop meanwhile
                p.publish(batch(i))
            p.end()

        publishing = asyncio.create_task(publish_later())
        received = [b async for b in consumer]
        await publishing
        return received

    received = asyncio.run(main())
    assert [b.equals(batch(i)) for i, b in enumerate(received)] == [True] * 3


def test_cancelling_a_waiting_iteration_loses_nothing(producer):
    p = producer()

    async def main() -> None:
        consumer = Consumer(p.address, read_timeout=TIMEOUT_S)
        p.wait_for_consumers(1, timeout=TIMEOUT_S)
        loop = asyncio.get_running_loop()
        batches = aiter(consumer)
        waiting = asyncio.create_task(anext(batches))
        await asyncio.sleep(0.05)  # the task now waits for the fd
        assert not waiting.done()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert not loop.remove_reader(consumer.fileno())  # the cancelled wait left no reader
        with pytest.raises(asyncio.TimeoutError):  # wait_for cancels it the same way
            await asyncio.wait_for(anext(batches), timeout=0.05)
        p.publish(batch(7))
        assert (await anext(batches)).equals(batch(7))
        p.end()
        with pytest.raises(StopAsyncIteration):
            await anext(batches)

    asyncio.run(main())


def test_async_iteration_honours_read_timeout_and_close(producer):
    p = producer()

    async def main() -> None:
        consumer = Consumer(p.address, read_timeout=0.1)
        with pytest.raises(ShmarrowTimeoutError, match="within 100 ms"):
            await anext(aiter(consumer))
        consumer.close()
        with pytest.raises(ClosedError):
            await anext(aiter(consumer))

    asyncio.run(main())


# ---- reading and publishing ----------------------------------------------------------------------

def test_read_next_batch_raises_stop_iteration_at_the_end(producer):
    p = producer()
    consumer = Consumer(p.address, read_timeout=TIMEOUT_S)
    p.wait_for_consumers(1, timeout=TIMEOUT_S)
    p.publish(batch(0))
    p.end()
    assert consumer.read_next_batch().equals(batch(0))
    with pytest.raises(StopIteration):
        consumer.read_next_batch()


def test_a_batch_of_another_schema_is_refused_naming_both_unless_cast(producer):
    p = producer()
    consumer = Consumer(p.address, read_timeout=TIMEOUT_S)
    p.wait_for_consumers(1, timeout=TIMEOUT_S)
    wrong = pa.record_batch({"n": pa.array(["1", "2"]), "s": pa.array(["x", None])})
    with pytest.raises(InvalidError, match=r"batch schema \{n: string, s: string\} differs from "
                                           r"the producer's schema \{n: int64, s: string\}"):
        p.publish(wrong)
    with pytest.raises(InvalidError, match="n: string"):  # the same for a stream
        p.publish(pa.Table.from_batches([wrong]))
    assert p.stats["published"] == 0
    p.publish(wrong, cast=True)
    # Another layout of the same values is cast without asking (polars exports string_view).
    p.publish(pa.record_batch([pa.array([5, 6]), pa.array(["v", None], pa.string_view())],
                              names=["n", "s"]))
    p.end()
    received = consumer.read_all()
    assert received.schema.equals(SCHEMA)
    assert received.column("n").to_pylist() == [1, 2, 5, 6]


# ---- draining against a consumer process ---------------------------------------------------------

FOR_LOOP_CONSUMER = """
import sys, shmarrow
rows = 0
with shmarrow.Consumer(sys.argv[1], connect_timeout=30, read_timeout=30) as consumer:
    for batch in consumer:  # `batch` keeps the last one after the loop
        rows += batch.num_rows
print(rows, flush=True)
sys.stdin.readline()  # holds `batch` until told to exit
"""


def _for_loop_consumer(address: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", FOR_LOOP_CONSUMER, address],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=child_env())


def test_end_then_drain_against_a_for_loop_consumer():
    """Drained means released: after end() the consumer's loop finishes, but its loop variable
    holds the last batch until it drops it or exits; then wait_until_drained returns."""
    p = Producer(_address(), SCHEMA)
    child = _for_loop_consumer(p.address)
    try:
        p.wait_for_consumers(1, timeout=TIMEOUT_S)
        for i in range(5):
            p.publish(batch(i))
        p.end()
        assert child.stdout.readline() == "10\n"  # every batch arrived
        with pytest.raises(ShmarrowTimeoutError, match="1 batch"):
            p.wait_until_drained(timeout=0.2)  # the child's `batch` still holds the last one
        child.stdin.close()  # the child exits, releasing it
        p.wait_until_drained(timeout=TIMEOUT_S)
    finally:
        p.close()
        if not child.stdin.closed:  # failed before telling it to exit
            child.kill()
        child.wait(timeout=TIMEOUT_S)
    assert child.returncode == 0, child.stderr.read()


def test_leaving_with_ends_drains_and_closes():
    address = _address()
    with Producer(address, SCHEMA, drain_timeout=TIMEOUT_S) as p:
        child = _for_loop_consumer(address)
        p.wait_for_consumers(1, timeout=TIMEOUT_S)
        for i in range(5):
            p.publish(batch(i))
        child.stdin.write("\n")  # lets the child exit as soon as its loop ends
        child.stdin.flush()
    assert p.closed
    out, err = child.communicate(timeout=TIMEOUT_S)
    assert (child.returncode, out) == (0, "10\n"), err

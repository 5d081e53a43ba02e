"""Protocol 1.3's wake-up and release region seen from Python: a consumer blocking in iteration
(the futex), one busy-polling, one waiting on fileno() with select, and one in asyncio
(loop.add_reader), all on one ring producer, each get every batch in order; batches a Python
consumer lets go of return through its region and unblock a publish that waits for them."""

from __future__ import annotations

import asyncio
import select
import threading
import time
import uuid

import pyarrow as pa
import pytest

from conftest import TIMEOUT_S

try:
    from shmarrow import Consumer, Producer
except ImportError as error:  # pragma: no cover - depends on the build
    pytest.skip(f"the compiled extension shmarrow._native is not importable ({error})",
                allow_module_level=True)

SCHEMA = pa.schema([pa.field("v", pa.int64())])
BATCHES = 200


def read_blocking(consumer):
    return [batch.column(0)[0].as_py() for batch in consumer]


def read_with_select(consumer):
    values = []
    while True:
        batch = consumer.try_next()
        if batch is not None:
            values.append(batch.column(0)[0].as_py())
            continue
        if consumer.ended:
            return values
        readable, _, _ = select.select([consumer.fileno()], [], [], TIMEOUT_S)
        if not readable:
            raise AssertionError(f"fileno() never became readable after {len(values)} batches")


def read_in_asyncio(consumer):
    async def read():
        return [batch.column(0)[0].as_py() async for batch in consumer]

    return asyncio.run(read())


def test_sleeping_busy_select_and_asyncio_consumers_all_get_everything():
    address = f"@py-wake-{uuid.uuid4().hex}"
    with Producer(address, SCHEMA, mode="ring", block_timeout=TIMEOUT_S) as producer:
        readers = {
            "sleeping": (Consumer(address, read_timeout=TIMEOUT_S), read_blocking),
            "busy": (Consumer(address, busy_poll=1.0, read_timeout=TIMEOUT_S), read_blocking),
            "select": (Consumer(address, read_timeout=TIMEOUT_S), read_with_select),
            "asyncio": (Consumer(address, read_timeout=TIMEOUT_S), read_in_asyncio),
        }
        producer.wait_for_consumers(len(readers), timeout=TIMEOUT_S)
        results = {}

        def run(name, consumer, read):
            results[name] = read(consumer)

        threads = [threading.Thread(target=run, args=(name, consumer, read))
                   for name, (consumer, read) in readers.items()]
        for thread in threads:
            thread.start()
        for v in range(BATCHES):
            producer.publish(pa.record_batch([pa.array([v], pa.int64())], schema=SCHEMA))
            if v % 50 == 0:  # the consumers catch up and fall asleep now and then
                time.sleep(0.005)
        producer.end()
        for thread in threads:
            thread.join(TIMEOUT_S * 3)
        for name, (consumer, _) in readers.items():
            assert results.get(name) == list(range(BATCHES)), name
            consumer.close()


def test_batches_let_go_in_python_unblock_a_waiting_publish():
    address = f"@py-wake-{uuid.uuid4().hex}"
    with Producer(address, SCHEMA, mode="ring", block_timeout=TIMEOUT_S) as producer:
        consumer = Consumer(address, read_timeout=TIMEOUT_S, max_in_flight=2)
        producer.wait_for_consumers(1, timeout=TIMEOUT_S)
        batch = lambda v: pa.record_batch([pa.array([v], pa.int64())], schema=SCHEMA)
        for v in range(4):  # two held, two waiting for credits
            producer.publish(batch(v))
        held = [next(consumer), next(consumer)]
        published = threading.Event()
        publisher = threading.Thread(target=lambda: (producer.publish(batch(4)), published.set()))
        publisher.start()
        assert not published.wait(0.05), "publish did not wait for the consumer's credits"
        del held  # released through the consumer's region
        publisher.join(TIMEOUT_S * 2)
        assert published.is_set()
        producer.end()
        assert read_blocking(consumer) == [2, 3, 4]
        producer.wait_until_drained(timeout=TIMEOUT_S)
        assert producer.stats["in_flight"] == 0
        assert producer.stats["ring_bytes_in_use"] == 0
        consumer.close()

"""Busy-polling Python consumers (Consumer(busy_poll=...)): the same stream, arguments checked."""

from __future__ import annotations

import threading
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


def test_a_busy_polling_consumer_reads_every_batch_in_order():
    address = f"@py-busy-{uuid.uuid4().hex}"
    with Producer(address, SCHEMA, mode="ring", block_timeout=TIMEOUT_S) as producer:
        consumer = Consumer(address, busy_poll=0.002, read_timeout=TIMEOUT_S)
        producer.wait_for_consumers(1, timeout=TIMEOUT_S)

        def publish():
            for v in range(300):
                producer.publish(pa.record_batch([pa.array([v], pa.int64())], schema=SCHEMA))
            producer.end()

        publisher = threading.Thread(target=publish)
        publisher.start()
        values = [batch.column(0)[0].as_py() for batch in consumer]
        publisher.join(TIMEOUT_S)
        assert values == list(range(300))
        consumer.close()


@pytest.mark.parametrize("bad", [-0.001, 61.0])
def test_busy_poll_out_of_range_is_refused(bad):
    with pytest.raises(ValueError, match="busy_poll"):
        Consumer("@nobody-listens-here", busy_poll=bad)

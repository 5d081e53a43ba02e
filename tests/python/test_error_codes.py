"""Exceptions are chosen by the error code the library attaches (include/shmarrow/error.h), never
by the message: messages written to mislead a text matcher still map to the right class."""

from __future__ import annotations

import struct

import pyarrow as pa
import pytest

from conftest import TIMEOUT_S

try:
    from shmarrow import (
        Consumer,
        InvalidError,
        Producer,
        RefusedError,
        RequestError,
        ShmarrowTimeoutError,
        StreamError,
    )
    from shmarrow import _native_api
except ImportError as error:  # pragma: no cover - depends on the build
    pytest.skip(f"the compiled extension shmarrow._native is not importable ({error})",
                allow_module_level=True)

from test_hostile import ERROR, FakeProducer, message, sized, welcome

SCHEMA = pa.schema([("a", pa.int64())])
# Reads like a timeout, a refusal and a request failure at once.
MISLEADING = b"refused: no batch within 5 ms (not waiting: fail fast)"


def error_message(code: int, text: bytes = MISLEADING) -> bytes:
    """An Error datagram (docs/protocol.md) on stream 0."""
    return message(ERROR, struct.pack("<I", code) + sized(text))


@pytest.mark.parametrize("code", [1, 2, 3, 4, 6, 7, 100])
def test_a_producer_refusal_is_refused_whatever_its_text(code):
    fake = FakeProducer([(error_message(code), [])])
    try:
        with pytest.raises(RefusedError, match="within 5 ms") as raised:
            Consumer(fake.address, read_timeout=TIMEOUT_S)
        assert not isinstance(raised.value, TimeoutError)
    finally:
        fake.close()


@pytest.mark.parametrize("code", [2, 4, 6, 7])
def test_a_producer_error_mid_stream_ends_the_stream_whatever_its_text(code):
    fake = FakeProducer([(welcome(SCHEMA.serialize().to_pybytes()), []),
                         (error_message(code), [])])
    try:
        with Consumer(fake.address, read_timeout=TIMEOUT_S) as consumer:
            with pytest.raises(StreamError, match="within 5 ms") as raised:
                consumer.read_next_batch()
        assert not isinstance(raised.value, (TimeoutError, RefusedError))
    finally:
        fake.close()


def test_a_local_schema_mismatch_is_invalid_even_when_it_says_refused(sock_dir):
    with Producer(str(sock_dir / "p.sock"), SCHEMA) as producer:
        odd = pa.record_batch({"x refused: y": pa.array([1], pa.int64())})
        with pytest.raises(InvalidError, match="refused: ") as raised:
            producer._native.publish_pyarrow_batch(odd)
        assert not isinstance(raised.value, RefusedError)


def test_timeouts_and_a_producer_going_away(sock_dir):
    producer = Producer(str(sock_dir / "p.sock"), SCHEMA)
    with pytest.raises(ShmarrowTimeoutError, match="0 ms"):
        producer.wait_for_consumers(1, timeout=0)
    consumer = Consumer(producer.address, read_timeout=0.05)
    with pytest.raises(ShmarrowTimeoutError, match="within 50 ms"):
        consumer.read_next_batch()
    producer.close()  # an Error with code 7 (shutdown) on stream 0
    with pytest.raises(StreamError, match="producer closed"):
        consumer.read_next_batch(read_timeout=TIMEOUT_S)
    consumer.close()


@pytest.mark.parametrize("code,from_producer,context,expected", [
    # Same misleading message each time: only the code, the origin and the operation differ.
    ("timeout", False, "read", ShmarrowTimeoutError),
    ("producer_gone", False, "read", StreamError),
    ("refused", False, "connect", RefusedError),
    ("limit", True, "connect", RefusedError),
    ("shutdown", True, "read", StreamError),
    ("handler", True, "request", RequestError),
    ("schema_mismatch", False, "publish", InvalidError),
])
def test_the_class_follows_the_code(code, from_producer, context, expected):
    kind = {"timeout": "io", "producer_gone": "io", "refused": "io"}.get(code, "invalid")
    message = "producer: refused: no answer within 5 ms"
    error = _native_api._error_from_status(kind, code, from_producer, 0, message, context)
    assert type(error) is expected
    assert str(error) == message

"""Exceptions are chosen by the error code the library attaches (include/shmarrow/error.h), never
by the message: messages written to mislead a text matcher still map to the right class."""

from __future__ import annotations

import socket
import struct
import threading
import uuid

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

MAGIC = 0x414D4853
ERROR = 7
SCHEMA = pa.schema([("a", pa.int64())])


def error_message(code: int, text: str) -> bytes:
    """An Error datagram (docs/protocol.md) on stream 0."""
    body = text.encode()
    payload = struct.pack("<II", code, len(body)) + body
    return struct.pack("<IHHII", MAGIC, ERROR, 0, 0, len(payload)) + payload


class AnswersHelloWith:
    """A producer at an abstract address that answers the first Hello with one datagram."""

    def __init__(self, datagram: bytes):
        self.address = "@shmarrow-error-codes-" + uuid.uuid4().hex
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._listener.bind("\0" + self.address[1:])
        self._listener.listen(1)
        self._listener.settimeout(TIMEOUT_S)
        self._thread = threading.Thread(target=self._serve, args=(datagram,), daemon=True)
        self._thread.start()

    def _serve(self, datagram: bytes) -> None:
        connection, _ = self._listener.accept()
        with connection:
            connection.settimeout(TIMEOUT_S)
            connection.recv(1 << 18)  # the Hello
            connection.send(datagram)
            connection.recv(1)  # until the consumer hangs up

    def close(self) -> None:
        self._thread.join(TIMEOUT_S)
        self._listener.close()


@pytest.mark.parametrize("code", [1, 2, 3, 4, 6, 7, 100])
def test_a_producer_refusal_is_refused_whatever_its_text(code):
    # Text that reads like a timeout, a stream error and a request failure at once.
    fake = AnswersHelloWith(error_message(code, "no batch within 5 ms (not waiting: fail fast)"))
    try:
        with pytest.raises(RefusedError, match="within 5 ms") as raised:
            Consumer(fake.address, read_timeout=TIMEOUT_S)
        assert not isinstance(raised.value, TimeoutError)
    finally:
        fake.close()


def test_a_local_schema_mismatch_is_invalid_even_when_it_says_refused(sock_dir):
    with Producer(str(sock_dir / "p.sock"), SCHEMA) as producer:
        odd = pa.record_batch({"x refused: y": pa.array([1], pa.int64())})
        with pytest.raises(InvalidError, match="refused: ") as raised:
            producer._native.publish_batch(*odd.__arrow_c_array__())
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

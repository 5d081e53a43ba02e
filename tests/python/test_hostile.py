"""A producer that lies, written here from docs/protocol.md, against the Python package and the
CLI (issue 17): a peer's text that is not UTF-8 or holds control characters, field names that are
not UTF-8, and sealed batches of another schema than announced."""

import fcntl
import os
import socket
import struct
import subprocess
import threading
import uuid

import pyarrow as pa
import pytest

import shmarrow
from conftest import TIMEOUT_S

MAGIC = 0x414D4853
WELCOME, BATCH, ERROR = 2, 3, 7
SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
PEER_TEXT = b"bell\x07 escape\x1b[2J bad\xff\xfe end"


def message(kind: int, payload: bytes = b"", stream: int = 0) -> bytes:
    return struct.pack("<IHHII", MAGIC, kind, 0, stream, len(payload)) + payload


def sized(data: bytes) -> bytes:
    return struct.pack("<I", len(data)) + data


def welcome(schema_bytes: bytes) -> bytes:
    """A sealed-mode Welcome of protocol 1.1 (no queue)."""
    fixed = struct.pack("<HHIIIQIII", 1, 1, 0, 0, 1, 0, 64, 4, 262144)
    return message(WELCOME, fixed + sized(schema_bytes) + struct.pack("<QI", 0, 0))


def error(text: bytes) -> bytes:
    return message(ERROR, struct.pack("<I", 7) + sized(text))


def sealed_stream(batch: pa.RecordBatch) -> int:
    """A sealed memfd holding an IPC stream of ``batch``."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    fd = os.memfd_create("hostile", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.write(fd, sink.getvalue().to_pybytes())
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
    return fd


class FakeProducer:
    """Serves one consumer: reads its Hello, sends ``datagrams`` ((bytes, fds) pairs), then waits
    for it to hang up."""

    def __init__(self, datagrams):
        self.address = "@shmarrow-test-hostile-" + uuid.uuid4().hex
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._listener.bind("\0" + self.address[1:])
        self._listener.listen(1)
        self._listener.settimeout(TIMEOUT_S)
        self._thread = threading.Thread(target=self._serve, args=(datagrams,), daemon=True)
        self._thread.start()

    def _serve(self, datagrams):
        try:
            connection, _ = self._listener.accept()
        except OSError:
            return
        with connection:
            connection.settimeout(TIMEOUT_S)
            connection.recv(262144)  # the Hello
            for data, fds in datagrams:
                socket.send_fds(connection, [data], fds)
            try:
                while connection.recv(262144):
                    pass
            except OSError:
                pass

    def close(self):
        self._thread.join(TIMEOUT_S)
        self._listener.close()


@pytest.fixture
def fake_producer():
    producers = []

    def start(*datagrams):
        producer = FakeProducer([d if isinstance(d, tuple) else (d, []) for d in datagrams])
        producers.append(producer)
        return producer

    yield start
    for producer in producers:
        producer.close()


def read_all(address, **options):
    with shmarrow.Consumer(address, read_timeout=TIMEOUT_S, **options) as consumer:
        return list(consumer)


def test_error_text_that_is_not_utf8_raises_the_library_error(fake_producer):
    producer = fake_producer(error(PEER_TEXT))
    with pytest.raises(shmarrow.ShmarrowError) as raised:
        read_all(producer.address)
    text = str(raised.value)
    assert "bell\\x07 escape\\x1b[2J bad\\xff\\xfe end" in text
    assert "\x1b" not in text and "\x07" not in text


def test_error_during_the_stream_is_escaped_too(fake_producer):
    schema = pa.schema([("rand", pa.int32())])
    producer = fake_producer(welcome(schema.serialize().to_pybytes()), error(PEER_TEXT))
    with pytest.raises(shmarrow.ShmarrowError, match=r"bad\\xff\\xfe end"):
        read_all(producer.address)


def test_field_name_that_is_not_utf8_is_refused(fake_producer):
    serialized = pa.schema([("aQ", pa.int32())]).serialize().to_pybytes()
    assert serialized.count(b"aQ") == 1
    producer = fake_producer(welcome(serialized.replace(b"aQ", b"a\xff")))
    with pytest.raises(shmarrow.ShmarrowError, match="is not valid UTF-8"):
        read_all(producer.address)


@pytest.mark.parametrize("lie", [pa.array(["x", "y"]), pa.array([1, 2], pa.int64())],
                         ids=["utf8", "int64"])
def test_sealed_batch_of_another_schema_than_announced_is_refused(fake_producer, lie):
    announced = pa.schema([("rand", pa.int32())])
    fd = sealed_stream(pa.record_batch([lie], names=["rand"]))
    try:
        batch = message(BATCH, struct.pack("<QQQI", 1, 0, 0, 0))
        producer = fake_producer(welcome(announced.serialize().to_pybytes()), (batch, [fd]))
        yielded = []
        with pytest.raises(shmarrow.ShmarrowError, match="the memfd holds a batch of schema"):
            with shmarrow.Consumer(producer.address, read_timeout=TIMEOUT_S,
                                   expect_schema=announced) as consumer:
                assert consumer.schema == announced
                for received in consumer:
                    yielded.append(received)
        assert yielded == []  # never a batch of a type the consumer did not report
    finally:
        os.close(fd)


def test_sparse_memfd_is_refused_before_its_holes_are_read(fake_producer):
    """A 32 MiB value the producer never wrote (a hole of the memfd) is refused, not committed."""
    value = 32 << 20
    sink = pa.BufferOutputStream()
    batch = pa.record_batch([pa.array(["x" * value])], names=["s"])
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    data = sink.getvalue().to_pybytes()
    start = (data.index(b"x" * 8192) + 4095) // 4096 * 4096
    end = start + (value - 8192) // 4096 * 4096
    fd = os.memfd_create("hostile-sparse", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, len(data))
        os.pwrite(fd, data[:start], 0)  # the value's middle pages are never written
        os.pwrite(fd, data[end:], end)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
        assert os.fstat(fd).st_blocks * 512 < value // 2
        message_batch = message(BATCH, struct.pack("<QQQI", 1, 0, 0, 0))
        producer = fake_producer(welcome(batch.schema.serialize().to_pybytes()),
                                 (message_batch, [fd]))
        with pytest.raises(shmarrow.ShmarrowError, match="holes the producer never wrote"):
            read_all(producer.address)
    finally:
        os.close(fd)


def test_cli_escapes_a_peers_text_before_the_terminal(fake_producer, shmarrow_bin):
    producer = fake_producer(error(PEER_TEXT))
    result = subprocess.run([str(shmarrow_bin), "recv", "--socket", producer.address,
                             "--read-timeout-ms", "10000"], capture_output=True, timeout=TIMEOUT_S)
    assert result.returncode == 1
    assert b"escape\\x1b[2J bad\\xff\\xfe end" in result.stderr
    assert b"\x1b" not in result.stderr and b"\x07" not in result.stderr


def test_cli_allow_uid_takes_a_list_of_uids(shmarrow_bin):
    result = subprocess.run([str(shmarrow_bin), "recv", "--socket", "@nobody-listens",
                             "--allow-uid", "65534,x"], capture_output=True, text=True,
                            timeout=TIMEOUT_S)
    assert result.returncode == 2
    assert "--allow-uid '65534,x' is not a comma-separated list of uids" in result.stderr

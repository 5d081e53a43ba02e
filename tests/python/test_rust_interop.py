"""The Rust consumer (rust/, `shmarrow-rs recv`) against the C++ producer: the same JSON summary
as `shmarrow recv --json` (schema, counts, null counts, checksums) in the single hand-over, sealed
mode and ring mode, over generated streams and over the arrow-testing integration corpus; zero-copy
asserted on the Rust side (--check-zero-copy); a producer killed midway; hostile producers.

scripts/test_rust.sh builds the binary and passes its path in SHMARROW_RUST_BIN.
"""

import fcntl
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import child_env

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("SHMARROW_BUILD", REPO / "build"))
CLI = BUILD / "shmarrow"
# Set by scripts/test_rust.sh after it built the binary: without it (the Python suite run alone,
# or under a sanitizer) these tests skip rather than run a stale build.
RUST_BIN = Path(os.environ.get("SHMARROW_RUST_BIN", "/nonexistent/shmarrow-rs"))
CORPUS = REPO.parent / "shared" / "arrow-testing"
TIMEOUT = 30
SCHEMA = "a:int32,b:int64,c:float64,d:utf8,e:bool"
WAIT = ("--connect-timeout-ms", "10000", "--read-timeout-ms", str(TIMEOUT * 1000))

pytestmark = [
    pytest.mark.skipif(not os.access(RUST_BIN, os.X_OK),
                       reason="no shmarrow-rs: run scripts/test_rust.sh, which builds it and "
                              "sets SHMARROW_RUST_BIN"),
    pytest.mark.skipif(not os.access(CLI, os.X_OK), reason=f"{CLI} not built"),
]


def _socket() -> str:
    return f"@shmarrow-rust-{uuid.uuid4().hex}"


# `procs` (tests/python/conftest.py) starts processes and kills what outlives its test.

def _send(procs, *args) -> subprocess.Popen:
    return procs.start([CLI, "send", "--json", "--accept-timeout-ms", TIMEOUT * 1000, *args])


def _cpp_recv(procs, sock: str, *args) -> subprocess.Popen:
    return procs.start([CLI, "recv", "--socket", sock, "--json", *WAIT, *args])


def _rust_recv(procs, sock: str, *args) -> subprocess.Popen:
    return procs.start([RUST_BIN, "recv", "--socket", sock, "--json", *WAIT, *args])


def _ok(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, f"{proc.args} exited {proc.returncode}: {err}"
    return json.loads(out)


def _failed(proc: subprocess.Popen) -> str:
    """The one-line error of a `shmarrow-rs recv` that must fail cleanly (exit 1, not a panic)."""
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 1, f"exit {proc.returncode}: {err}"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shmarrow-rs recv: "), err
    return lines[0]


# --- generated streams ------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["ring", "sealed"])
@pytest.mark.parametrize("columns", [None, "d,a"])
def test_stream_protocol_summary_equals_cpp_recv(procs, mode, columns):
    sock = _socket()
    projection = ("--columns", columns) if columns else ()
    sender = _send(procs, "--mode", mode, "--socket", sock, "--batches", 60, "--rows", 1000,
                   "--schema", SCHEMA, "--null-fraction", 0.1, "--seed", 11,
                   "--wait-consumers", 2)
    rust = _rust_recv(procs, sock, "--check-zero-copy", *projection)
    cpp = _cpp_recv(procs, sock, *projection)
    got, want, sent = _ok(rust), _ok(cpp), _ok(sender)
    assert got == want  # every member: schema, counts, checksums, mode, dropped, schema changes
    assert got["mode"] == mode and got["batches"] == 60 and got["rows"] == 60_000
    if columns is None:
        assert got["columns"] == sent["columns"]
    assert all(c["checksum"] for c in got["columns"])


@pytest.mark.parametrize("mode", ["ring", "sealed"])
def test_schema_change_midway_equals_cpp_recv(procs, mode):
    sock = _socket()
    sender = _send(procs, "--mode", mode, "--socket", sock, "--batches", 20, "--rows", 300,
                   "--schema", SCHEMA, "--null-fraction", 0.1, "--schema-change-at", 8,
                   "--wait-consumers", 2)
    rust, cpp = _rust_recv(procs, sock, "--check-zero-copy"), _cpp_recv(procs, sock)
    got, want, sent = _ok(rust), _ok(cpp), _ok(sender)
    assert got == want
    assert got["schema_changes"] == 1 and got["schema"][-1]["name"] == "extra"
    assert got["columns"] == sent["columns"]


@pytest.mark.parametrize("mode", ["ring", "sealed"])
def test_lossy_slow_rust_consumer_loses_batches_the_cpp_consumer_gets_all(procs, mode):
    sock = _socket()
    sender = _send(procs, "--mode", mode, "--socket", sock, "--batches", 100, "--rows", 1000,
                   "--schema", SCHEMA, "--wait-consumers", 2, "--max-in-flight", 4)
    normal = _cpp_recv(procs, sock)
    lossy = _rust_recv(procs, sock, "--lossy", "--delay-ms", 20, "--max-in-flight", 1)
    got, lost, sent = _ok(normal), _ok(lossy), _ok(sender)
    assert got["dropped"] == 0 and got["batches"] == 100
    assert lost["dropped"] > 0
    assert lost["batches"] + lost["dropped"] == sent["producer"]["published"] == 100
    assert sent["producer"]["dropped"] == lost["dropped"]


@pytest.mark.parametrize("mode", ["ring", "sealed"])
def test_late_joiner_from_oldest_gets_the_whole_retained_stream(procs, mode):
    """Retained batches older than a schema change arrive with their own schema."""
    sock = _socket()
    sender = _send(procs, "--mode", mode, "--socket", sock, "--batches", 40, "--rows", 100,
                   "--schema", "a:int32,b:utf8", "--schema-change-at", 20, "--retain", 40,
                   "--rate", 40)
    time.sleep(0.75)  # some batches published before it joins; all of them retained
    got, sent = _ok(_rust_recv(procs, sock, "--from-oldest")), _ok(sender)
    for key in ("schema", "batches", "rows", "columns"):
        assert got[key] == sent[key], key
    assert got["schema_changes"] == 1


@pytest.mark.parametrize("mode", ["ring", "sealed"])
def test_request_answered_by_the_cpp_producer(procs, mode):
    """The answers carry generated values that differ from request to request: what the C++
    consumer also reports is compared, and the Rust side checks the answer lies in place."""
    sock = _socket()
    sender = _send(procs, "--mode", mode, "--socket", sock, "--batches", 100, "--rows", 10,
                   "--rate", 50, "--schema", SCHEMA, "--serve-requests")
    got = _ok(_rust_recv(procs, sock, "--request", "rows=123", "--check-zero-copy"))
    want = _ok(_cpp_recv(procs, sock, "--request", "rows=123"))
    for key in ("schema", "batches", "rows", "mode", "request"):
        assert got[key] == want[key], key
    assert got["rows"] == 123 and all(c["checksum"] for c in got["columns"])
    message = _failed(_rust_recv(procs, sock, "--request", "bogus"))
    assert "unknown request 'bogus'" in message
    assert _ok(sender)["batches"] == 100


def test_request_to_a_producer_without_handler(procs):
    sock = _socket()
    sender = _send(procs, "--mode", "ring", "--socket", sock, "--batches", 50, "--rows", 10,
                   "--rate", 50, "--wait-consumers", 0)
    assert "no request handler" in _failed(_rust_recv(procs, sock, "--request", "rows=1"))
    _ok(sender)


@pytest.mark.parametrize("mode", ["ring", "sealed"])
def test_required_schema_checked_by_the_cpp_producer(procs, mode):
    sock = _socket()
    sender = _send(procs, "--mode", mode, "--socket", sock, "--batches", 5, "--rows", 10,
                   "--schema", "a:int32,b:utf8", "--wait-consumers", 2)
    refused = _failed(_rust_recv(procs, sock, "--expect-schema", "a:int64"))
    assert "refused: " in refused and "a: int64" in refused and "a: int32" in refused
    refused = _failed(_rust_recv(procs, sock, "--expect-schema", "b:int32", "--schema-subset"))
    assert "field 'b': expected int32, producer has string" in refused
    exact = _rust_recv(procs, sock, "--expect-schema", "a:int32,b:utf8")
    subset = _rust_recv(procs, sock, "--expect-schema", "b:string", "--schema-subset")
    assert _ok(exact)["batches"] == _ok(subset)["batches"] == 5
    _ok(sender)


def test_required_schema_checked_by_the_rust_producer(procs):
    sock = _socket()
    sender = procs.start([RUST_BIN, "send", "--socket", sock, "--json", "--batches", 3,
                          "--schema", "a:int32,b:utf8", "--wait-consumers", 2,
                          "--accept-timeout-ms", TIMEOUT * 1000])
    refused = _cpp_recv(procs, sock, "--expect-schema", "a:int32")
    out, err = refused.communicate(timeout=TIMEOUT)
    assert refused.returncode == 1 and "expected 1 fields, producer has 2" in err, err
    exact = _cpp_recv(procs, sock, "--expect-schema", "a:int32,b:utf8")
    subset = _cpp_recv(procs, sock, "--expect-schema", "b:utf8", "--schema-subset")
    assert _ok(exact)["batches"] == _ok(subset)["batches"] == 3
    _ok(sender)


def test_single_hand_over_summary_equals_cpp_recv(procs, tmp_path):
    for sock in (_socket(), str(tmp_path / "s")):  # abstract name and socket file
        sender = _send(procs, "--socket", sock, "--batches", 4, "--rows", 700, "--schema", SCHEMA,
                       "--null-fraction", 0.2, "--clients", 2)
        rust = _rust_recv(procs, sock, "--check-zero-copy")
        cpp = _cpp_recv(procs, sock)
        got, want, sent = _ok(rust), _ok(cpp), _ok(sender)
        assert got == want  # the same memfd: inode, bytes, seals, buffers_in_mapping
        assert got["memfd"]["inode"] == sent["memfd"]["inode"]
        assert got["buffers_in_mapping"] is True


def test_ring_mode_backlog_with_few_credits(procs):
    """A consumer with 2 credits that reads while 300 small batches are published: Batches
    runs, the queue in the ring, Wake/Waiting and deferred releases all take part."""
    sock = _socket()
    sender = _send(procs, "--mode", "ring", "--socket", sock, "--batches", 300, "--rows", 50,
                   "--schema", SCHEMA, "--wait-consumers", 1)
    got, sent = _ok(_rust_recv(procs, sock, "--max-in-flight", 2)), _ok(sender)
    assert got["batches"] == 300 and got["columns"] == sent["columns"]
    assert sent["producer"]["dropped"] == 0


def test_busy_polling_consumer(procs):
    sock = _socket()
    sender = _send(procs, "--mode", "ring", "--socket", sock, "--batches", 100, "--rows", 100,
                   "--schema", SCHEMA, "--wait-consumers", 1)
    got, sent = _ok(_rust_recv(procs, sock, "--busy-poll-us", 200)), _ok(sender)
    assert got["columns"] == sent["columns"]


def _example(name: str) -> Path:
    path = RUST_BIN.parent / "examples" / name
    if not os.access(path, os.X_OK):
        pytest.skip(f"{path} not built (scripts/test_rust.sh builds it)")
    return path


def test_readme_shows_the_example_program():
    readme = (REPO / "README.md").read_text()
    shown = readme.split("## Rust", 1)[1].split("```rust\n", 1)[1].split("```", 1)[0]
    program = (REPO / "rust" / "shmarrow" / "examples" / "read_ring.rs").read_text()
    assert program.endswith(shown) and shown.startswith("use ")


def test_readme_example_reads_a_ring_stream_in_place(procs):
    example = _example("read_ring")
    sock = _socket()
    sender = _send(procs, "--mode", "ring", "--socket", sock, "--batches", 25, "--rows", 400,
                   "--wait-consumers", 1)
    out, err = procs.start([example, sock]).communicate(timeout=TIMEOUT)
    assert out.strip() == "25 batches, 10000 rows read in place (ring mode)", err
    _ok(sender)


@pytest.mark.parametrize("mode", ["ring", "sealed"])
def test_poll_loop_example_waits_on_the_fd(procs, mode):
    """try_next + poll(2) on the consumer's fd, with a producer slower than the consumer."""
    example = _example("poll_loop")
    sock = _socket()
    sender = _send(procs, "--mode", mode, "--socket", sock, "--batches", 30, "--rows", 10,
                   "--rate", 300, "--wait-consumers", 1)
    out, err = procs.start([example, sock]).communicate(timeout=TIMEOUT)
    summary = re.fullmatch(r"(\d+) batches, (\d+) rows \((\d+) waits\)\n", out)
    batches, rows, waits = summary.groups()
    assert (batches, rows) == ("30", "300"), err
    assert int(waits) > 0  # it slept on the fd, and woke up for the batches
    _ok(sender)


# --- the Rust producer -----------------------------------------------------------------------

def _python_consumer_summary(sock: str) -> dict:
    """What the Python binding's Consumer (the C++ consumer) received, summed by the pure-Python
    summary code."""
    code = (
        "import json, shmarrow\n"
        "from shmarrow.summary import StreamSummary\n"
        f"with shmarrow.Consumer({sock!r}, connect_timeout={TIMEOUT}) as consumer:\n"
        "    summary = StreamSummary(consumer.schema)\n"
        "    for batch in consumer:\n"
        "        summary.add(batch)\n"
        "    print(json.dumps({**summary.to_dict(), 'mode': consumer.mode}))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=TIMEOUT, env=child_env())
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@pytest.mark.parametrize("mode", ["ring", "sealed"])
def test_rust_producer_to_cpp_rust_and_python_consumers(procs, mode):
    sock = _socket()
    # A ring of 256 KiB for about 2 MiB of batches: its blocks are reused as batches are released.
    sender = procs.start([RUST_BIN, "send", "--mode", mode, "--ring-size", 256 << 10,
                          "--socket", sock, "--json", "--batches", 80, "--rows", 1000,
                          "--schema", SCHEMA + ",f:uint16", "--null-fraction", 0.1,
                          "--wait-consumers", 3, "--max-in-flight", 4,
                          "--accept-timeout-ms", TIMEOUT * 1000])
    cpp = _cpp_recv(procs, sock, "--delay-ms", 2)  # slow: the producer waits for its releases
    rust = _rust_recv(procs, sock, "--check-zero-copy")
    python = _python_consumer_summary(sock)
    sent, got_cpp, got_rust = _ok(sender), _ok(cpp), _ok(rust)
    assert sent["producer"] == {"published": 80, "bytes_copied": sent["producer"]["bytes_copied"],
                                "consumers_total": 3}
    assert sent["producer"]["bytes_copied"] > 256 << 10  # one counted copy of each batch
    for got in (got_cpp, got_rust, python):
        assert got["mode"] == mode
        for key in ("schema", "batches", "rows", "columns"):
            assert got[key] == sent[key], key


def test_rust_producer_projection_for_the_cpp_consumer(procs):
    sock = _socket()
    sender = procs.start([RUST_BIN, "send", "--socket", sock, "--json", "--batches", 5,
                          "--rows", 100, "--schema", SCHEMA, "--wait-consumers", 1,
                          "--accept-timeout-ms", TIMEOUT * 1000])
    got, sent = _ok(_cpp_recv(procs, sock, "--columns", "d,a")), _ok(sender)
    by_name = {c["name"]: c for c in sent["columns"]}
    assert got["columns"] == [by_name["d"], by_name["a"]]


def test_rust_producer_refuses_a_missing_column_and_serves_others(procs):
    sock = _socket()
    sender = procs.start([RUST_BIN, "send", "--socket", sock, "--json", "--batches", 3,
                          "--rows", 10, "--schema", SCHEMA, "--wait-consumers", 1,
                          "--accept-timeout-ms", TIMEOUT * 1000])
    refused = _cpp_recv(procs, sock, "--columns", "nope")
    out, err = refused.communicate(timeout=TIMEOUT)
    assert refused.returncode == 1 and "no single column 'nope'" in err, err
    ring_sock = _socket()
    ring = procs.start([RUST_BIN, "send", "--mode", "ring", "--socket", ring_sock, "--batches", 1,
                        "--accept-timeout-ms", 2000])
    refused = _cpp_recv(procs, ring_sock, "--columns", "rand")
    out, err = refused.communicate(timeout=TIMEOUT)
    assert refused.returncode == 1 and "projections in sealed mode only" in err, err
    ring.kill()
    got, sent = _ok(_cpp_recv(procs, sock)), _ok(sender)
    assert got["columns"] == sent["columns"]


def test_rust_producer_disconnects_a_consumer_releasing_what_it_does_not_hold(procs):
    sock = _socket()
    sender = procs.start([RUST_BIN, "send", "--socket", sock, "--json", "--batches", 2,
                          "--rows", 10, "--wait-consumers", 2,
                          "--accept-timeout-ms", TIMEOUT * 1000])
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as peer:
        peer.settimeout(TIMEOUT)
        for _ in range(200):  # until the producer listens
            try:
                peer.connect("\0" + sock[1:])
                break
            except (ConnectionRefusedError, FileNotFoundError):
                time.sleep(0.05)
        payload = struct.pack("<HHIIII", 1, 1, 0, 0, 0, 0) + struct.pack("<I", 0)
        peer.send(struct.pack("<IHHII", 0x414D4853, 1, 0, 0, len(payload)) + payload)
        welcome = peer.recv(1 << 18)
        assert struct.unpack_from("<H", welcome, 4)[0] == 2  # Welcome
        release = struct.pack("<IQ", 1, 999)
        peer.send(struct.pack("<IHHII", 0x414D4853, 4, 0, 0, len(release)) + release)
        error = peer.recv(1 << 18)  # nothing was published yet: the Error comes next
        kind, code = struct.unpack_from("<H", error, 4)[0], struct.unpack_from("<I", error, 16)[0]
        assert (kind, code) == (7, 1)  # Error, protocol
        assert b"released batch 999, which it does not hold" in error
        assert peer.recv(1 << 18) == b""  # disconnected
    # The producer goes on waiting for two consumers, and serves them.
    first, second = _cpp_recv(procs, sock), _cpp_recv(procs, sock)
    assert _ok(first)["batches"] == 2 and _ok(second)["batches"] == 2
    assert _ok(sender)["producer"]["consumers_total"] == 3


# --- the producer going away -----------------------------------------------------------------

@pytest.mark.parametrize("mode", ["ring", "sealed"])
def test_producer_killed_midway_is_a_clean_error(procs, mode):
    sock = _socket()
    sender = _send(procs, "--mode", mode, "--socket", sock, "--batches", 10000, "--rows", 100,
                   "--rate", 50, "--wait-consumers", 1)
    receiver = _rust_recv(procs, sock)
    time.sleep(0.5)
    assert sender.poll() is None
    sender.send_signal(signal.SIGKILL)
    message = _failed(receiver)
    assert "producer closed the connection" in message


def test_nobody_listening_is_a_clean_error(procs):
    message = _failed(procs.start([RUST_BIN, "recv", "--socket", _socket()]))
    assert "connect('@shmarrow-rust-" in message


# --- hostile producers (tests/python/seedlike_sender.py) --------------------------------------

HANDOVER_BAD_INPUT = {
    "no-fd": "carried 0 fds, expected 1",
    "two-fds": "carried 2 fds, expected 1",
    "five-fds": "carried 5 fds, expected 1",
    "pipe": "is not a memfd",
    "regular-file": "is not a memfd",
    "unsealed": "lacks seals: has none",
    "writable": "lacks seals: has F_SEAL_SHRINK|F_SEAL_GROW",
    "truncated": "IPC stream",
    "garbage": "IPC stream",
    "close-early": "closed the connection without sending a memfd",
    "short-file": "IPC stream",
    "empty": "is empty",
}


def test_every_bad_input_mode_is_covered():
    from seedlike_sender import CORRUPT_MODES

    assert set(HANDOVER_BAD_INPUT) == set(CORRUPT_MODES)


@pytest.mark.parametrize("mode", sorted(HANDOVER_BAD_INPUT))
def test_hostile_hand_over_is_refused_cleanly(procs, serve, sock_path, mode):
    producer = serve(sock_path, "--corrupt", mode)
    message = _failed(_rust_recv(procs, sock_path))
    producer.finish()
    assert HANDOVER_BAD_INPUT[mode] in message


def test_seedlike_hand_over_with_many_types_equals_python_recv(procs, serve, sock_path):
    """The pure-Python consumer's summary of the same stream (its own checksum code)."""
    producer = serve(sock_path, "--rows", "500", "--batches", "3", "--mixed")
    got = _ok(_rust_recv(procs, sock_path))
    producer.finish()
    producer = serve(sock_path, "--rows", "500", "--batches", "3", "--mixed")
    python = subprocess.run([sys.executable, "-m", "shmarrow.recv", "--socket", sock_path,
                             "--json"], capture_output=True, text=True, timeout=TIMEOUT,
                            env=child_env())
    producer.finish()
    assert python.returncode == 0, python.stderr
    want = json.loads(python.stdout)
    for key in ("schema", "batches", "rows", "columns"):
        assert got[key] == want[key], key


# --- hostile producers of the stream protocol (ring mode) --------------------------------------

RING_SIZE = 1 << 16
MAGIC = 0x414D4853


def _message(kind: int, payload: bytes = b"", magic: int = MAGIC) -> bytes:
    return struct.pack("<IHHII", magic, kind, 0, 0, len(payload)) + payload


def _batch(sequence: int, offset: int, length: int) -> bytes:
    return _message(3, struct.pack("<QQQI", sequence, 0, offset, length))


def _metadata(rows: int, compression=None) -> bytes:
    """The record batch Message flatbuffer of `rows` int32 values (offsets relative to 0)."""
    batch = pa.record_batch([pa.array(range(rows), pa.int32())], names=["a"])
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with pa.ipc.new_stream(sink, batch.schema, options=options) as writer:
        writer.write_batch(batch)
    stream = sink.getvalue().to_pybytes()
    schema_length = struct.unpack_from("<I", stream, 4)[0]
    start = 8 + schema_length
    length = struct.unpack_from("<I", stream, start + 4)[0]
    return stream[start + 8:start + 8 + length]


def _sealed_memfd(data: bytes, seals: int) -> int:
    fd = os.memfd_create("hostile-ring", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, RING_SIZE)
    os.pwrite(fd, data, 0)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


RING_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
NO_FD = object()


def _hostile_producer(sock: str, ring_mode: bool, send_after_welcome, queue=(0, 0)):
    """Serves one consumer: a Welcome (no 1.1 feature but the queue at `queue`, (offset,
    capacity), if its capacity is not 0), then `send_after_welcome(conn, welcome)` sends it and
    what it likes; then waits for the consumer to hang up."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind("\0" + sock[1:])
    listener.listen(1)
    listener.settimeout(TIMEOUT)

    def serve():
        with listener, listener.accept()[0] as conn:
            conn.recv(1 << 18)  # the Hello
            schema = pa.schema([("a", pa.int32())]).serialize().to_pybytes()
            ring_size = RING_SIZE if ring_mode else 0
            features = 1 << 4 if queue[1] else 0
            welcome = (struct.pack("<HHIIIQIII", 1, 1, features, int(ring_mode), 1, ring_size,
                                   1, 4, 1 << 18)
                       + struct.pack("<I", len(schema)) + schema + struct.pack("<QI", *queue))
            send_after_welcome(conn, _message(2, welcome))
            conn.settimeout(TIMEOUT)
            while conn.recv(1 << 18):  # releases, until the consumer hangs up
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def _hostile_ring_producer(sock: str, ring: bytes, messages, seals=RING_SEALS, queue=(0, 0)):
    """Ring mode: the Welcome with a memfd holding `ring`, then `messages`."""
    def send(conn, welcome):
        fd = _sealed_memfd(ring, seals)
        try:
            socket.send_fds(conn, [welcome], [] if messages is NO_FD else [fd])
        finally:
            os.close(fd)
        for message in [] if messages is NO_FD else messages:
            conn.send(message)

    return _hostile_producer(sock, True, send, queue)


HOSTILE_RING = {
    "metadata outside the ring": (b"", [_batch(1, RING_SIZE - 4, 100)],
                                  "outside the 65536-byte ring"),
    "garbage metadata": (bytes(range(200)), [_batch(1, 0, 200)], "batch 1 (metadata at [0, +200)"),
    "buffer past the ring": (_metadata(100_000), [_batch(1, 0, len(_metadata(100_000)))],
                             "is outside the 65536-byte body"),
    "compressed body": (_metadata(10, "lz4"), [_batch(1, 0, len(_metadata(10, "lz4")))],
                        "compressed"),
    "bad magic": (b"", [_message(6, magic=0x12345678)], "bad magic 0x12345678"),
    "unknown message type": (b"", [_message(99)], "unknown message type 99"),
    "Batches not agreed": (b"", [_message(10, struct.pack("<I", 0))], "batch runs were not agreed"),
    "Welcome again": (b"", [_message(2)], "unexpected Welcome"),
    "ring without fd": (b"", NO_FD, "ring Welcome carries 0 fds"),
    "writable ring": (b"", [], "lacks seals: has F_SEAL_SHRINK|F_SEAL_GROW"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_RING))
def test_hostile_ring_producer_is_refused_cleanly(procs, case):
    ring, messages, expected = HOSTILE_RING[case]
    sock = _socket()
    seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW if case == "writable ring" else RING_SEALS
    producer = _hostile_ring_producer(sock, ring, messages, seals)
    message = _failed(_rust_recv(procs, sock))
    producer.join(TIMEOUT)
    assert expected in message


QUEUE_OFFSET = 1 << 15


def _queue(count: int, *entries: tuple) -> bytes:
    """Ring contents: a queue at QUEUE_OFFSET counting `count` entries written, then `entries`
    (kind, metadata length, sequence, dropped, metadata offset, controls before)."""
    packed = b"".join(struct.pack("<IIQQQII", *entry, 0) for entry in entries)
    return bytes(QUEUE_OFFSET) + struct.pack("<Q", count).ljust(64, b"\0") + packed


HOSTILE_QUEUE = {
    "count too far ahead": ((QUEUE_OFFSET, 4), _queue(10),
                            "the queue counts 10 entries written, but this consumer read 0 of a "
                            "queue of 4"),
    "unknown entry kind": ((QUEUE_OFFSET, 4), _queue(1, (7, 0, 1, 0, 0, 0)),
                           "queue entry 0 has kind 7"),
    "controls that never came": ((QUEUE_OFFSET, 4), _queue(1, (2, 0, 0, 0, 0, 1)),
                                 "counts 1 control messages before it, but only 0 arrived"),
    "queue outside the ring": ((RING_SIZE - 64, 4), b"", "does not fit the 65536-byte ring"),
    "queue not aligned": ((QUEUE_OFFSET + 8, 4), b"", "(or is not 64-byte aligned)"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_QUEUE))
def test_hostile_queue_in_the_ring_is_refused_cleanly(procs, case):
    queue, ring, expected = HOSTILE_QUEUE[case]
    sock = _socket()
    producer = _hostile_ring_producer(sock, ring, [], queue=queue)
    message = _failed(_rust_recv(procs, sock))
    producer.join(TIMEOUT)
    assert expected in message


def _pipe_read_end() -> int:
    read_end, write_end = os.pipe()
    os.close(write_end)
    return read_end


HOSTILE_SEALED = {  # the fds that come with one sealed-mode Batch
    "no fd": (lambda: [], "sealed Batch 1 carries 0 fds, expected 1"),
    "a pipe": (lambda: [_pipe_read_end()], "is not a memfd (F_GET_SEALS: EINVAL)"),
    "unsealed memfd": (lambda: [_sealed_memfd(b"", 0)], "lacks seals: has none"),
    "garbage stream": (lambda: [_sealed_memfd(bytes(range(256)) * 4, RING_SEALS)],
                       "batch 1 (a sealed memfd of 65536 bytes): IPC stream"),
    "more fds than there is room for": (lambda: [_pipe_read_end() for _ in range(12)],
                                        "more fds than the 8 it may (MSG_CTRUNC)"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_SEALED))
def test_hostile_sealed_producer_is_refused_cleanly(procs, case):
    make_fds, expected = HOSTILE_SEALED[case]

    def send(conn, welcome):
        conn.send(welcome)
        fds = make_fds()
        try:
            socket.send_fds(conn, [_batch(1, 0, 0)], fds)
        finally:
            for fd in fds:
                os.close(fd)

    sock = _socket()
    producer = _hostile_producer(sock, False, send)
    message = _failed(_rust_recv(procs, sock))
    producer.join(TIMEOUT)
    assert expected in message


# --- the arrow-testing integration corpus ----------------------------------------------------

def _integration_files():
    if not CORPUS.is_dir():
        return []
    return sorted(p for p in (CORPUS / "arrow-ipc-stream" / "integration").rglob("*.stream"))


INTEGRATION = _integration_files()
# Where arrow-rs copies a buffer that is not aligned for its Rust type (the IPC format aligns
# buffers to 8 bytes; these types want 16), with the reason.
ARROW_RS_COPIES = {
    "generated_decimal.stream": "decimal128 values are i128, which Rust aligns to 16 bytes",
    "generated_decimal256.stream": "decimal256 values are i256, aligned to 16 bytes",
    "generated_binary_view.stream": "binary views are u128, aligned to 16 bytes",
}


def _corpus_id(path):
    return str(path.relative_to(CORPUS))


def _need_corpus():
    if not CORPUS.is_dir():
        pytest.skip("../shared/arrow-testing not present (it is in CI)")


@pytest.mark.parametrize("path", INTEGRATION, ids=map(_corpus_id, INTEGRATION))
def test_corpus_hand_over_equals_cpp_recv(procs, path):
    _need_corpus()
    sock = _socket()
    sender = _send(procs, "--from", path, "--socket", sock, "--clients", 2)
    rust, cpp = _rust_recv(procs, sock), _cpp_recv(procs, sock)
    got, want = _ok(rust), _ok(cpp)
    _ok(sender)
    in_place = got.pop("buffers_in_mapping")
    want.pop("buffers_in_mapping")
    assert got == want
    assert in_place or path.name in ARROW_RS_COPIES, "a buffer was copied out of the memfd"


def _publish(sock: str, path: Path, mode: str) -> None:
    """Publishes the file's batches with the C++ producer (through the Python binding) to two
    consumers, in `mode`."""
    import shmarrow

    reader = pa.ipc.open_stream(pa.memory_map(str(path)))
    with shmarrow.Producer(sock, reader.schema, mode=mode) as producer:
        producer.wait_for_consumers(2, timeout=TIMEOUT)
        for batch in reader:
            producer.publish(batch)
        producer.end()
        producer.wait_until_drained(timeout=TIMEOUT)


@pytest.mark.parametrize("mode", ["ring", "sealed"])
@pytest.mark.parametrize("path", INTEGRATION, ids=map(_corpus_id, INTEGRATION))
def test_corpus_stream_protocol_equals_cpp_recv(procs, path, mode):
    _need_corpus()
    schema = pa.ipc.open_stream(pa.memory_map(str(path))).schema
    has_dictionary = any(pa.types.is_dictionary(f.type) for f in schema)
    if mode == "ring" and has_dictionary:
        pytest.skip("ring mode does not carry dictionaries (docs/protocol.md)")
    sock = _socket()
    in_place = () if path.name in ARROW_RS_COPIES else ("--check-zero-copy",)
    rust, cpp = _rust_recv(procs, sock, *in_place), _cpp_recv(procs, sock)
    try:
        _publish(sock, path, mode)
    except Exception as error:  # the C++ producer refuses some types in a mode: not ours to test
        pytest.skip(f"the C++ producer does not publish it in {mode} mode: {error}")
    got, want = _ok(rust), _ok(cpp)
    assert got == want

"""The Flight bridge against code that is not ours: pyarrow.flight clients read `shmarrow
flight-serve` (and shmarrow.FlightBridge), and our consumer (`shmarrow recv --from`, shmarrow.Consumer) reads a plain
pyarrow.flight server. Several remote clients at once, one SIGKILLed midway: the others and a
local consumer get the producer's checksums and the producer's ring drains.

The CLI comes from $SHMARROW_BUILD (default <repo>/build); the tests skip when it is missing.
Ports are chosen by the OS (port 0) and read back.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight
import pytest

import shmarrow
from shmarrow.summary import StreamSummary

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("SHMARROW_BUILD", REPO / "build"))
CLI = BUILD / "shmarrow"
TIMEOUT = 30  # seconds any one process or wait may take
CALL = flight.FlightCallOptions(timeout=TIMEOUT)  # a stalled stream fails the test, never hangs it
BATCHES = 40

pytestmark = pytest.mark.skipif(not os.access(CLI, os.X_OK), reason=f"{CLI} not built")

SCHEMA = pa.schema([("id", pa.int64()), ("name", pa.utf8()), ("x", pa.float64())])

# A pyarrow.flight client in its own process: reads the bridge's stream, says "first" after the
# first batch, then (slowly) the rest, and prints the summary as JSON.
REMOTE_CLIENT = """
import json, sys, time
import pyarrow.flight as flight
from shmarrow.summary import StreamSummary
reader = flight.connect(sys.argv[1]).do_get(flight.Ticket(b"stream"),
                                            flight.FlightCallOptions(timeout=30))
summary = StreamSummary(reader.schema)
for chunk in reader:
    summary.add(chunk.data)
    if summary.batches == 1:
        print("first", flush=True)
    time.sleep(float(sys.argv[2]))
print(json.dumps(summary.to_dict()), flush=True)
"""


def _batch(seed: int) -> pa.RecordBatch:
    ids = pa.array(range(seed * 1000, seed * 1000 + 1000), pa.int64())
    names = pa.array([f"n{seed}-{i}" for i in range(1000)])
    xs = pa.array([seed + i / 7 for i in range(1000)], pa.float64())
    return pa.record_batch([ids, names, xs], schema=SCHEMA)


def _summary(batches) -> dict:
    summary = StreamSummary(SCHEMA)
    for batch in batches:
        summary.add(batch)
    return summary.to_dict()


def _checksums(summary: dict) -> list:
    return [(c["name"], c["checksum"]) for c in summary["columns"]]


@pytest.fixture
def producer(tmp_path):
    prod = shmarrow.Producer(str(tmp_path / f"p-{uuid.uuid4().hex[:8]}.sock"), SCHEMA,
                             max_in_flight=4, ring_size=8 << 20)
    yield prod
    prod.close()


@pytest.fixture
def bridge(producer):
    """`shmarrow flight-serve` in front of the producer; yields its address."""
    proc = subprocess.Popen([str(CLI), "flight-serve", "--socket", producer.address],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        location = proc.stdout.readline().strip()
        assert location.startswith("grpc://127.0.0.1:"), proc.stderr.read()
        yield location
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, err


def _publish_when(producer, consumers: int) -> threading.Thread:
    def run():
        producer.wait_for_consumers(consumers, timeout=TIMEOUT)
        for seed in range(BATCHES):
            producer.publish(_batch(seed))
        producer.end()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _read_local(producer) -> dict:
    with shmarrow.Consumer(producer.address, read_timeout=TIMEOUT) as local:
        return _summary(iter(local))


def test_pyarrow_client_reads_the_bridge_with_local_checksums(producer, bridge):
    expected = _summary(_batch(seed) for seed in range(BATCHES))
    reader = flight.connect(bridge).do_get(flight.Ticket(b"stream"), CALL)
    local_summary = {}
    local = threading.Thread(target=lambda: local_summary.update(_read_local(producer)))
    local.start()
    publisher = _publish_when(producer, 2)  # the local consumer, the bridge's for pyarrow
    remote = _summary(chunk.data for chunk in reader)
    publisher.join(TIMEOUT)
    local.join(TIMEOUT)
    assert remote["batches"] == BATCHES
    assert _checksums(remote) == _checksums(local_summary) == _checksums(expected)
    # The bridge describes the same stream to a generic client.
    info = flight.connect(bridge).get_flight_info(flight.FlightDescriptor.for_path("stream"))
    assert info.schema == SCHEMA


def test_remote_clients_one_killed_midway_the_rest_finish_and_the_ring_drains(producer, bridge):
    clients = [subprocess.Popen([sys.executable, "-c", REMOTE_CLIENT, bridge, delay],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for delay in ("0", "0.01", "0.05")]
    local_result = {}
    try:
        local = threading.Thread(target=lambda: local_result.update(_read_local(producer)))
        local.start()
        publisher = _publish_when(producer, 4)
        victim = clients[2]
        assert victim.stdout.readline().strip() == "first"
        victim.kill()  # holds batches through the bridge, and is too slow to have read them all
        victim.wait(TIMEOUT)
        survivors = []
        for client in clients[:2]:
            out, err = client.communicate(timeout=TIMEOUT)
            assert client.returncode == 0, err
            survivors.append(json.loads(out.splitlines()[-1]))
        publisher.join(TIMEOUT)
        local.join(TIMEOUT)
    finally:
        for client in clients:
            if client.poll() is None:
                client.kill()
                client.wait()
    assert victim.returncode == -signal.SIGKILL
    expected = _checksums(_summary(_batch(seed) for seed in range(BATCHES)))
    assert _checksums(local_result) == expected
    for summary in survivors:
        assert summary["batches"] == BATCHES
        assert _checksums(summary) == expected
    # Nothing is held any more, the killed client's share included.
    producer.wait_until_drained(timeout=TIMEOUT)
    assert producer.stats["in_flight"] == 0


def test_python_flight_bridge_serves_a_pyarrow_client(producer):
    expected = _checksums(_summary(_batch(seed) for seed in range(BATCHES)))
    with shmarrow.FlightBridge(producer.address, max_in_flight=2) as bridge:
        assert bridge.location == f"grpc://127.0.0.1:{bridge.port}"
        reader = flight.connect(bridge.location).do_get(flight.Ticket(b"stream"), CALL)
        publisher = _publish_when(producer, 1)
        remote = _summary(chunk.data for chunk in reader)
        publisher.join(TIMEOUT)
        assert _checksums(remote) == expected
        assert bridge.stats["batches_sent"] == BATCHES
    assert bridge.closed
    with pytest.raises(shmarrow.ShmarrowError, match="not a loopback address"):
        shmarrow.FlightBridge(producer.address, "grpc://0.0.0.0:0")


class TableServer(flight.FlightServerBase):
    """A plain pyarrow Flight server: one table, two endpoints, from memory."""

    def __init__(self, table: pa.Table):
        super().__init__("grpc://127.0.0.1:0")
        self.table = table

    def get_flight_info(self, context, descriptor):
        if descriptor.path != [b"table"]:
            raise flight.FlightServerError(f"no flight {descriptor.path}")
        endpoints = [flight.FlightEndpoint(f"part{i}".encode(), []) for i in range(2)]
        return flight.FlightInfo(self.table.schema, descriptor, endpoints, -1, -1)

    def do_get(self, context, ticket):
        half = self.table.num_rows // 2
        part = self.table.slice(0, half) if ticket.ticket == b"part0" else self.table.slice(half)
        return flight.RecordBatchStream(part)


@pytest.fixture
def table_server():
    table = pa.Table.from_batches([_batch(seed) for seed in range(BATCHES)])
    server = TableServer(table)
    yield f"grpc://127.0.0.1:{server.port}", table
    server.shutdown()


def test_recv_from_reads_a_plain_pyarrow_server(table_server):
    address, table = table_server
    out = subprocess.run([str(CLI), "recv", "--from", f"{address}/table", "--json"],
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["mode"] == "flight"
    assert summary["rows"] == table.num_rows
    assert _checksums(summary) == _checksums(_summary(table.to_batches()))


def test_python_consumer_reads_flight(table_server):
    address, table = table_server
    with shmarrow.Consumer(f"{address}/table", read_timeout=TIMEOUT) as consumer:
        assert consumer.mode == "flight"
        assert consumer.read_all().equals(table)


def test_bad_input_is_a_clear_error(producer, bridge, table_server):
    with pytest.raises(Exception, match="unknown ticket 'nope'"):
        flight.connect(bridge).do_get(flight.Ticket(b"nope"), CALL).read_all()
    address, _ = table_server
    out = subprocess.run([str(CLI), "recv", "--from", f"{address}/missing", "--json"],
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 1
    assert "no flight" in out.stderr
    # A bridge that requires a token refuses calls without it.
    token_file = Path(producer.address).with_suffix(".token")
    token_file.write_text("s3cret\n")
    proc = subprocess.Popen([str(CLI), "flight-serve", "--socket", producer.address,
                             "--token-file", str(token_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        guarded = proc.stdout.readline().strip()
        with pytest.raises(flight.FlightUnauthenticatedError, match="bearer token"):
            flight.connect(guarded).do_get(flight.Ticket(b"stream"), CALL).read_all()
        out = subprocess.run([str(CLI), "recv", "--from", guarded, "--json", "--no-upgrade"],
                             capture_output=True, text=True, timeout=TIMEOUT,
                             env={**os.environ, "SHMARROW_FLIGHT_TOKEN": "wrong"})
        assert out.returncode == 1
        assert "missing or wrong bearer token" in out.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=TIMEOUT)
    # Connecting to nothing: the port of a server that is gone.
    gone = flight.FlightServerBase("grpc://127.0.0.1:0")
    port = gone.port
    gone.shutdown()
    with pytest.raises(ConnectionRefusedError, match="no Flight server answers"):
        shmarrow.Consumer(f"grpc://127.0.0.1:{port}")


def _self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate for localhost and 127.0.0.1, and its key (openssl)."""
    cert, key = directory / "bridge-cert.pem", directory / "bridge-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=TIMEOUT)
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None,
                    reason="openssl is not installed: no certificate to test TLS with")
def test_tls_bridge_serves_only_clients_that_trust_its_certificate(producer, tmp_path):
    cert, key = _self_signed_certificate(tmp_path)
    proc = subprocess.Popen([str(CLI), "flight-serve", "--socket", producer.address,
                             "--listen", "grpc+tls://127.0.0.1:0",
                             "--tls-cert", str(cert), "--tls-key", str(key)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        location = proc.stdout.readline().strip()
        assert location.startswith("grpc+tls://127.0.0.1:"), proc.stderr.read()
        # A client without the certificate among its roots does not get through the handshake;
        # neither does one speaking plain gRPC to the TLS port.
        with pytest.raises(flight.FlightError):
            flight.connect(location).do_get(flight.Ticket(b"stream"), CALL).read_all()
        plain = location.replace("grpc+tls://", "grpc://")
        with pytest.raises(flight.FlightError):
            flight.connect(plain).do_get(flight.Ticket(b"stream"), CALL).read_all()
        # Our consumer, trusting it, reads the producer's stream over TLS.
        publisher = _publish_when(producer, 1)
        out = subprocess.run([str(CLI), "recv", "--from", location, "--tls-roots", str(cert),
                              "--no-upgrade", "--json"],
                             capture_output=True, text=True, timeout=TIMEOUT)
        publisher.join(TIMEOUT)
        assert out.returncode == 0, out.stderr
        summary = json.loads(out.stdout)
        assert summary["mode"] == "flight"
        assert summary["batches"] == BATCHES
        assert _checksums(summary) == _checksums(_summary(_batch(s) for s in range(BATCHES)))
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, err

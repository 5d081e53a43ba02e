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


def _serve(args: list[str]) -> tuple[subprocess.Popen, str]:
    """`shmarrow flight-serve ARGS`; the process and the address it printed."""
    proc = subprocess.Popen([str(CLI), "flight-serve", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    location = proc.stdout.readline().strip()
    if not location.startswith("grpc://127.0.0.1:"):
        proc.kill()
        raise AssertionError(proc.communicate(timeout=TIMEOUT)[1])
    return proc, location


def _stop(proc: subprocess.Popen) -> str:
    """SIGTERM; the process must exit cleanly. Its stderr."""
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    return err


@pytest.fixture
def bridge(producer):
    """`shmarrow flight-serve` in front of the producer; yields its address."""
    proc, location = _serve(["--socket", producer.address])
    try:
        yield location
    finally:
        _stop(proc)


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
    proc, guarded = _serve(["--socket", producer.address, "--token-file", str(token_file)])
    try:
        with pytest.raises(flight.FlightUnauthenticatedError, match="bearer token"):
            flight.connect(guarded).do_get(flight.Ticket(b"stream"), CALL).read_all()
        out = subprocess.run([str(CLI), "recv", "--from", guarded, "--json", "--no-upgrade"],
                             capture_output=True, text=True, timeout=TIMEOUT,
                             env={**os.environ, "SHMARROW_FLIGHT_TOKEN": "wrong"})
        assert out.returncode == 1
        assert "missing or wrong bearer token" in out.stderr
        # The Python Consumer takes the token as the C++ one does.
        with pytest.raises(shmarrow.ShmarrowError, match="missing or wrong bearer token"):
            shmarrow.Consumer(guarded, token="wrong", upgrade=False)
        with shmarrow.Consumer(guarded, token="s3cret", upgrade=False) as remote:
            assert remote.mode == "flight"
        with shmarrow.Consumer(guarded, token="s3cret") as upgraded:
            assert upgraded.mode == "ring"  # same host: read through shared memory instead
    finally:
        _stop(proc)
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
        # Our consumers, trusting it, read the producer's stream over TLS: the CLI, and the
        # Python Consumer with the same options.
        python_summary = {}

        def read_python() -> None:
            with shmarrow.Consumer(location, upgrade=False,
                                   tls_root_certs=cert.read_text(),
                                   tls_override_hostname="localhost", read_timeout=TIMEOUT) as remote:
                python_summary.update(_summary(iter(remote)))

        python_reader = threading.Thread(target=read_python)
        python_reader.start()
        publisher = _publish_when(producer, 2)
        out = subprocess.run([str(CLI), "recv", "--from", location, "--tls-roots", str(cert),
                              "--no-upgrade", "--json"],
                             capture_output=True, text=True, timeout=TIMEOUT)
        publisher.join(TIMEOUT)
        python_reader.join(TIMEOUT)
        assert _checksums(python_summary) == _checksums(
            _summary(_batch(s) for s in range(BATCHES)))
        assert out.returncode == 0, out.stderr
        summary = json.loads(out.stdout)
        assert summary["mode"] == "flight"
        assert summary["batches"] == BATCHES
        assert _checksums(summary) == _checksums(_summary(_batch(s) for s in range(BATCHES)))
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, err


# ---- describe, then get (issue 15) ------------------------------------------------------------

def _describe_then_get(location: str, first: str) -> pa.Table:
    """What a generic Flight client does: a metadata call, then DoGet of the ticket it names."""
    client = flight.connect(location)
    descriptor = flight.FlightDescriptor.for_path("stream")
    if first == "get_flight_info":
        ticket = client.get_flight_info(descriptor, CALL).endpoints[0].ticket
    elif first == "list_flights":
        ticket = list(client.list_flights(options=CALL))[0].endpoints[0].ticket
    else:
        assert client.get_schema(descriptor, CALL).schema.names == ["rand"]
        ticket = flight.Ticket(b"stream")
    return client.do_get(ticket, CALL).read_all()


@pytest.mark.parametrize("first", ["get_flight_info", "list_flights", "get_schema"])
@pytest.mark.parametrize("wait_consumers", [1, 2])
def test_describe_then_get_reads_the_whole_stream(first, wait_consumers):
    """The issue's flow: a producer waiting for its consumers, a bridge, a Flight client that
    describes before it reads (with 2, a local consumer beside it). Describing must not count as
    a consumer: the client gets every batch from the first."""
    socket = f"@shmarrow-describe-{uuid.uuid4().hex[:12]}"
    send = subprocess.Popen([str(CLI), "send", "--socket", socket, "--mode", "ring", "--batches",
                             "100", "--rows", "1000", "--wait-consumers", str(wait_consumers),
                             "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    local = None
    try:
        serve, location = _serve(["--socket", socket, "--connect-timeout-ms", str(TIMEOUT * 1000)])
        try:
            if wait_consumers == 2:
                local = subprocess.Popen([str(CLI), "recv", "--socket", socket, "--json",
                                          "--connect-timeout-ms", str(TIMEOUT * 1000)],
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True)
            table = _describe_then_get(location, first)
        finally:
            _stop(serve)
        sent, err = send.communicate(timeout=TIMEOUT)
        assert send.returncode == 0, err
        if local is not None:
            received, err = local.communicate(timeout=TIMEOUT)
            assert local.returncode == 0, err
            assert _checksums(json.loads(received)) == _checksums(json.loads(sent))
    finally:
        for proc in (send, local):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert table.num_rows == 100000
    producer = json.loads(sent)["producer"]
    assert producer["consumers_total"] == wait_consumers  # the describer was not one
    assert producer["dropped"] == 0
    summary = StreamSummary(table.schema)
    for batch in table.to_batches():
        summary.add(batch)
    assert _checksums(summary.to_dict()) == _checksums(json.loads(sent))


def test_schema_change_what_each_flight_client_sees(producer, bridge):
    """Flight has one schema per stream: the DoGet running at the change ends with an error naming
    the new schema; GetFlightInfo then describes the new one, and a new DoGet carries it."""
    changed = pa.schema([*SCHEMA, pa.field("extra", pa.int64())])
    client = flight.connect(bridge)
    old = client.do_get(flight.Ticket(b"stream"), CALL)
    ours = shmarrow.Consumer(bridge, upgrade=False, read_timeout=TIMEOUT)  # our Flight consumer
    producer.wait_for_consumers(2, timeout=TIMEOUT)
    producer.publish(_batch(0))
    producer.change_schema(changed)
    new_batch = pa.record_batch([*_batch(1).columns, pa.array(range(1000), pa.int64())],
                                schema=changed)
    producer.publish(new_batch)
    assert old.read_chunk().data.equals(_batch(0))
    changed_message = r"changed its schema to \(id: int64, name: string, x: double, extra: int64\)"
    with pytest.raises(pa.ArrowInvalid, match=changed_message):
        old.read_chunk()
    with ours:
        assert ours.read_next_batch().equals(_batch(0))
        with pytest.raises(shmarrow.ShmarrowError, match=changed_message):
            ours.read_next_batch()
    info = client.get_flight_info(flight.FlightDescriptor.for_path("stream"), CALL)
    assert info.schema == changed
    new = client.do_get(info.endpoints[0].ticket, CALL)
    assert new.schema == changed  # its consumer is attached: what follows reaches it
    producer.publish(new_batch)
    producer.end()
    assert new.read_all().to_batches() == [new_batch]


# ---- ingest: DoPut into local shared memory ---------------------------------------------------

INGEST_BATCHES = 1000


def _small_batch(seed: int) -> pa.RecordBatch:
    """100 rows: 1,000 of them make a DoPut that is quick to write and check."""
    ids = pa.array(range(seed * 100, seed * 100 + 100), pa.int64())
    names = pa.array([None if i % 7 == 0 else f"p{seed}-{i}" for i in range(100)], pa.utf8())
    xs = pa.array([seed + i / 3 for i in range(100)], pa.float64())
    return pa.record_batch([ids, names, xs], schema=SCHEMA)


def _read_locals(socket: str, count: int) -> tuple[list[threading.Thread], list[dict]]:
    """`count` local consumers of `socket` (waiting for its producer to appear), reading in
    threads; each result is {"summary": ..., "error": str or None} once its thread ends."""
    results = [{} for _ in range(count)]

    def read(result: dict) -> None:
        result["error"] = None
        with shmarrow.Consumer(socket, connect_timeout=TIMEOUT, read_timeout=TIMEOUT) as local:
            summary = StreamSummary(local.schema)
            try:
                for batch in local:
                    summary.add(batch)
            except shmarrow.ShmarrowError as error:
                result["error"] = str(error)
        result["summary"] = summary.to_dict()

    threads = [threading.Thread(target=read, args=(result,)) for result in results]
    for thread in threads:
        thread.start()
    return threads, results


def test_doput_from_pyarrow_reaches_two_local_consumers(tmp_path):
    socket = str(tmp_path / "ingest.sock")
    serve, location = _serve(["--socket", socket, "--ingest", "--wait-consumers", "2",
                              "--max-in-flight", "8", "--ring-size", "8MiB"])
    try:
        threads, results = _read_locals(socket, 2)
        writer, answers = flight.connect(location).do_put(
            flight.FlightDescriptor.for_path("stream"), SCHEMA, CALL)
        for seed in range(INGEST_BATCHES):
            writer.write_batch(_small_batch(seed))
        writer.done_writing()
        answers.read()  # the call's end: every batch is published
        writer.close()
        # Another schema is refused, naming both.
        other = pa.schema([("id", pa.int32())])
        writer, _ = flight.connect(location).do_put(flight.FlightDescriptor.for_path("stream"),
                                                    other, CALL)
        with pytest.raises(pa.ArrowInvalid,
                           match=r"DoPut schema \(id: int32\) differs from the producer's "
                                 r"\(id: int64, name: string, x: double\)"):
            writer.close()
    finally:
        err = _stop(serve)  # ends the ingested stream
    for thread in threads:
        thread.join(TIMEOUT)
    assert f"{INGEST_BATCHES} batches ingested" in err
    expected = _checksums(_summary(_small_batch(seed) for seed in range(INGEST_BATCHES)))
    for result in results:
        assert result["error"] is None
        assert result["summary"]["batches"] == INGEST_BATCHES
        assert _checksums(result["summary"]) == expected


# A pyarrow.flight writer in its own process: DoPut of the _small_batch stream, slowly, saying
# how many batches it has written so far.
REMOTE_WRITER = """
import sys, time
import pyarrow as pa
import pyarrow.flight as flight
sys.path.insert(0, sys.argv[2])
from test_flight import SCHEMA, _small_batch
writer, _ = flight.connect(sys.argv[1]).do_put(flight.FlightDescriptor.for_path("stream"),
                                               SCHEMA, flight.FlightCallOptions(timeout=30))
for seed in range(1000):
    writer.write_batch(_small_batch(seed))
    print(seed + 1, flush=True)
    time.sleep(0.005)
"""


def test_killing_the_remote_writer_leaves_whole_batches(tmp_path):
    socket = str(tmp_path / "ingest.sock")
    serve, location = _serve(["--socket", socket, "--ingest", "--wait-consumers", "2"])
    writer = None
    try:
        threads, results = _read_locals(socket, 2)
        writer = subprocess.Popen([sys.executable, "-c", REMOTE_WRITER, location,
                                   str(Path(__file__).parent)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for line in writer.stdout:
            if int(line) >= 100:
                break
        writer.kill()  # midway, perhaps inside a batch's bytes
        writer.wait(TIMEOUT)
    finally:
        if writer is not None and writer.poll() is None:
            writer.kill()
        err = _stop(serve)
    for thread in threads:
        thread.join(TIMEOUT)
    # Each local consumer saw the end (or an error) after whole batches, the same ones. (Some of
    # the 100 the writer had handed to gRPC may not have reached the bridge before the kill.)
    batches = results[0]["summary"]["batches"]
    assert 0 < batches < INGEST_BATCHES, err
    for result in results:
        assert result["summary"]["batches"] == batches
        assert result["summary"]["rows"] == batches * 100
        assert _checksums(result["summary"]) == _checksums(
            _summary(_small_batch(seed) for seed in range(batches)))


def test_python_flight_bridge_ingests(tmp_path):
    socket = str(tmp_path / "ingest.sock")
    with shmarrow.FlightBridge(socket, ingest=True, wait_consumers=1, mode="sealed") as bridge:
        threads, results = _read_locals(socket, 1)
        writer, _ = flight.connect(bridge.location).do_put(
            flight.FlightDescriptor.for_path("stream"), SCHEMA, CALL)
        for seed in range(BATCHES):
            writer.write_batch(_small_batch(seed))
        writer.close()
        assert bridge.stats["batches_ingested"] == BATCHES
    threads[0].join(TIMEOUT)
    assert results[0]["error"] is None
    assert _checksums(results[0]["summary"]) == _checksums(
        _summary(_small_batch(seed) for seed in range(BATCHES)))


# ---- a Flight client in another language: Go (tests/interop/go) -------------------------------

GO_CLIENT = REPO / "tests" / "interop" / "go"


@pytest.fixture(scope="module")
def go_client(tmp_path_factory) -> Path:
    """The Go program built with the Go Flight client (github.com/apache/arrow-go), its modules
    from the Go module proxy as go.sum pins them."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("go is not installed: the Go Flight client cannot be built")
    binary = tmp_path_factory.mktemp("go") / "interop"
    out = subprocess.run([go, "build", "-buildvcs=false", "-o", str(binary), "."], cwd=GO_CLIENT,
                         capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr
    return binary


def test_go_client_describes_then_reads_the_bridge(go_client, producer, bridge):
    local_summary = {}
    local = threading.Thread(target=lambda: local_summary.update(_read_local(producer)))
    local.start()
    client = subprocess.Popen([str(go_client), "get", bridge], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    publisher = _publish_when(producer, 2)  # the local consumer, the bridge's for Go
    out, err = client.communicate(timeout=TIMEOUT)
    publisher.join(TIMEOUT)
    local.join(TIMEOUT)
    assert client.returncode == 0, err
    remote = json.loads(out)
    assert remote["batches"] == BATCHES
    expected = _checksums(_summary(_batch(seed) for seed in range(BATCHES)))
    assert _checksums(remote) == _checksums(local_summary) == expected


def test_go_doput_reaches_two_local_consumers(go_client, tmp_path):
    socket = str(tmp_path / "ingest.sock")
    serve, location = _serve(["--socket", socket, "--ingest", "--wait-consumers", "2"])
    try:
        threads, results = _read_locals(socket, 2)
        out = subprocess.run([str(go_client), "put", location, str(INGEST_BATCHES)],
                             capture_output=True, text=True, timeout=TIMEOUT)
        assert out.returncode == 0, out.stderr
    finally:
        _stop(serve)
    for thread in threads:
        thread.join(TIMEOUT)
    written = json.loads(out.stdout)
    assert written["batches"] == INGEST_BATCHES
    for result in results:
        assert result["error"] is None
        assert result["summary"]["batches"] == INGEST_BATCHES
        assert _checksums(result["summary"]) == _checksums(written)

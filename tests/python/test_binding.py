"""The compiled binding (shmarrow.Producer, shmarrow.Consumer over the C++ library).

Across processes and languages: the C++ tool publishing to Python (ring, sealed, the single
hand-over), Python publishing to the C++ tool (checksums compared), Python to Python in two
processes. Zero copy: received buffers lie in a memfd mapping of this process (/proc/self/maps),
and batches built in Producer.allocate() memory are published with stats["bytes_copied"] == 0.
Also: polars and duckdb reading a Consumer through the PyCapsule interface, release of shared
memory when the last Python object goes, Ctrl-C during blocking calls, and the exceptions bad input
raises.

Skipped as a whole when the extension is not importable (pip install . at the repository root).
Tests needing the C++ tool look for it in $SHMARROW_BUILD (default <repo>/build) and skip when it
is missing or too old. Sockets are abstract names "@py-test-<uuid>"; every wait has a timeout.
"""

from __future__ import annotations

import gc
import inspect
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pyarrow as pa
import pytest

from conftest import TIMEOUT_S, build_dir, child_env

try:
    from shmarrow import (
        Allocation,
        ClosedError,
        Consumer,
        InvalidError,
        Producer,
        RefusedError,
        RequestError,
        ShmarrowError,
        ShmarrowMemoryError,
        ShmarrowTimeoutError,
        StreamError,
        UnsupportedError,
    )
except ImportError as error:  # pragma: no cover - depends on the build
    pytest.skip(f"the compiled extension shmarrow._native is not importable ({error}); "
                "build it with `pip install .` at the repository root", allow_module_level=True)

from shmarrow.summary import StreamSummary

MODES = ["ring", "sealed"]
INTERRUPT_BOUND_S = 5.0  # Ctrl-C must end a blocking call well within this (it takes ~0.1 s)


def _address() -> str:
    return f"@py-test-{uuid.uuid4().hex}"


# ---- data and helpers -----------------------------------------------------------------------------

def make_batch(i: int) -> pa.RecordBatch:
    """Batch number ``i`` of the test stream: ints, strings, floats and bools, with nulls."""
    n = 40 + 7 * i
    return pa.record_batch({
        "a": pa.array([None if (j + i) % 7 == 0 else j * (i + 1) - 50 for j in range(n)],
                      pa.int64()),
        "s": pa.array([None if j % 5 == 3 else f"row {i}.{j}" * (j % 3) for j in range(n)],
                      pa.utf8()),
        "f": pa.array([j / 7.0 + i for j in range(n)], pa.float64()),
        "b": pa.array([None if j % 11 == 0 else (j + i) % 2 == 0 for j in range(n)], pa.bool_()),
    })


SCHEMA = make_batch(0).schema


def to_shared_memory(producer, batch: pa.RecordBatch) -> tuple:
    """``batch`` rebuilt in memory from producer.allocate(): each buffer filled through a numpy
    view of an allocation. Returns (batch, allocations)."""
    allocations = []
    columns = []
    for column in batch.columns:
        buffers = []
        for buffer in column.buffers():
            if buffer is None:
                buffers.append(None)
                continue
            allocation = producer.allocate(buffer.size)
            view = np.frombuffer(allocation, dtype=np.uint8)
            view[:] = np.frombuffer(buffer, dtype=np.uint8)
            allocations.append(allocation)
            buffers.append(pa.py_buffer(view))
        columns.append(pa.Array.from_buffers(column.type, len(column), buffers,
                                             null_count=column.null_count, offset=column.offset))
    return pa.RecordBatch.from_arrays(columns, schema=batch.schema), allocations


def memfd_mappings() -> list:
    """(start, end, permissions, path) of this process's memfd mappings."""
    out = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and "memfd:" in fields[5]:
                start, end = (int(x, 16) for x in fields[0].split("-"))
                out.append((start, end, fields[1], fields[5].strip()))
    return out


def batch_buffers(batch: pa.RecordBatch) -> list:
    buffers = []
    for column in batch.columns:
        buffers += [b for b in column.buffers() if b is not None and b.size > 0]
        if pa.types.is_dictionary(column.type):
            buffers += [b for b in column.dictionary.buffers() if b is not None and b.size > 0]
    return buffers


def assert_in_memfd(batch: pa.RecordBatch, read_only: bool = True) -> None:
    """Every buffer of ``batch`` lies inside one memfd mapping (read-only for consumers)."""
    mappings = memfd_mappings()
    buffers = batch_buffers(batch)
    assert buffers
    for buffer in buffers:
        inside = [m for m in mappings
                  if m[0] <= buffer.address and buffer.address + buffer.size <= m[1]]
        assert inside, f"buffer at {buffer.address:#x}+{buffer.size} is not in a memfd mapping"
        if read_only:
            assert "w" not in inside[0][2], f"consumer's mapping {inside[0]} is writable"


def summaries_equal(mine: dict, theirs: dict) -> None:
    for key in ("batches", "rows", "columns"):
        assert mine[key] == theirs[key], key


def cli_with(*needles: str):
    """The C++ tool, if its usage (`--help` and each command's) mentions every needle; else the
    test is skipped."""
    path = build_dir() / "shmarrow"
    if not os.access(path, os.X_OK):
        pytest.skip(f"C++ tool {path} is not built (set SHMARROW_BUILD to a build)")
    usage = "".join(
        subprocess.run([path, *command, "--help"], capture_output=True, text=True).stdout
        for command in ([], ["send"], ["recv"]))
    missing = [n for n in needles if n not in usage]
    if missing:
        pytest.skip(f"C++ tool {path} is older than this test (no {', '.join(missing)})")
    return path


def python_child(code: str, *args: str) -> subprocess.Popen:
    """A Python process running ``code`` (with make_batch and to_shared_memory defined)."""
    prelude = "\n".join([
        "import gc, json, sys, time",
        "import numpy as np, pyarrow as pa, shmarrow",
        "from shmarrow.summary import StreamSummary",
        inspect.getsource(make_batch),
        inspect.getsource(to_shared_memory),
    ])
    return subprocess.Popen([sys.executable, "-c", prelude + "\n" + code, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=child_env())


def read_line(proc: subprocess.Popen) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT_S)
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.kill()
        pytest.fail(f"child printed nothing: {proc.communicate()[1]}")
    return line.strip()


@pytest.fixture
def procs():
    started = []

    def start(proc: subprocess.Popen) -> subprocess.Popen:
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@pytest.fixture
def producer():
    """producer(schema=SCHEMA, **options) -> a listening Producer, closed after the test."""
    made = []

    def make(schema=SCHEMA, **options) -> Producer:
        made.append(Producer(_address(), schema, **options))
        return made[-1]

    yield make
    for p in made:
        p.close()


def connect(p: Producer, **options) -> Consumer:
    options.setdefault("read_timeout", TIMEOUT_S)
    return Consumer(p.address, **options)


# ---- across processes and languages --------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_cpp_producer_to_python(mode, procs):
    cli = cli_with("send", "--mode", "--wait-consumers")
    address = _address()
    sender = procs(subprocess.Popen(
        [cli, "send", "--mode", mode, "--socket", address, "--batches", "6", "--rows", "300",
         "--schema", "a:int64,b:utf8,c:float64,d:bool,e:int32", "--null-fraction", "0.2",
         "--wait-consumers", "1", "--accept-timeout-ms", str(TIMEOUT_S * 1000), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    with Consumer(address, connect_timeout=TIMEOUT_S, read_timeout=TIMEOUT_S) as consumer:
        assert consumer.mode == mode
        summary = StreamSummary(consumer.schema)
        for batch in consumer:
            assert_in_memfd(batch)
            summary.add(batch)
        del batch
        assert consumer.ended
    out, err = sender.communicate(timeout=TIMEOUT_S)
    assert sender.returncode == 0, err
    sent = json.loads(out.strip().splitlines()[-1])
    summaries_equal(summary.to_dict(), sent)
    assert summary.rows == 1800


def test_cpp_single_handover_to_python(procs):
    """`shmarrow send` without --mode: the seed's single hand-over of one sealed memfd."""
    cli = cli_with("send")
    address = _address()
    sender = procs(subprocess.Popen(
        [cli, "send", "--socket", address, "--batches", "3", "--rows", "200",
         "--schema", "a:int64,b:utf8", "--null-fraction", "0.1", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    consumer = Consumer(address, connect_timeout=TIMEOUT_S, read_timeout=TIMEOUT_S)
    assert consumer.mode == "handover"
    ready, _, _ = select.select([consumer], [], [], TIMEOUT_S)
    assert ready  # fileno() works for the hand-over too
    summary = StreamSummary(consumer.schema)
    table = consumer.read_all()
    for batch in table.to_batches():
        assert_in_memfd(batch)
        summary.add(batch)
    out, err = sender.communicate(timeout=TIMEOUT_S)
    assert sender.returncode == 0, err
    summaries_equal(summary.to_dict(), json.loads(out.strip().splitlines()[-1]))


@pytest.mark.parametrize("mode", MODES)
def test_python_producer_to_cpp_consumer(mode, producer, procs):
    cli = cli_with("send", "--mode", "--read-timeout-ms")
    p = producer(mode=mode)
    receiver = procs(subprocess.Popen(
        [cli, "recv", "--socket", p.address, "--json", "--connect-timeout-ms",
         str(TIMEOUT_S * 1000), "--read-timeout-ms", str(TIMEOUT_S * 1000)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    p.wait_for_consumers(1, timeout=TIMEOUT_S)
    summary = StreamSummary(SCHEMA)
    for i in range(5):
        batch = make_batch(i)
        summary.add(batch)
        p.publish(batch)
    shared, allocations = to_shared_memory(p, make_batch(5))  # built in shared memory
    copied = p.stats["bytes_copied"]
    summary.add(shared)
    p.publish(shared)
    assert p.stats["bytes_copied"] == copied
    p.end()
    out, err = receiver.communicate(timeout=TIMEOUT_S)
    assert receiver.returncode == 0, err
    received = json.loads(out.strip().splitlines()[-1])
    assert received["mode"] == mode
    summaries_equal(summary.to_dict(), received)
    p.wait_until_drained(timeout=TIMEOUT_S)


PYTHON_PRODUCER = """
address, mode, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
schema = make_batch(0).schema
with shmarrow.Producer(address, schema, mode=mode) as producer:
    print("listening", flush=True)
    producer.wait_for_consumers(1, timeout=30)
    summary = StreamSummary(schema)
    for i in range(count):
        batch, allocations = to_shared_memory(producer, make_batch(i))
        summary.add(batch)
        producer.publish(batch)
        del batch, allocations
    producer.end()
    producer.wait_until_drained(timeout=30)
    gc.collect()
    print(json.dumps({"summary": summary.to_dict(), "stats": producer.stats}), flush=True)
"""


@pytest.mark.parametrize("mode", MODES)
def test_python_to_python_in_two_processes(mode, procs):
    address = _address()
    child = procs(python_child(PYTHON_PRODUCER, address, mode, "8"))
    assert read_line(child) == "listening"
    summary = StreamSummary(SCHEMA)
    with Consumer(address, connect_timeout=TIMEOUT_S, read_timeout=TIMEOUT_S) as consumer:
        assert consumer.mode == mode
        for batch in consumer:
            assert_in_memfd(batch)  # received in place: no copy on this side
            summary.add(batch)
        del batch
    report = json.loads(read_line(child))
    assert child.wait(TIMEOUT_S) == 0, child.stderr.read()
    summaries_equal(summary.to_dict(), report["summary"])
    stats = report["stats"]
    assert stats["published"] == 8
    assert stats["bytes_copied"] == 0  # built in allocate() memory: no copy on that side
    assert stats["in_flight"] == 0
    assert stats["ring_bytes_in_use"] == 0  # every ring block came back


DYING_PRODUCER = """
producer = shmarrow.Producer(sys.argv[1], make_batch(0).schema)
print("listening", flush=True)
producer.wait_for_consumers(1, timeout=30)
producer.publish(make_batch(0))
print("published", flush=True)
time.sleep(60)
"""


def test_a_producer_that_dies_is_a_stream_error(procs):
    address = _address()
    child = procs(python_child(DYING_PRODUCER, address))
    assert read_line(child) == "listening"
    consumer = Consumer(address, read_timeout=TIMEOUT_S)
    first = next(consumer)
    assert read_line(child) == "published"
    child.kill()
    child.wait(TIMEOUT_S)
    with pytest.raises(StreamError, match="without ending the stream"):
        next(consumer)
    assert first.equals(make_batch(0))  # still readable: the mapping outlives the producer
    assert_in_memfd(first)


# ---- zero copy on the producer side ---------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_allocate_builds_batches_in_shared_memory(mode, producer):
    schema = pa.schema([("v", pa.int64())])
    p = producer(schema=schema, mode=mode)
    consumer = connect(p)
    allocation = p.allocate(8 * 1000)
    assert isinstance(allocation, Allocation) and len(allocation) == allocation.nbytes == 8000
    values = np.frombuffer(allocation, dtype=np.int64)  # a view: writes go to shared memory
    values[:] = np.arange(1000) * 3
    assert values.ctypes.data == allocation.address
    mapping = [m for m in memfd_mappings() if m[0] <= allocation.address < m[1]]
    assert mapping and "w" in mapping[0][2]  # the producer's writable memfd mapping
    column = pa.Array.from_buffers(pa.int64(), 1000, [None, pa.py_buffer(values)])
    assert column.buffers()[1].address == allocation.address
    p.publish(pa.record_batch([column], schema=schema))
    assert p.stats["bytes_copied"] == 0
    batch = next(consumer)
    assert batch.column(0).to_numpy().tolist() == (np.arange(1000) * 3).tolist()
    assert_in_memfd(batch)
    del batch, column, values, allocation
    gc.collect()
    p.wait_until_drained(timeout=TIMEOUT_S)
    assert p.stats["ring_bytes_in_use"] == 0


def test_heap_batches_are_copied_once(producer):
    p = producer()
    p.publish(make_batch(0))
    assert p.stats["bytes_copied"] > 0


def test_sealed_allocations_outlive_publish_schema_change_and_close(producer):
    p = producer(mode="sealed")
    consumer = connect(p)
    unused = p.allocate(64)  # made in the arena of the next batch, which does not use it
    np.frombuffer(unused, dtype=np.uint8)[:] = 7
    p.publish(make_batch(0))
    batch = next(consumer)
    del batch
    gc.collect()
    p.wait_until_drained(timeout=TIMEOUT_S)
    # Sealed with the batch (now read-only), still mapped while `unused` lives.
    assert np.frombuffer(unused, dtype=np.uint8).tolist() == [7] * 64
    pending = p.allocate(16)
    np.frombuffer(pending, dtype=np.uint8)[:] = 1
    p.change_schema(pa.schema([("x", pa.int8())]))
    p.close()
    assert np.frombuffer(pending, dtype=np.uint8).tolist() == [1] * 16
    with pytest.raises(ClosedError):
        p.allocate(16)
    del unused, pending
    gc.collect()


# ---- PyCapsule interface consumers ----------------------------------------------------------------

def _published_stream(producer, count=4, **consumer_options):
    p = producer()
    consumer = connect(p, **consumer_options)
    expected = [make_batch(i) for i in range(count)]
    for batch in expected:
        p.publish(batch)
    p.end()
    return p, consumer, pa.Table.from_batches(expected)


def test_pyarrow_reads_the_capsule_stream_in_place(producer):
    p, consumer, expected = _published_stream(producer)
    reader = pa.RecordBatchReader.from_stream(consumer)
    assert reader.schema == SCHEMA
    batches = list(reader)
    for batch in batches:
        assert_in_memfd(batch)
    assert pa.Table.from_batches(batches).equals(expected)
    del reader, batches, batch
    gc.collect()
    p.wait_until_drained(timeout=TIMEOUT_S)


def test_polars_reads_a_consumer(producer):
    pl = pytest.importorskip("polars")
    p, consumer, expected = _published_stream(producer)
    frame = pl.DataFrame(consumer)
    assert frame.shape == (expected.num_rows, 4)
    assert frame["a"].to_list() == expected.column("a").to_pylist()
    assert frame["s"].to_list() == expected.column("s").to_pylist()
    assert frame["b"].to_list() == expected.column("b").to_pylist()
    del frame
    gc.collect()
    p.wait_until_drained(timeout=TIMEOUT_S)


def test_polars_from_arrow_gives_a_series_of_structs_for_a_consumer(producer):
    """What the Consumer docstring says of pl.from_arrow: polars turns every PyCapsule stream
    that is not pyarrow's own into a Series of structs. If this fails, polars changed: make the
    docstring (and examples/python/polars_duckdb.py) name pl.from_arrow."""
    pl = pytest.importorskip("polars")
    p, consumer, expected = _published_stream(producer)
    series = pl.from_arrow(consumer)
    assert isinstance(series, pl.Series)
    assert series.dtype == pl.Struct
    assert series.struct.unnest()["a"].to_list() == expected.column("a").to_pylist()
    del series
    gc.collect()
    p.wait_until_drained(timeout=TIMEOUT_S)


def test_duckdb_reads_a_consumer(producer):
    duckdb = pytest.importorskip("duckdb")
    p, consumer, expected = _published_stream(producer)
    rows = duckdb.sql("SELECT count(*), count(s), sum(a), sum(f) FROM consumer").fetchall()
    a = expected.column("a").to_pylist()
    assert rows[0][:3] == (expected.num_rows, expected.num_rows - expected.column("s").null_count,
                           sum(x for x in a if x is not None))
    assert rows[0][3] == pytest.approx(sum(expected.column("f").to_pylist()))
    gc.collect()
    p.wait_until_drained(timeout=TIMEOUT_S)


def test_publish_takes_tables_pandas_and_iterables(producer):
    p = producer()
    consumer = connect(p)
    table = pa.Table.from_batches([make_batch(1), make_batch(2)])
    p.publish(table)  # __arrow_c_stream__: one message per batch
    p.publish(make_batch(3).to_pandas())  # converted to the producer's schema
    p.publish([make_batch(4), make_batch(5)])
    p.publish(pa.RecordBatchReader.from_batches(SCHEMA, (make_batch(i) for i in (6, 7))))
    p.end()
    got = list(consumer)
    assert [len(b) for b in got] == [len(make_batch(i)) for i in range(1, 8)]
    assert got[2].equals(make_batch(3))
    assert got[6].equals(make_batch(7))
    with pytest.raises(TypeError):
        producer().publish(42)


def test_publish_takes_polars_frames(producer):
    pl = pytest.importorskip("polars")
    p = producer()
    consumer = connect(p)
    p.publish(pl.from_arrow(make_batch(1)))  # exported with string_view: cast to the schema
    p.end()
    (got,) = list(consumer)
    assert got.equals(make_batch(1))


# ---- memory returns when Python lets go -------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_batches_are_released_on_garbage_collection(mode, producer):
    p = producer(mode=mode)
    consumer = connect(p)
    p.publish(make_batch(0))
    batch = next(consumer)
    view = np.frombuffer(batch.column("f").buffers()[1], dtype=np.float64)  # a numpy view
    del batch
    time.sleep(0.2)
    assert p.stats["in_flight"] == 1  # the view still holds the batch's memory
    assert view[1] == pytest.approx(1 / 7.0)
    del view
    gc.collect()
    p.wait_until_drained(timeout=TIMEOUT_S)
    assert p.stats["in_flight"] == 0

    # In a reference cycle: released by the collector.
    p.publish(make_batch(1))
    cycle = [next(consumer)]
    cycle.append(cycle)
    del cycle
    gc.collect()
    p.wait_until_drained(timeout=TIMEOUT_S)

    # A table from read_all(), and a slice of it.
    p.publish(make_batch(2))
    p.end()
    table = consumer.read_all()
    piece = table.column("s").slice(3, 4)
    del table
    time.sleep(0.2)
    assert p.stats["in_flight"] == 1
    del piece
    gc.collect()
    p.wait_until_drained(timeout=TIMEOUT_S)
    assert p.stats["ring_bytes_in_use"] == 0


def test_released_after_the_consumer_is_closed(producer):
    p = producer()
    consumer = connect(p)
    p.publish(make_batch(0))
    batch = next(consumer)
    consumer.close()
    assert batch.column("a").equals(make_batch(0).column("a"))  # still valid
    with pytest.raises(ClosedError):
        next(consumer)
    del batch
    gc.collect()
    p.wait_until_drained(timeout=TIMEOUT_S)


# ---- Ctrl-C -----------------------------------------------------------------------------------

CHILD_INTERRUPTIBLE = """
what = sys.argv[1]
address = sys.argv[2]
try:
    if what == "iterate":
        consumer = shmarrow.Consumer(address)
        print("ready", flush=True)
        for batch in consumer:
            pass
    elif what == "connect":
        print("ready", flush=True)
        shmarrow.Consumer(address, connect_timeout=None)
    elif what == "wait_for_consumers":
        producer = shmarrow.Producer(address, make_batch(0).schema)
        print("ready", flush=True)
        producer.wait_for_consumers(1)
    elif what == "pyarrow_reader":
        consumer = shmarrow.Consumer(address)
        print("ready", flush=True)
        try:
            pa.RecordBatchReader.from_stream(consumer).read_all()
        except Exception as e:  # the reader's own error; KeyboardInterrupt follows at once
            print("reader:", type(e).__name__, e, flush=True)
            for _ in range(100):
                time.sleep(0.01)
    print("not interrupted", flush=True)
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
    sys.exit(3)
"""


@pytest.mark.parametrize("what", ["iterate", "connect", "wait_for_consumers", "pyarrow_reader"])
def test_ctrl_c_interrupts_blocking_calls(what, producer, procs):
    address = _address()
    if what in ("iterate", "pyarrow_reader"):
        address = producer().address  # a producer that never publishes
    child = procs(python_child(CHILD_INTERRUPTIBLE, what, address))
    assert read_line(child) == "ready"
    time.sleep(0.5)  # well inside the blocking call
    sent = time.monotonic()
    child.send_signal(signal.SIGINT)
    try:
        out, err = child.communicate(timeout=INTERRUPT_BOUND_S)
    except subprocess.TimeoutExpired:
        child.kill()
        pytest.fail(f"{what}: still blocked {INTERRUPT_BOUND_S} s after SIGINT")
    elapsed = time.monotonic() - sent
    assert child.returncode == 3, (out, err)
    # Through pyarrow's reader, the read fails with pyarrow's error ("interrupted by a signal")
    # and KeyboardInterrupt follows as soon as Python code runs again.
    assert out.strip().splitlines()[-1] == "KeyboardInterrupt"
    assert elapsed < INTERRUPT_BOUND_S


BLOCKED_AT_EXIT = """
import threading
elsewhere = sys.argv[1]  # a producer in the parent: never publishes
consumer = shmarrow.Consumer(elsewhere)
other = shmarrow.Consumer(elsewhere)
producer = shmarrow.Producer(sys.argv[2], make_batch(0).schema, max_in_flight=1)
slow = shmarrow.Consumer(producer.address)  # never reads: publish() blocks on it


def publish_forever():
    for i in range(10):
        producer.publish(make_batch(i))


blocked = [
    lambda: next(consumer),
    lambda: pa.RecordBatchReader.from_stream(other).read_all(),
    lambda: producer.wait_for_consumers(5),
    publish_forever,
    lambda: shmarrow.Consumer(sys.argv[3], connect_timeout=None),
]
for target in blocked:
    threading.Thread(target=target, daemon=True).start()
time.sleep(0.5)
print("exiting", flush=True)
"""


def test_exit_while_daemon_threads_are_blocked(producer, procs):
    """Daemon threads blocked in the library must not crash the interpreter's exit."""
    for _ in range(3):
        child = procs(python_child(BLOCKED_AT_EXIT, producer().address, _address(), _address()))
        out, err = child.communicate(timeout=TIMEOUT_S)
        assert out.strip() == "exiting"
        assert child.returncode == 0, err
        assert "terminate called" not in err


# ---- non-blocking use -------------------------------------------------------------------------

def test_try_next_fileno_and_schema_changes(producer):
    p = producer()
    consumer = connect(p)
    assert consumer.try_next() is None and not consumer.ended
    assert select.select([consumer], [], [], 0.05)[0] == []
    p.publish(make_batch(0))
    assert select.select([consumer], [], [], TIMEOUT_S)[0] == [consumer]
    assert consumer.try_next().equals(make_batch(0))
    # A schema change whose batch has not come yet: nothing to take, no error.
    wider = SCHEMA.append(pa.field("extra", pa.int32()))
    p.change_schema(wider)
    time.sleep(0.1)
    assert consumer.try_next() is None
    batch = make_batch(1).append_column("extra", pa.array(range(len(make_batch(1))), pa.int32()))
    p.publish(batch)
    deadline = time.monotonic() + TIMEOUT_S
    got = None
    while got is None and time.monotonic() < deadline:
        select.select([consumer], [], [], 1)
        got = consumer.try_next()
    assert got.equals(batch)
    assert consumer.schema == wider
    assert consumer.stats["schema_changes"] == 1
    p.end()
    select.select([consumer], [], [], TIMEOUT_S)
    assert consumer.try_next() is None and consumer.ended


def test_read_all_refuses_a_changing_schema(producer):
    p = producer()
    consumer = connect(p)
    p.publish(make_batch(0))
    p.change_schema(pa.schema([("x", pa.int8())]))
    p.publish(pa.record_batch({"x": pa.array([1], pa.int8())}))
    p.end()
    with pytest.raises(InvalidError, match="changed the schema"):
        consumer.read_all()


# ---- library features -------------------------------------------------------------------------

def test_projection_fan_out_and_late_joiners(producer):
    p = producer(retain=2)
    both = [connect(p), connect(p)]
    only_s = connect(p, columns=["s"])
    assert only_s.schema == pa.schema([SCHEMA.field("s")])
    for i in range(4):
        p.publish(make_batch(i))
    late = connect(p, start_at_oldest=True)
    p.end()
    for consumer in both:
        assert pa.Table.from_batches(list(consumer)).equals(
            pa.Table.from_batches([make_batch(i) for i in range(4)]))
    projected = list(only_s)
    assert [b.schema for b in projected] == [only_s.schema] * 4
    assert projected[1].column("s").equals(make_batch(1).column("s"))
    assert_in_memfd(projected[1])
    assert [len(b) for b in late] == [len(make_batch(2)), len(make_batch(3))]
    assert p.stats["consumers_total"] == 4


def test_lossy_consumer_drops_instead_of_blocking(producer):
    p = producer(block_timeout=0)
    lossy = connect(p, lossy=True, max_in_flight=1)
    for i in range(10):
        p.publish(make_batch(i))  # never blocks: the lossy consumer loses its oldest instead
    p.end()
    received = []
    for batch in lossy:  # each batch released before the next (it may hold only one)
        received.append(batch.column("a").to_pylist())
        del batch
    assert 0 < len(received) < 10
    assert len(received) + lossy.dropped == 10
    assert p.stats["dropped"] == lossy.dropped
    assert received[-1] == make_batch(9).column("a").to_pylist()


def test_back_pressure_with_block_timeout(producer):
    p = producer(block_timeout=0.2, max_in_flight=1)
    consumer = connect(p)
    p.publish(make_batch(0))  # held by the consumer (its one credit)
    p.publish(make_batch(1))  # queued
    start = time.monotonic()
    with pytest.raises(ShmarrowTimeoutError, match="room"):
        p.publish(make_batch(2))
    assert time.monotonic() - start >= 0.15
    first = next(consumer)
    del first
    gc.collect()
    p.publish(make_batch(2))  # room again


def test_requests(producer):
    p = producer()
    consumer = connect(p)
    with pytest.raises(RequestError, match="no request handler"):
        consumer.request(b"rows=3")

    def handler(request: bytes):
        text = request.decode()
        if text.startswith("rows="):
            return make_batch(0).slice(0, int(text[5:]))
        if text == "table":
            return pa.Table.from_batches([make_batch(1), make_batch(2)])
        if text == "generator":
            return (make_batch(i) for i in range(3))
        if text == "nothing":
            return None
        raise ValueError(f"unknown request {text!r}")

    p.set_request_handler(handler)
    assert consumer.request("rows=3").read_all().equals(
        pa.Table.from_batches([make_batch(0).slice(0, 3)]))
    assert consumer.request("table").read_all().num_rows == len(make_batch(1)) + len(
        make_batch(2))
    answer = list(consumer.request(b"generator"))
    assert [len(b) for b in answer] == [len(make_batch(i)) for i in range(3)]
    assert consumer.request("nothing").read_all().num_rows == 0
    with pytest.raises(RequestError, match="ValueError: unknown request 'bogus'"):
        consumer.request("bogus")
    # The stream goes on beside the requests.
    p.publish(make_batch(5))
    assert next(consumer).equals(make_batch(5))


def test_producer_context_manager_ends_the_stream():
    address = _address()
    with Producer(address, SCHEMA, mode="sealed") as p:
        consumer = Consumer(address, read_timeout=TIMEOUT_S)
        p.publish(make_batch(0))
        batch = next(consumer)
    assert p.closed
    assert batch.equals(make_batch(0))
    assert list(consumer) == [] and consumer.ended  # end() came before close()


def test_producer_threads_publish_concurrently(producer):
    p = producer()
    consumer = connect(p)
    errors = []

    def publish(offset):
        try:
            for i in range(20):
                p.publish(make_batch(offset + i))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=publish, args=(k * 100,)) for k in range(3)]
    for t in threads:
        t.start()
    received = 0
    while received < 60:
        next(consumer)  # released at once
        received += 1
    for t in threads:
        t.join(TIMEOUT_S)
    assert not errors
    assert p.stats["published"] == 60


# ---- bad input --------------------------------------------------------------------------------

def test_no_producer_at_the_address(tmp_path):
    with pytest.raises(ConnectionRefusedError) as raised:
        Consumer(_address())
    assert isinstance(raised.value, ShmarrowError)
    assert "no producer is listening" in str(raised.value)
    with pytest.raises(FileNotFoundError):
        Consumer(str(tmp_path / "nothing.sock"))
    start = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        Consumer(_address(), connect_timeout=0.3)
    assert time.monotonic() - start >= 0.25


def test_schema_mismatch_and_unknown_columns_are_refused(producer):
    p = producer()
    other = pa.schema([("a", pa.int32())])
    with pytest.raises(RefusedError, match="refused") as raised:
        connect(p, expect_schema=other)
    assert isinstance(raised.value, ConnectionError)
    connect(p, expect_schema=pa.schema([SCHEMA.field("a")]), schema_match="subset").close()
    with pytest.raises(RefusedError, match="nope"):
        connect(p, columns=["a", "nope"])
    with pytest.raises(ValueError, match="schema_match"):
        connect(p, schema_match="loose")


def test_producer_limits_refuse_consumers(producer):
    p = producer(max_consumers=1)
    first = connect(p)
    with pytest.raises(RefusedError, match="limit 1"):
        connect(p)
    assert p.stats["consumers"] == 1
    first.close()


def test_publishing_errors(producer):
    p = producer()
    with pytest.raises(InvalidError, match=r"batch schema \{z: int64\} differs from the "
                       r"producer's schema \{a: int64, .*cast=True"):
        p.publish(pa.record_batch({"z": [1]}))
    p.end()
    with pytest.raises(InvalidError, match="ended"):
        p.publish(make_batch(0))
    with pytest.raises(UnsupportedError, match="sealed mode"):
        producer(schema=pa.schema([("d", pa.dictionary(pa.int8(), pa.utf8()))]))
    with pytest.raises(ValueError, match="mode"):
        producer(mode="circular")
    small = producer(ring_size=1 << 16, block_timeout=0)
    with pytest.raises(ShmarrowMemoryError, match="never fit"):
        small.allocate(1 << 20)
    held = [small.allocate(8192) for _ in range(6)]
    with pytest.raises(ShmarrowTimeoutError, match="ring full"):
        small.allocate(16384)
    del held
    small.allocate(16384)  # the ring's space came back
    small.close()
    with pytest.raises(ClosedError):
        small.publish(make_batch(0))


def test_timeouts(producer):
    p = producer()
    consumer = connect(p, read_timeout=0.3)
    start = time.monotonic()
    with pytest.raises(ShmarrowTimeoutError, match="within 300 ms"):
        next(consumer)
    assert time.monotonic() - start >= 0.25
    with pytest.raises(TimeoutError, match="2 consumer"):
        p.wait_for_consumers(2, timeout=0.2)
    p.publish(make_batch(0))
    with pytest.raises(ShmarrowTimeoutError, match="in flight"):
        p.wait_until_drained(timeout=0.2)
    assert consumer.read_next_batch(read_timeout=1).equals(make_batch(0))


# What the library says about each kind of bad input from a producer of the single hand-over
# (tests/python/seedlike_sender.py); None: Arrow's own message about the broken stream.
HANDOVER_BAD_INPUT = {
    "no-fd": "carried no fd",
    "two-fds": "sent 2 fds",
    "five-fds": "fds",
    "pipe": "not a memfd",
    "regular-file": "not a memfd",
    "unsealed": "missing F_SEAL",
    "writable": "missing F_SEAL_SEAL|F_SEAL_WRITE",
    "truncated": None,
    "garbage": None,
    "close-early": "closed the connection before sending an fd",
    "short-file": None,
    "empty": "is empty",
}


def test_every_bad_input_mode_is_covered():
    from seedlike_sender import CORRUPT_MODES

    assert set(HANDOVER_BAD_INPUT) == set(CORRUPT_MODES)


@pytest.mark.parametrize("mode", sorted(HANDOVER_BAD_INPUT))
def test_bad_input_raises_a_clear_exception(serve, sock_path, mode):
    producer = serve(sock_path, "--corrupt", mode)
    with pytest.raises(ShmarrowError) as raised:
        with Consumer(sock_path, connect_timeout=TIMEOUT_S, read_timeout=TIMEOUT_S) as consumer:
            consumer.read_all()
    producer.finish()
    message = str(raised.value)
    assert message and "\n" not in message.strip()
    if HANDOVER_BAD_INPUT[mode] is not None:
        assert HANDOVER_BAD_INPUT[mode] in message

"""Producer.memory_pool: pyarrow functions build straight into the producer's shared memory.

Each test builds data with ``memory_pool=producer.memory_pool``, publishes it, checks that nothing
was copied on the way (``stats["bytes_copied"] == 0``) and that a consumer reads back equal data.
Also: the sealed mode's rule (memory of the next batch), what still copies (counted), and the
pool's lifetime (it outlives the producer's close; allocating after it fails cleanly).
"""

from __future__ import annotations

import datetime
import decimal
import gc
import io
import threading
import uuid
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv
import pyarrow.ipc
import pyarrow.json
import pytest

from conftest import TIMEOUT_S

shmarrow = pytest.importorskip("shmarrow._native_api", reason="the compiled extension is not built")
Consumer, Producer = shmarrow.Consumer, shmarrow.Producer

MODES = ["ring", "sealed"]
STRINGS = ["a", None, "a longer string, past any inline size", ""]


def _address() -> str:
    return f"@py-pool-{uuid.uuid4().hex}"


# Columns of the types named in the issue, each built by pa.array in the pool.
COLUMNS: dict[str, tuple[pa.DataType, list]] = {
    "strings": (pa.string(), STRINGS),
    "lists": (pa.list_(pa.int32()), [[1, 2], None, [], [3]]),
    "structs": (pa.struct([("x", pa.float64()), ("s", pa.string())]),
                [{"x": 1.5, "s": "p"}, None, {"x": None, "s": "q"}, {"x": 2.0, "s": None}]),
    "timestamps": (pa.timestamp("us", tz="UTC"),
                   [datetime.datetime(2026, 12, 5, 16, 0, tzinfo=datetime.timezone.utc), None,
                    datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc),
                    datetime.datetime(2000, 2, 29, 12, 30, 15, 123456,
                                      tzinfo=datetime.timezone.utc)]),
    "decimals": (pa.decimal128(12, 3),
                 [decimal.Decimal("123456789.123"), None, decimal.Decimal("-0.001"),
                  decimal.Decimal("0")]),
}


def publish_and_read(mode: str, build: Callable[[pa.MemoryPool], pa.RecordBatch | pa.Table],
                     schema: pa.Schema) -> tuple[pa.Table, pa.Table, dict]:
    """Builds with the pool, publishes, reads it back: (what was built, what arrived, stats)."""
    # drain_timeout 0: what arrived is still held here when the producer closes.
    with Producer(_address(), schema, mode=mode, drain_timeout=0) as producer:
        consumer = Consumer(producer.address, read_timeout=TIMEOUT_S)
        producer.wait_for_consumers(1, timeout=TIMEOUT_S)
        built = build(producer.memory_pool)
        assert producer.memory_pool.bytes_allocated() > 0
        producer.publish(built)
        stats = producer.stats
        producer.end()
        received = consumer.read_all()
        consumer.close()
    if isinstance(built, pa.RecordBatch):
        built = pa.Table.from_batches([built])
    return built, received, stats


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("column", sorted(COLUMNS))
def test_arrays_built_in_the_pool_are_published_without_a_copy(mode, column):
    kind, values = COLUMNS[column]
    schema = pa.schema([(column, kind)])

    def build(pool: pa.MemoryPool) -> pa.RecordBatch:
        return pa.record_batch([pa.array(values, kind, memory_pool=pool)], schema=schema)

    built, received, stats = publish_and_read(mode, build, schema)
    assert stats["bytes_copied"] == 0
    assert received.equals(built)
    assert received.column(0).to_pylist() == values


WORDS = ["red", "green", None, "red", "blue", "green"]
WORDS_TYPE = pa.dictionary(pa.int32(), pa.string())


def _dictionaries(array: pa.Array) -> list[pa.Array]:
    """The dictionaries in `array`, nested ones included."""
    if isinstance(array, pa.DictionaryArray):
        return [array.dictionary]
    if isinstance(array, pa.ListArray):
        return _dictionaries(array.values)
    return []


def _dictionary_body_bytes(batch: pa.RecordBatch) -> int:
    """What the dictionary messages of `batch` carry: each dictionary's buffers (its validity
    bitmap only where it has nulls, as Arrow's writer sends it)."""
    total = 0
    for column in batch.columns:
        for dictionary in _dictionaries(column):
            buffers = dictionary.buffers()
            if dictionary.null_count == 0:
                buffers = buffers[1:]
            total += sum(b.size for b in buffers if b is not None)
    return total


def _dictionary_first(pool: pa.MemoryPool) -> pa.DictionaryArray:
    dictionary = pa.array(["red", "green", "blue"], memory_pool=pool)
    indices = pa.array([0, 1, None, 0, 2, 1], pa.int32(), memory_pool=pool)
    return pa.DictionaryArray.from_arrays(indices, dictionary)


# The ways pyarrow builds a dictionary column in the pool (a cast to a dictionary type builds in
# the default pool whatever memory_pool says: copied whole). All but the explicit dictionary-first
# one write the indices before the dictionary.
DICTIONARY_BUILDERS: dict[str, Callable[[pa.MemoryPool], pa.Array]] = {
    "dictionary_encode": lambda pool: pc.dictionary_encode(pa.array(WORDS, memory_pool=pool),
                                                           memory_pool=pool),
    "pa.array": lambda pool: pa.array(WORDS, WORDS_TYPE, memory_pool=pool),
    "from_arrays": lambda pool: pa.DictionaryArray.from_arrays(
        pa.array([0, 1, None, 0, 2, 1], pa.int32(), memory_pool=pool),
        pa.array(["red", "green", "blue"], memory_pool=pool)),
    "from_arrays, dictionary first": _dictionary_first,
}


def _memfd_mapping_around(address: int) -> pa.Buffer:
    """This process's mapping of the memfd holding `address`, from the file's first byte on."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if start <= address < end and "memfd:" in line:
                assert int(fields[2], 16) == 0, line  # mapped from the file's start
                return pa.foreign_buffer(start, end - start)
    raise AssertionError(f"no memfd mapping holds {address:#x}")


@pytest.mark.parametrize("builder", sorted(DICTIONARY_BUILDERS))
def test_sealed_mode_copies_only_the_dictionaries(builder):
    """A stream holds each dictionary in a message of its own before the batch, so a dictionary
    built after (or among) the batch's buffers cannot stay where it was built: it is copied, with
    its message, in front of the batch (counted); the batch's columns are shared in place."""
    schema = pa.schema([("n", pa.int64()), ("d", WORDS_TYPE), ("after", pa.string())])
    build_column = DICTIONARY_BUILDERS[builder]

    def build(pool: pa.MemoryPool) -> pa.RecordBatch:
        before = pa.array(range(len(WORDS)), pa.int64(), memory_pool=pool)
        column = build_column(pool)
        return pa.record_batch([before, column, pa.array(STRINGS + STRINGS[:2], memory_pool=pool)],
                               schema=schema)

    built, received, stats = publish_and_read("sealed", build, schema)
    assert stats["bytes_copied"] == _dictionary_body_bytes(built.to_batches()[0]) > 0
    assert received.equals(built)
    assert received.column("d").to_pylist() == WORDS


def test_sealed_mode_copies_only_the_dictionaries_of_several_and_nested_columns():
    kinds = {"a": WORDS_TYPE, "b": pa.dictionary(pa.int8(), pa.int64()),
             "nested": pa.list_(WORDS_TYPE)}
    schema = pa.schema(list(kinds.items()))
    values = {"a": WORDS, "b": [7, None, 7, 8, 9, 7],
              "nested": [["red"], None, [], ["blue", "red"], [None], ["green"]]}

    def build(pool: pa.MemoryPool) -> pa.RecordBatch:
        return pa.record_batch([pa.array(values[name], kind, memory_pool=pool)
                                for name, kind in kinds.items()], schema=schema)

    built, received, stats = publish_and_read("sealed", build, schema)
    assert stats["bytes_copied"] == _dictionary_body_bytes(built.to_batches()[0]) > 0
    assert received.equals(built)
    assert received.to_pydict() == values


def test_a_sealed_stream_with_dictionaries_is_a_standard_ipc_stream():
    """The placed stream, read back byte for byte, is what any Arrow reader reads."""
    schema = pa.schema([("d", WORDS_TYPE), ("nested", pa.list_(WORDS_TYPE))])
    with Producer(_address(), schema, mode="sealed", drain_timeout=0) as producer:
        consumer = Consumer(producer.address, read_timeout=TIMEOUT_S)
        producer.wait_for_consumers(1, timeout=TIMEOUT_S)
        pool = producer.memory_pool
        built = pa.record_batch([pa.array(WORDS, WORDS_TYPE, memory_pool=pool),
                                 pa.array([["a"], None, ["b", "a"], [], None, ["c"]],
                                          pa.list_(WORDS_TYPE), memory_pool=pool)],
                                schema=schema)
        producer.publish(built)
        received = consumer.read_next_batch()
        stream = _memfd_mapping_around(received.column(0).indices.buffers()[1].address)
        assert pa.ipc.open_stream(stream).read_all().equals(pa.Table.from_batches([built]))
        del received, stream
        producer.end()
        consumer.close()


CSV = b"id,name,price\n1,apple,0.5\n2,,1.25\n3,cherry,\n"
JSON = b'{"id": 1, "tags": ["a", "b"]}\n{"id": 2, "tags": []}\n{"id": 3, "tags": null}\n'


def _ipc_stream() -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, pa.schema([("x", pa.int64()), ("s", pa.string())])) as writer:
        writer.write_batch(pa.record_batch({"x": [1, 2, None], "s": ["u", None, "w"]}))
    return sink.getvalue()


# pyarrow functions taking memory_pool=, each building one batch of data.
BUILDERS: dict[str, Callable[[pa.MemoryPool | None], pa.RecordBatch | pa.Table]] = {
    "compute": lambda pool: pa.table({
        "upper": pc.utf8_upper(pa.array(STRINGS, memory_pool=pool), memory_pool=pool),
        "sum": pc.add(pa.array([1, 2, None, 4], memory_pool=pool), 10, memory_pool=pool)}),
    "cast": lambda pool: pa.table({
        "s": pc.cast(pa.array([1, None, 300], memory_pool=pool), pa.string(), memory_pool=pool)}),
    "csv": lambda pool: pa.csv.read_csv(io.BytesIO(CSV), memory_pool=pool),
    "json": lambda pool: pa.json.read_json(io.BytesIO(JSON), memory_pool=pool),
}


@pytest.mark.parametrize("mode", MODES)
def test_the_ipc_reader_reads_into_the_pool(mode, tmp_path):
    """A file opened with the pool reads the messages' bodies into it (a reader over bytes or a
    pyarrow Buffer hands out slices of that memory instead, which publishing copies)."""
    path = tmp_path / "stream.arrows"
    path.write_bytes(_ipc_stream())

    def build(pool: pa.MemoryPool | None) -> pa.Table:
        source = pa.OSFile(str(path), memory_pool=pool)
        return pa.ipc.open_stream(source, memory_pool=pool).read_all()

    built, received, stats = publish_and_read(mode, build, build(None).schema)
    assert stats["bytes_copied"] == 0
    assert received.equals(built)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("builder", sorted(BUILDERS))
def test_pyarrow_functions_build_in_the_pool(mode, builder):
    build = BUILDERS[builder]
    schema = build(None).schema
    built, received, stats = publish_and_read(mode, build, schema)
    assert stats["bytes_copied"] == 0
    assert received.equals(built)


def test_a_pandas_frame_is_copied_once_and_counted():
    """pandas keeps its columns in numpy or in Arrow arrays of its own: publishing a DataFrame
    copies them into shared memory once, and says so."""
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"name": ["a", "bb", None], "n": [1, 2, 3]})
    batch = pa.RecordBatch.from_pandas(frame, preserve_index=False)
    with Producer(_address(), batch.schema, drain_timeout=0) as producer:
        consumer = Consumer(producer.address, read_timeout=TIMEOUT_S)
        producer.wait_for_consumers(1, timeout=TIMEOUT_S)
        producer.publish(frame)
        assert producer.stats["bytes_copied"] == batch.get_total_buffer_size()
        producer.end()
        assert consumer.read_all().equals(pa.Table.from_batches([batch]))
        consumer.close()


def test_a_polars_frame_is_copied_once_and_counted():
    """polars builds in its own memory (and exports other layouts: cast, then copied once)."""
    pl = pytest.importorskip("polars")
    frame = pl.DataFrame({"n": [1, 2, 3], "s": ["a", None, "ccc"]})
    schema = pa.schema([("n", pa.int64()), ("s", pa.string())])
    expected = pa.table(frame).cast(schema)
    with Producer(_address(), schema, drain_timeout=0) as producer:
        consumer = Consumer(producer.address, read_timeout=TIMEOUT_S)
        producer.wait_for_consumers(1, timeout=TIMEOUT_S)
        producer.publish(frame)
        assert producer.stats["bytes_copied"] == expected.get_total_buffer_size()
        producer.end()
        assert consumer.read_all().equals(expected)
        consumer.close()


def test_sealed_mode_builds_in_the_arena_of_the_next_batch():
    """Memory from the pool belongs to the batch published next: data built before an earlier
    publish lies in an arena that is sealed already, so it is copied (counted), not shared."""
    schema = pa.schema([("s", pa.string())])
    with Producer(_address(), schema, mode="sealed") as producer:
        pool = producer.memory_pool
        early = pa.record_batch([pa.array(["built early"], memory_pool=pool)], schema=schema)
        first = pa.record_batch([pa.array(["first"], memory_pool=pool)], schema=schema)
        producer.publish(first)
        assert producer.stats["bytes_copied"] == 0
        second = pa.record_batch([pa.array(["second"], memory_pool=pool)], schema=schema)
        producer.publish(second)
        assert producer.stats["bytes_copied"] == 0
        producer.publish(early)
        assert producer.stats["bytes_copied"] > 0


@pytest.mark.parametrize("mode", MODES)
def test_the_pool_outlives_its_producer_and_fails_cleanly_after_close(mode):
    schema = pa.schema([("s", pa.string())])
    producer = Producer(_address(), schema, mode=mode)
    pool = producer.memory_pool
    assert pool is producer.memory_pool
    assert pool.backend_name == f"shmarrow-{mode}"
    kept = pa.array(["kept", None, "after close"], memory_pool=pool)
    producer.close()
    with pytest.raises(pa.ArrowInvalid, match="is closed"):
        pa.array(["more"], memory_pool=pool)
    del producer
    gc.collect()
    assert kept.to_pylist() == ["kept", None, "after close"]  # its memory is still there
    del pool
    gc.collect()
    assert kept.to_pylist() == ["kept", None, "after close"]
    del kept  # frees into the pool, which goes with it (and the producer with the pool)
    gc.collect()


def test_memory_returns_to_the_ring_when_pyarrow_and_the_consumers_free_it():
    schema = pa.schema([("s", pa.string())])
    with Producer(_address(), schema, drain_timeout=0) as producer:
        consumer = Consumer(producer.address, read_timeout=TIMEOUT_S)
        producer.wait_for_consumers(1, timeout=TIMEOUT_S)
        pool = producer.memory_pool
        batch = pa.record_batch([pa.array(["x" * 1000] * 100, memory_pool=pool)], schema=schema)
        producer.publish(batch)
        received = consumer.read_next_batch()
        del batch
        gc.collect()
        held = pool.bytes_allocated()
        assert held > 0  # the published batch still holds it
        del received
        gc.collect()
        producer.wait_until_drained(timeout=TIMEOUT_S)
        assert pool.bytes_allocated() == 0
        assert pool.max_memory() >= held  # the peak stays
        assert pool.total_bytes_allocated() >= held and pool.num_allocations() > 0
        assert producer.stats["ring_bytes_in_use"] == 0
        consumer.close()


def test_threads_build_and_publish_concurrently():
    """The pool is shared by threads (pyarrow's own, and the caller's): every allocation comes
    back once everything is released."""
    schema = pa.schema([("s", pa.string()), ("n", pa.int64())])
    threads, per_thread = 4, 25
    with Producer(_address(), schema, drain_timeout=0) as producer:
        consumer = Consumer(producer.address, read_timeout=TIMEOUT_S)
        producer.wait_for_consumers(1, timeout=TIMEOUT_S)
        pool = producer.memory_pool
        errors: list[BaseException] = []

        def publish(worker: int) -> None:
            try:
                for i in range(per_thread):
                    words = pa.array([f"{worker}-{i}-{k}" for k in range(100)], memory_pool=pool)
                    numbers = pc.add(pa.array(range(100), pa.int64(), memory_pool=pool), worker,
                                     memory_pool=pool)
                    producer.publish(pa.record_batch([words, numbers], schema=schema))
            except BaseException as error:  # reported by the test thread
                errors.append(error)

        workers = [threading.Thread(target=publish, args=(w,)) for w in range(threads)]
        for worker in workers:
            worker.start()
        rows = 0
        for _ in range(threads * per_thread):
            rows += consumer.read_next_batch().num_rows
        for worker in workers:
            worker.join(TIMEOUT_S)
        assert not errors, errors
        assert rows == threads * per_thread * 100
        assert producer.stats["bytes_copied"] == 0
        gc.collect()
        producer.wait_until_drained(timeout=TIMEOUT_S)
        assert pool.bytes_allocated() == 0
        consumer.close()

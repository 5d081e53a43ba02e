"""Stream summaries that two processes can compare: schema, counts and per-column checksums.

Checksum of a column (identical, bit for bit, to the C++ ``shmarrow::StreamSummary``)::

    checksum = sum over rows i of  e_i * (2*i + 1)   (mod 2**64)

``i`` is the row's 0-based index in the whole stream (it continues across record batches, so the
checksum does not depend on how rows are split into batches, but does depend on their order).
``e_i`` is 0x9E3779B97F4A7C15 for a null, otherwise the FNV-1a-64 hash (offset basis
0xcbf29ce484222325, prime 0x100000001b3; per byte: ``h ^= b; h = h * prime mod 2**64``) of the
value's bytes:

* bool: one byte, 0 or 1;
* int8..int64, uint8..uint64: little-endian, in the type's own width;
* float32, float64: the IEEE-754 bits, little-endian (4 or 8 bytes);
* date32, time32: 4 bytes little-endian; date64, time64, timestamp, duration: 8 bytes;
* string, large_string, binary, large_binary: the raw bytes (UTF-8 for strings).

Other types have no checksum (``None``, JSON null).
"""

import numpy as np
import pyarrow as pa

FNV_OFFSET_BASIS = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
NULL_HASH = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1

_FIXED_WIDTH = (
    pa.types.is_integer,
    pa.types.is_float32,
    pa.types.is_float64,
    pa.types.is_date32,
    pa.types.is_date64,
    pa.types.is_time32,
    pa.types.is_time64,
    pa.types.is_timestamp,
    pa.types.is_duration,
)
# Byte-string types, viewed as the binary type of the same offset width to get raw bytes.
_AS_BINARY = (
    (pa.types.is_string, pa.binary()),
    (pa.types.is_binary, pa.binary()),
    (pa.types.is_large_string, pa.large_binary()),
    (pa.types.is_large_binary, pa.large_binary()),
)


def fnv1a64(data: bytes) -> int:
    """FNV-1a-64 of ``data``."""
    h = FNV_OFFSET_BASIS
    for b in data:
        h = ((h ^ b) * FNV_PRIME) & _MASK64
    return h


def has_checksum(arrow_type: pa.DataType) -> bool:
    """Whether columns of ``arrow_type`` get a checksum."""
    return (pa.types.is_boolean(arrow_type)
            or any(test(arrow_type) for test in _FIXED_WIDTH)
            or any(test(arrow_type) for test, _ in _AS_BINARY))


def _fnv1a64_rows(values: np.ndarray) -> np.ndarray:
    """FNV-1a-64 of each row of an (n, width) uint8 matrix; uint64 arithmetic wraps mod 2**64."""
    h = np.full(values.shape[0], FNV_OFFSET_BASIS, dtype=np.uint64)
    prime = np.uint64(FNV_PRIME)
    for j in range(values.shape[1]):
        h ^= values[:, j]
        h *= prime
    return h


def _value_bytes(array: pa.Array) -> np.ndarray:
    """The values of a bool or fixed-width array as an (n, width) uint8 matrix (nulls included:
    their slots hold arbitrary bytes and are replaced by NULL_HASH later)."""
    data = np.frombuffer(array.buffers()[1], dtype=np.uint8)
    n = len(array)
    if pa.types.is_boolean(array.type):
        bits = np.unpackbits(data, bitorder="little")[array.offset:array.offset + n]
        return bits.reshape(n, 1)
    width = array.type.bit_width // 8
    # Arrow buffers are in host order, and every Linux target Arrow supports is little-endian.
    start = array.offset * width
    return data[start:start + n * width].reshape(n, width)


def column_checksum_part(array: pa.Array, first_row: int) -> int:
    """The checksum's sum over the rows of ``array``, whose first row is row ``first_row`` of the
    stream (mod 2**64). ``array`` must have a type for which ``has_checksum`` is true."""
    n = len(array)
    if n == 0:
        return 0
    for test, binary_type in _AS_BINARY:
        if test(array.type):
            total = 0
            for k, value in enumerate(array.view(binary_type).to_pylist()):
                e = NULL_HASH if value is None else fnv1a64(value)
                total += e * (2 * (first_row + k) + 1)
            return total & _MASK64
    hashes = _fnv1a64_rows(_value_bytes(array))
    if array.null_count:
        valid = array.is_valid().to_numpy(zero_copy_only=False)
        hashes = np.where(valid, hashes, np.uint64(NULL_HASH))
    rows = np.arange(first_row, first_row + n, dtype=np.uint64)
    weights = rows * np.uint64(2) + np.uint64(1)
    return int(np.sum(hashes * weights, dtype=np.uint64))


class StreamSummary:
    """Accumulates what a consumer reports about a stream: schema, batch and row counts, and per
    column the null count and the checksum defined in this module's docstring."""

    def __init__(self, schema: pa.Schema):
        self.schema = schema
        self.batches = 0
        self.rows = 0
        self.null_counts = [0] * len(schema)
        self.checksums = [0 if has_checksum(f.type) else None for f in schema]

    def add(self, batch: pa.RecordBatch) -> None:
        for i, column in enumerate(batch.columns):
            self.null_counts[i] += column.null_count
            if self.checksums[i] is not None:
                part = column_checksum_part(column, self.rows)
                self.checksums[i] = (self.checksums[i] + part) & _MASK64
        self.batches += 1
        self.rows += batch.num_rows

    def to_dict(self) -> dict:
        """{"schema", "batches", "rows", "columns"} in the order the C++ tool writes them;
        checksums are 16 lowercase hex digits or None."""
        return {
            "schema": [{"name": f.name, "type": str(f.type), "nullable": f.nullable}
                       for f in self.schema],
            "batches": self.batches,
            "rows": self.rows,
            "columns": [
                {"name": f.name, "type": str(f.type), "null_count": nulls,
                 "checksum": None if checksum is None else format(checksum, "016x")}
                for f, nulls, checksum in zip(self.schema, self.null_counts, self.checksums)
            ],
        }

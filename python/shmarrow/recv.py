"""python -m shmarrow.recv: receive a stream from a shmarrow producer and report on it.

It is a :class:`shmarrow.Consumer`, so it reads every producer the library serves: a
``shmarrow.Producer`` or ``shmarrow send --mode ring|sealed`` (stream producers), and the single
hand-over of ``shmarrow send`` (one sealed memfd holding a whole Arrow IPC stream). The report and
``--json`` are those of ``shmarrow recv``: the summary (schema, batches, rows, per-column checksums)
plus, for the single hand-over, ``"memfd"`` and ``"buffers_in_mapping"``, else ``"mode"``,
``"dropped"`` and ``"schema_changes"``. The text report needs pandas (``pip install
shmarrow[report]``); ``--json`` does not.

Exit status 0, or 1 with one line "shmarrow.recv: <message>" on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

import pyarrow as pa

from shmarrow._native_api import Consumer, ShmarrowError
from shmarrow._seal import seal_names
from shmarrow.summary import StreamSummary

PROG = "shmarrow.recv"
DEFAULT_SOCKET = "/tmp/shmarrow.sock"


class RecvError(Exception):
    """A failure reported as one line on stderr."""


def open_stream(address: str, *, connect_timeout: Optional[float] = 0.0,
                read_timeout: Optional[float] = 30.0, allow_unsealed: bool = False) -> Consumer:
    """Connects to the producer at ``address`` (a socket path, ``@name`` for the abstract
    namespace) and returns the :class:`shmarrow.Consumer` reading its stream: iterate it, or
    ``read_all()``; the batches' buffers are the shared memory itself. Timeouts in seconds
    (None: forever). Raises the consumer's errors (:class:`shmarrow.ShmarrowError` subclasses,
    ``ConnectionRefusedError``, ``FileNotFoundError``)."""
    return Consumer(address, connect_timeout=connect_timeout, read_timeout=read_timeout,
                    allow_unsealed=allow_unsealed)


def _children(arr: pa.Array) -> list:
    """The child arrays of a nested array (sharing its buffers, not copies)."""
    if isinstance(arr, (pa.StructArray, pa.UnionArray)):
        return [arr.field(i) for i in range(arr.type.num_fields)]
    if isinstance(arr, pa.RunEndEncodedArray):
        return [arr.run_ends, arr.values]
    if isinstance(arr, (pa.ListArray, pa.LargeListArray, pa.FixedSizeListArray,
                        pa.ListViewArray, pa.LargeListViewArray)):  # MapArray is a ListArray
        return [arr.values]
    if isinstance(arr, pa.ExtensionArray):
        return [arr.storage]
    return []


def _buffers(arr: pa.Array):
    """Every buffer behind ``arr``: buffers() lists its own and its children's, but no
    dictionaries, so those are found by walking the children."""
    yield from arr.buffers()
    pending = [arr]
    while pending:
        current = pending.pop()
        if isinstance(current, pa.DictionaryArray):
            yield from _buffers(current.dictionary)
        pending += _children(current)


def buffers_inside(batch: pa.RecordBatch, begin: int, size: int) -> bool:
    """Whether every non-empty buffer of every column lies within [begin, begin + size): the
    consumer handed out slices of the shared memory instead of copies."""
    end = begin + size
    return all(buf is None or buf.size == 0
               or (begin <= buf.address and buf.address + buf.size <= end)
               for column in batch.columns for buf in _buffers(column))


def receive(args: argparse.Namespace) -> str:
    """Everything but the error handling; returns what to print on stdout."""
    with open_stream(args.socket, connect_timeout=_seconds(args.connect_timeout_ms),
                     read_timeout=_seconds(args.read_timeout_ms),
                     allow_unsealed=args.allow_unsealed) as consumer:
        memfd = consumer.memfd
        if memfd is not None and not memfd["mapped"]:
            print(f"{PROG}: the memfd is not sealed; its {memfd['bytes']} bytes were copied "
                  "into private memory (--allow-unsealed)", file=sys.stderr)
        schema = consumer.schema
        summary = StreamSummary(schema)
        batches = []
        inside = True
        for batch in consumer:
            if not batch.schema.equals(schema):
                raise RecvError(f"the producer changed the schema to ({batch.schema}); "
                                f"{PROG} summarizes one schema: use `shmarrow recv`")
            if memfd is not None:
                inside = inside and buffers_inside(batch, memfd["address"], memfd["bytes"])
            summary.add(batch)
            batches.append(batch)
        stats = consumer.stats

    if not args.json:
        try:
            from shmarrow.report import render_report  # pandas takes long to import: only here
        except ImportError as e:
            raise RecvError(f"the text report needs pandas ({e}): pip install "
                            "'shmarrow[report]', or use --json") from None
        return render_report(schema, batches)
    result = summary.to_dict()
    if memfd is not None:
        result["memfd"] = {"inode": memfd["inode"], "bytes": memfd["bytes"],
                           "seals": seal_names(memfd["seals"])}
        result["buffers_in_mapping"] = inside
    else:
        result.update(mode=consumer.mode, dropped=stats["dropped"],
                      schema_changes=stats["schema_changes"])
    return json.dumps(result, separators=(",", ":"), ensure_ascii=False) + "\n"


def _seconds(milliseconds: int) -> Optional[float]:
    return None if milliseconds < 0 else milliseconds / 1000


def _milliseconds(text: str) -> int:
    value = int(text)
    if value < -1:
        raise argparse.ArgumentTypeError(f"must be >= -1 (-1: forever), not {value}")
    return value


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m {PROG}",
        description="Receive a stream from a shmarrow producer (any mode) and report on it.")
    parser.add_argument("--socket", default=DEFAULT_SOCKET,
                        help="producer's UNIX socket; a leading '@' means the abstract namespace "
                             f"(default {DEFAULT_SOCKET})")
    parser.add_argument("--json", action="store_true",
                        help="print one line of JSON (schema, counts, checksums, and the memfd "
                             "or the mode) instead of the report")
    parser.add_argument("--connect-timeout-ms", type=_milliseconds, default=0,
                        help="retry connecting for up to this long while the socket is missing "
                             "or refuses (default 0: one try; -1: forever)")
    parser.add_argument("--read-timeout-ms", type=_milliseconds, default=30000,
                        help="give up after this long without a message from the producer "
                             "(-1: never; default 30000)")
    parser.add_argument("--allow-unsealed", action="store_true",
                        help="single hand-over: accept a memfd without the seals, reading a "
                             "private copy of it instead of mapping it")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    try:
        sys.stdout.write(receive(args))
        sys.stdout.flush()
        return 0
    except KeyboardInterrupt:
        message = "interrupted"
    except OSError as e:  # the library's message, without Python's "[Errno N]"
        message = e.strerror or str(e) or type(e).__name__
    except (RecvError, ShmarrowError, pa.ArrowException, ValueError, MemoryError) as e:
        message = str(e) or type(e).__name__
    # One line, whatever the underlying library put in its message.
    print(f"{PROG}: {' '.join(message.split())}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())

"""Producer and Consumer: shmarrow's C++ library for Python (the compiled extension ``_native``).

A :class:`Producer` publishes Arrow record batches to any number of :class:`Consumer` processes on
the same host through shared memory (memfd); a consumer receives ``pyarrow.RecordBatch`` objects
whose buffers *are* that shared memory — nothing is copied on the way. A batch's memory returns to
the producer when the last Python object over it (batch, array, buffer, numpy view) is freed.

Both ends speak the Arrow PyCapsule interface: a Consumer is an ``__arrow_c_stream__`` source
(``pyarrow.RecordBatchReader.from_stream``, polars, duckdb read it without copying) and
``Producer.publish`` takes anything exporting ``__arrow_c_array__``/``__arrow_c_stream__`` (pyarrow,
polars, ...) or a pandas DataFrame.

Timeouts are seconds (float; None: forever): ``connect_timeout``, ``read_timeout``,
``block_timeout``, ``drain_timeout``, and ``timeout`` for the waits of one call.

Blocking calls release the GIL. Reading, connecting and the producer's waits wake at least every
100 ms on the main thread to run signal handlers, so Ctrl-C (KeyboardInterrupt) interrupts them;
publish()/allocate() waiting for room and request() waiting for its answer are bounded by
block_timeout and read_timeout instead. Failures raise :class:`ShmarrowError` subclasses carrying
the library's message.
"""

from __future__ import annotations

import asyncio
import atexit
import itertools
import math
import re
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any, Optional, Union

import pyarrow as pa  # first: shmarrow._native uses the libarrow that pyarrow loads

try:
    from . import _native
except ImportError as _error:
    import importlib.util

    if importlib.util.find_spec(f"{__package__}._native") is None:
        raise ImportError("the compiled extension shmarrow._native is not installed: build it "
                          "with `pip install .` at the repository root") from _error
    raise
from ._native import Allocation

__all__ = [
    "Allocation",
    "ClosedError",
    "Consumer",
    "FlightBridge",
    "InvalidError",
    "Producer",
    "RefusedError",
    "RequestError",
    "ShmarrowError",
    "ShmarrowMemoryError",
    "ShmarrowOSError",
    "ShmarrowTimeoutError",
    "StreamError",
    "UnsupportedError",
]


# ---- errors ---------------------------------------------------------------------------------------

class ShmarrowError(Exception):
    """Base class of every error raised by shmarrow's Producer and Consumer."""


class InvalidError(ShmarrowError, ValueError):
    """Invalid input: a schema that does not match, an unknown projection column, a batch that
    does not fit the producer's schema, a call that is not allowed now (publish after end())."""


class RefusedError(ShmarrowError, ConnectionError):
    """The producer refused this consumer (its consumer limit, the uid, or a schema or projection
    it cannot serve), or this consumer refused the producer's uid; the message says why."""


class StreamError(ShmarrowError, ConnectionError):
    """The producer went away without ending the stream, or ended it with an error."""


class RequestError(ShmarrowError, RuntimeError):
    """A request failed at the producer: its handler raised (the message carries the exception)
    or it has none."""


class ShmarrowTimeoutError(ShmarrowError, TimeoutError):
    """Nothing happened within the timeout: a read, a wait, or room to publish (block_timeout)."""


class ClosedError(ShmarrowError, RuntimeError):
    """The Producer or Consumer is closed."""


class UnsupportedError(ShmarrowError, NotImplementedError):
    """Something the library does not support (dictionary columns in ring mode, ...)."""


class ShmarrowMemoryError(ShmarrowError, MemoryError):
    """Shared memory could not be had (an allocation larger than the ring, ...)."""


class ShmarrowOSError(ShmarrowError, OSError):
    """A system call failed. With an errno, the exception is also the matching builtin subclass:
    no producer at the address is ``ConnectionRefusedError`` or ``FileNotFoundError``."""


_os_error_classes: dict = {}

def _os_error(err: int, message: str) -> ShmarrowOSError:
    builtin = type(OSError(err, ""))
    cls = ShmarrowOSError
    if builtin is not OSError:
        cls = _os_error_classes.get(builtin)
        if cls is None:
            cls = type("Shmarrow" + builtin.__name__, (ShmarrowOSError, builtin),
                       {"__module__": __name__, "__doc__": builtin.__doc__})
            _os_error_classes[builtin] = cls
    return cls(err, message)


def _error_from_status(kind: str, code: str, from_producer: bool, err: int, message: str,
                       context: str) -> ShmarrowError:
    """The exception for a failure of the C++ library (called by shmarrow._native).

    ``kind`` is Arrow's status code ("io", "invalid", ...), ``code`` shmarrow's error code
    ("timeout", "schema_mismatch", ..., "none"; include/shmarrow/error.h), ``from_producer``
    whether the producer reported it in an Error message. The class follows from those, never
    from the message."""
    if err:
        return _os_error(err, message)
    if code == "timeout":
        return ShmarrowTimeoutError(message)
    if code == "closed" or kind == "cancelled":
        return ClosedError(message)
    if from_producer:
        if context == "connect":  # the producer's answer to Hello: it refused this consumer
            return RefusedError(message)
        if code == "handler" or context == "request":
            return RequestError(message)
        return StreamError(message)
    if code == "producer_gone":
        return StreamError(message)
    if code == "refused":  # this consumer refused the producer (its uid)
        return RefusedError(message)
    if kind == "io":
        return RequestError(message) if context == "request" else ShmarrowOSError(message)
    if kind == "out_of_memory":
        return ShmarrowMemoryError(message)
    if kind == "not_implemented":
        return UnsupportedError(message)
    if kind in ("invalid", "type", "key", "index", "capacity", "serialization", "already_exists"):
        return InvalidError(message)
    return ShmarrowError(message)


_native._set_error_factory(_error_from_status)


# ---- conversions ----------------------------------------------------------------------------------

def _milliseconds(seconds: Optional[float], name: str) -> int:
    """Seconds (None: forever) as the library's milliseconds (-1: forever)."""
    if seconds is None:
        return -1
    if seconds < 0 or math.isnan(seconds):
        raise ValueError(f"{name} must be >= 0 seconds, or None (forever); got {seconds!r}")
    return min(2**31 - 1, math.ceil(seconds * 1000))


def _schema_capsule(schema: Any, name: str) -> Any:
    if hasattr(schema, "__arrow_c_schema__"):
        return schema.__arrow_c_schema__()
    raise TypeError(f"{name} must be a pyarrow.Schema (or export __arrow_c_schema__), "
                    f"not {type(schema).__name__}")


def _is_pandas(data: Any) -> bool:
    cls = type(data)
    return cls.__name__ == "DataFrame" and cls.__module__.partition(".")[0] == "pandas"


def _is_iterable(data: Any) -> bool:
    return isinstance(data, Iterable) and not isinstance(
        data, (str, bytes, bytearray, memoryview, dict))


# Layouts of one logical type: data in one is cast to another without changing a value.
_LAYOUT_FAMILIES = (
    (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view),
    (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_binary_view),
)
_LIST_LAYOUTS = (pa.types.is_list, pa.types.is_large_list, pa.types.is_list_view,
                 pa.types.is_large_list_view)


def _same_values(source: pa.DataType, target: pa.DataType) -> bool:
    """Whether ``source`` and ``target`` are one logical type in two layouts (``string_view``
    and ``string``, ``large_list<int64>`` and ``list<int64>``, ...)."""
    if source.equals(target):
        return True
    for family in _LAYOUT_FAMILIES:
        if any(test(source) for test in family) and any(test(target) for test in family):
            return True
    if any(test(source) for test in _LIST_LAYOUTS) and any(test(target) for test in _LIST_LAYOUTS):
        return _same_values(source.value_type, target.value_type)
    if pa.types.is_struct(source) and pa.types.is_struct(target):
        return (source.num_fields == target.num_fields
                and all(a.name == b.name and _same_values(a.type, b.type)
                        for a, b in zip(source, target)))
    return False


def _layout_castable(source: pa.Schema, target: pa.Schema) -> bool:
    """Whether ``source`` differs from ``target`` only in the layouts of its columns: what
    publish() casts without being asked (polars exports ``string_view``)."""
    return (len(source) == len(target)
            and all(a.name == b.name and a.nullable == b.nullable and _same_values(a.type, b.type)
                    for a, b in zip(source, target)))


def _cast_for_publish(data: Any, source: pa.Schema, target: pa.Schema, cast: bool) -> Any:
    """``data`` (a RecordBatch or RecordBatchReader of ``source``) cast to ``target`` when
    allowed; raises InvalidError naming both schemas when not."""
    if source.equals(target):
        return data
    if cast or _layout_castable(source, target):
        return data.cast(target)
    raise InvalidError(
        f"batch schema {_describe(source)} differs from the producer's schema "
        f"{_describe(target)}: publish(..., cast=True) casts it, change_schema() announces a "
        "new schema")


def _describe(schema: pa.Schema) -> str:
    fields = (f"{f.name}: {f.type}{'' if f.nullable else ' not null'}" for f in schema)
    return "{" + ", ".join(fields) + "}"


def _as_batch(data: Any, schema: Optional[pa.Schema] = None) -> pa.RecordBatch:
    if isinstance(data, pa.RecordBatch):
        return data
    if _is_pandas(data):
        return pa.RecordBatch.from_pandas(data, schema=schema, preserve_index=False)
    if hasattr(data, "__arrow_c_array__"):
        return pa.record_batch(data)
    raise TypeError(f"expected a record batch, not {type(data).__name__}")


def _as_reader(data: Any, schema: Optional[pa.Schema] = None) -> pa.RecordBatchReader:
    """Anything publishable as a RecordBatchReader (lazily: a generator is read as it goes)."""
    if isinstance(data, pa.RecordBatchReader):
        return data
    if _is_pandas(data) or hasattr(data, "__arrow_c_array__"):
        batch = _as_batch(data, schema)
        return pa.RecordBatchReader.from_batches(batch.schema, [batch])
    if hasattr(data, "__arrow_c_stream__"):
        return pa.RecordBatchReader.from_stream(data)
    if _is_iterable(data):
        items = iter(data)
        first = next(items, None)
        if first is None:
            return pa.RecordBatchReader.from_batches(schema or pa.schema([]), [])
        first = _as_batch(first, schema)
        rest = (_as_batch(item, schema) for item in items)
        return pa.RecordBatchReader.from_batches(first.schema, itertools.chain([first], rest))
    raise TypeError("expected a RecordBatch, Table, RecordBatchReader, an object exporting "
                    "__arrow_c_array__ or __arrow_c_stream__, a pandas DataFrame, or an iterable "
                    f"of batches; not {type(data).__name__}")


# ---- Consumer ---------------------------------------------------------------------------------

class Consumer:
    """Receives the stream of a :class:`Producer` (or of ``shmarrow send``) at ``address``.

    Iterating yields ``pyarrow.RecordBatch`` objects over the shared memory itself; iteration ends
    when the producer ends the stream. A batch is released to the producer when the last Python
    object over it is gone (``del`` it; ``gc.collect()`` if it is in a reference cycle).
    ``async for`` reads it in an asyncio event loop.

    Other libraries read the rest of the stream in place through ``__arrow_c_stream__``:
    ``pl.DataFrame(consumer)``, ``duckdb.sql("... FROM consumer")``,
    ``pa.RecordBatchReader.from_stream(consumer)``. ``pl.from_arrow(consumer)`` gives a Series
    of structs instead, as it does for every stream source that is not pyarrow's own: polars 2.1
    hands any such ``__arrow_c_stream__`` object to ``pl.Series`` before it looks at anything
    else (``polars/convert/general.py``: ``if is_pycapsule(data) and not
    _check_for_pyarrow(data):`` ... ``ret = pl.Series(data)``), so no Arrow stream source gets a
    DataFrame from it. ``pl.DataFrame(consumer)`` is the call for a DataFrame.

    :param address: the producer's socket: a path, or ``"@name"`` (abstract namespace).
        Or a Flight address (``grpc://HOST:PORT``, ``grpc+tls://``; docs/flight.md): a
        ``shmarrow flight-serve`` bridge, or ``grpc://HOST:PORT/PATH`` for a flight of any Flight
        server; ``mode`` is then ``"flight"`` (or the producer's, after the same-host upgrade).
    :param lossy: fall behind by losing the oldest batches (counted in :attr:`dropped`) instead of
        holding the producer back.
    :param start_at_oldest: start with the oldest batches the producer retains (its ``retain``).
    :param max_in_flight: batches this consumer may hold at once; 0: the producer's limit.
    :param columns: projection: only these columns (no copy). None: all.
    :param expect_schema: refuse a producer whose schema does not match (``schema_match``).
    :param schema_match: ``"exact"`` (equal schemas) or ``"subset"`` (every expected field exists
        with the same type).
    :param validate: ``"full"`` (``ValidateFull`` on every batch: offsets, UTF-8, bounds) or
        ``"basic"`` (structure only; for producers you trust).
    :param connect_timeout: seconds to keep retrying while nobody listens yet (None: forever).
    :param read_timeout: seconds a blocking read waits for a message before raising
        :class:`ShmarrowTimeoutError` (None: forever).
    :param busy_poll: seconds a read polls without sleeping before it blocks (0: none beyond the
        up to 50 µs a read polls while its last waits ended that soon).
        A batch published meanwhile is taken without waking a sleeping process, which is most of
        the latency of a small batch; the cost is a busy CPU while waiting.
    :param allow_unsealed: single hand-over (``shmarrow send``): accept a memfd that is not
        sealed against change by reading a private copy of it (one copy) instead of refusing.
    :param token: Flight addresses: sent as ``authorization: Bearer <token>`` with every call.
    :param tls_root_certs: ``grpc+tls``: PEM root certificates to trust ("": the system's).
    :param tls_override_hostname: ``grpc+tls``: the name the server's certificate must carry, if
        not the address's host.
    :param upgrade: a bridge on this host that advertises its producer's socket is read through
        shared memory instead (docs/flight.md, "Same-host upgrade").
    :param allow_any_uid: accept a producer of any user (else only this uid and
        ``allowed_uids``, checked with ``SO_PEERCRED``: anyone may bind an abstract name first).
    :param allowed_uids: other uids whose producers are accepted.
    :raises RefusedError: the producer refused (schema mismatch, unknown column, its limits).
    :raises ConnectionRefusedError, FileNotFoundError: nobody listens at ``address``
        (:class:`ShmarrowOSError` subclasses).
    """

    def __init__(self, address: str, *, lossy: bool = False, start_at_oldest: bool = False,
                 max_in_flight: int = 0, columns: Optional[Iterable[str]] = None,
                 expect_schema: Optional[pa.Schema] = None, schema_match: str = "exact",
                 validate: str = "full", connect_timeout: Optional[float] = 0.0,
                 read_timeout: Optional[float] = None, busy_poll: float = 0.0,
                 allow_unsealed: bool = False, token: str = "", tls_root_certs: str = "",
                 tls_override_hostname: str = "", upgrade: bool = True,
                 allow_any_uid: bool = False, allowed_uids: Iterable[int] = ()):
        if schema_match not in ("exact", "subset"):
            raise ValueError(f"schema_match must be 'exact' or 'subset', not {schema_match!r}")
        if validate not in ("full", "basic"):
            raise ValueError(f"validate must be 'full' or 'basic', not {validate!r}")
        if max_in_flight < 0:
            raise ValueError(f"max_in_flight must be >= 0, not {max_in_flight}")
        if not 0 <= busy_poll <= 60:
            raise ValueError(f"busy_poll must be between 0 and 60 seconds, not {busy_poll}")
        if isinstance(columns, str):
            raise TypeError("columns must be a list of names, not a string")
        self.address = address
        self._read_timeout = read_timeout
        self._timeout_ms = _milliseconds(read_timeout, "read_timeout")
        expect = None if expect_schema is None else _schema_capsule(expect_schema, "expect_schema")
        self._native = _native._Consumer(
            address, lossy, start_at_oldest, max_in_flight, list(columns or []), expect,
            schema_match == "subset", validate == "full",
            _milliseconds(connect_timeout, "connect_timeout"), self._timeout_ms,
            round(busy_poll * 1e6), not allow_unsealed, token, tls_root_certs,
            tls_override_hostname, upgrade, list(allowed_uids), allow_any_uid)

    # -- reading

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        # The native consumer, whose __next__ is this one's without a Python frame per batch.
        return self._native

    def __next__(self) -> pa.RecordBatch:
        batch = self._native.next(self._timeout_ms)
        if batch is None:
            raise StopIteration
        return batch

    def read_next_batch(self, read_timeout: Optional[float] = None) -> pa.RecordBatch:
        """The next batch, waiting up to ``read_timeout`` seconds (None: the consumer's).

        :raises StopIteration: at the end of the stream (as pyarrow's readers do).
        """
        timeout_ms = (self._timeout_ms if read_timeout is None
                      else _milliseconds(read_timeout, "read_timeout"))
        batch = self._native.next(timeout_ms)
        if batch is None:
            raise StopIteration
        return batch

    def __aiter__(self) -> AsyncIterator[pa.RecordBatch]:
        """``async for batch in consumer``: waits in the event loop (``loop.add_reader`` on
        :meth:`fileno`) instead of blocking it. Cancelling a waiting iteration loses nothing:
        the next one takes the batch it would have had. Honours ``read_timeout``."""
        return self

    async def __anext__(self) -> pa.RecordBatch:
        loop = asyncio.get_running_loop()
        deadline = None if self._read_timeout is None else loop.time() + self._read_timeout
        while True:
            batch = self.try_next()
            if batch is not None:
                return batch
            if self.ended:
                raise StopAsyncIteration
            await self._readable(loop, deadline)

    async def _readable(self, loop: asyncio.AbstractEventLoop, deadline: Optional[float]) -> None:
        """Returns when :meth:`fileno` is readable; raises ShmarrowTimeoutError after
        ``deadline`` (the loop's clock)."""
        fd = self.fileno()
        if fd < 0:
            raise ClosedError("the consumer is closed")
        ready: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(fd, wake)
        try:
            if deadline is None:
                await ready
            else:
                await asyncio.wait_for(ready, max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            raise ShmarrowTimeoutError(
                f"no message from the producer within {self._timeout_ms} ms") from None
        finally:
            loop.remove_reader(fd)

    def try_next(self) -> Optional[pa.RecordBatch]:
        """The next batch if one has arrived, else None at once (then :attr:`ended` tells
        whether the stream is over). For event loops, with :meth:`fileno`."""
        return self._native.try_next()

    @property
    def ended(self) -> bool:
        """True once the end of the stream has been read."""
        return self._native.ended

    def fileno(self) -> int:
        """A file descriptor that becomes readable when :meth:`try_next` may have a batch (for
        select/poll/selectors/asyncio's add_reader). Level-triggered; -1 once closed."""
        return self._native.fileno()

    def read_all(self) -> pa.Table:
        """The rest of the stream as a ``pyarrow.Table`` (its chunks are the received batches:
        no copy)."""
        batches = list(self)
        if not batches:
            return self.schema.empty_table()
        schema = batches[0].schema
        if any(not b.schema.equals(schema) for b in batches[1:]):
            raise InvalidError("the producer changed the schema during the stream: a Table has "
                               "one schema (iterate the Consumer to see each batch's)")
        return pa.Table.from_batches(batches, schema=schema)

    def request(self, data: Union[bytes, str]) -> pa.RecordBatchReader:
        """Sends ``data`` to the producer's request handler; returns a reader of its answer.

        The wait for the answer (the consumer's ``read_timeout``; None: up to 60 s for its first
        batch) releases the GIL but is not interrupted by Ctrl-C, and other threads' use of this
        consumer waits meanwhile.

        :raises RequestError: the handler raised (its message) or the producer has none.
        """
        if isinstance(data, str):
            data = data.encode()
        capsule = self._native.request(bytes(data))
        return pa.RecordBatchReader._import_from_c_capsule(capsule)

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        """The Arrow PyCapsule stream interface: the rest of the stream, without copying.

        The stream has today's schema; if the producer changes it, reading fails (iterate the
        Consumer to follow schema changes). Reads honour ``read_timeout``. Ctrl-C during a read on
        the main thread makes it fail with the reading library's error ("interrupted by a signal")
        and raises KeyboardInterrupt as soon as Python code runs again; libraries that read on
        threads of their own (duckdb) cannot be interrupted: bound them with ``read_timeout``.
        """
        capsule = self._native.stream(self._timeout_ms)
        if requested_schema is None:
            return capsule
        # Casting (a copy) only when the requested schema differs: pyarrow does it.
        reader = pa.RecordBatchReader._import_from_c_capsule(capsule)
        return reader.__arrow_c_stream__(requested_schema)

    # -- state

    @property
    def schema(self) -> pa.Schema:
        """The current schema (after a projection: the projected one)."""
        return pa.Schema._import_from_c_capsule(self._native.schema())

    @property
    def mode(self) -> str:
        """``"ring"``, ``"sealed"`` or ``"handover"`` (``shmarrow send`` without ``--mode``)."""
        return self._native.mode

    @property
    def stats(self) -> dict:
        """``{"batches", "dropped", "schema_changes", "released"}``."""
        return self._native.stats()

    @property
    def dropped(self) -> int:
        """Batches lost so far (lossy consumers)."""
        return self._native.stats()["dropped"]

    @property
    def memfd(self) -> Optional[dict]:
        """The single hand-over's memfd: ``{"inode", "bytes", "seals", "mapped", "address"}``
        (``mapped`` False: a private copy, see ``allow_unsealed``; ``address``: where its bytes
        are in this process); None in the other modes."""
        return self._native.handover()

    @property
    def closed(self) -> bool:
        return self._native.closed

    def close(self) -> None:
        """Detaches from the producer. Batches already received stay valid."""
        self._native.close()

    def __enter__(self) -> "Consumer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else self.mode
        return f"<shmarrow.Consumer {self.address!r} {state}>"


# ---- Producer ---------------------------------------------------------------------------------

_open_producers: "weakref.WeakSet[Producer]" = weakref.WeakSet()
_open_producers_lock = threading.Lock()


@atexit.register
def _close_producers_at_exit() -> None:
    # Before the interpreter finalizes: the producers' threads may still need the GIL.
    with _open_producers_lock:
        producers = list(_open_producers)
    for producer in producers:
        producer.close()


class Producer:
    """Publishes a stream of record batches to any number of :class:`Consumer` (and
    ``shmarrow recv``) processes, listening at ``address``.

    :param address: the socket: a path, or ``"@name"`` (abstract namespace).
    :param schema: the stream's schema (``change_schema`` announces another).
    :param mode: ``"ring"`` (one shared ring; consumers trust this producer) or ``"sealed"``
        (every batch is its own sealed memfd: for consumers that do not trust it).
    :param ring_size: ring mode: bytes of shared memory for batches in flight.
    :param block_timeout: seconds ``publish`` (and ``allocate``, in ring mode) wait for room when
        a consumer is behind or the ring is full: None forever, 0 fail at once
        (:class:`ShmarrowTimeoutError`).
    :param max_consumers: consumers served at once; more are refused (:class:`RefusedError`).
    :param max_in_flight: batches a consumer may hold unreleased.
    :param retain: published batches kept for consumers that join later with
        ``start_at_oldest``.
    :param socket_mode: file mode of a filesystem socket.
    :param allow_any_uid: serve every user (else only this uid and ``allowed_uids``).
    :param allowed_uids: other uids allowed to connect.
    :param name: memfd name (shows in /proc/PID/maps as ``memfd:NAME``).
    :param drain_timeout: seconds leaving a ``with`` block waits, after :meth:`end`, for the
        consumers to read and release everything before closing (None: forever).
    :param pages: which pages back the shared memory: ``"auto"`` (huge pages where the kernel
        offers them for shared memory, ``shmem_enabled`` advise/within_size/always; 4 KiB
        otherwise), ``"hugetlb"`` (the host's reserved huge pages, ``vm.nr_hugepages``; creating
        the memory fails when too few are free) or ``"off"`` (4 KiB). ``stats["page_size"]``
        says which size was obtained.
    """

    def __init__(self, address: str, schema: pa.Schema, *, mode: str = "ring",
                 ring_size: int = 64 << 20, block_timeout: Optional[float] = None,
                 max_consumers: int = 64, max_in_flight: int = 64, retain: int = 0,
                 socket_mode: int = 0o600, allow_any_uid: bool = False,
                 allowed_uids: Iterable[int] = (), name: str = "shmarrow",
                 drain_timeout: Optional[float] = 10.0, pages: str = "auto"):
        if mode not in ("ring", "sealed"):
            raise ValueError(f"mode must be 'ring' or 'sealed', not {mode!r}")
        if pages not in ("auto", "hugetlb", "off"):
            raise ValueError(f"pages must be 'auto', 'hugetlb' or 'off', not {pages!r}")
        for option, value in (("ring_size", ring_size), ("max_consumers", max_consumers),
                              ("max_in_flight", max_in_flight)):
            if value <= 0:
                raise ValueError(f"{option} must be > 0, not {value}")
        if retain < 0:
            raise ValueError(f"retain must be >= 0, not {retain}")
        self._drain_timeout = drain_timeout
        _milliseconds(drain_timeout, "drain_timeout")  # checks it now, not at the end
        self._memory_pool: Optional[pa.MemoryPool] = None
        self._native = _native._Producer(
            address, _schema_capsule(schema, "schema"), mode == "ring", ring_size,
            _milliseconds(block_timeout, "block_timeout"), max_consumers, max_in_flight, retain,
            socket_mode, list(allowed_uids), allow_any_uid, name, pages)
        with _open_producers_lock:
            _open_producers.add(self)

    # -- publishing

    def publish(self, data: Any, *, cast: bool = False) -> None:
        """Sends ``data`` to every attached consumer: a ``pyarrow.RecordBatch`` or ``Table``,
        anything exporting ``__arrow_c_array__`` (one batch) or ``__arrow_c_stream__`` (each of
        its batches: polars DataFrames, RecordBatchReaders, ...), a pandas DataFrame (converted
        to the producer's schema), or an iterable of those.

        Buffers in memory from :attr:`memory_pool` or :meth:`allocate` are published where they
        are; others are copied into shared memory once (``stats["bytes_copied"]``). Waits for
        room per ``block_timeout``; that wait releases the GIL but is not interrupted by Ctrl-C.

        The data's schema must be the producer's. Columns that hold the same values in another
        layout (``string_view`` or ``large_string`` for ``string``, as polars exports,
        ``large_list`` for ``list``) are cast (a copy of those columns); other differences are refused unless
        ``cast`` is true, which casts (a copy) whatever pyarrow can cast.

        :raises InvalidError: the schema differs (the message shows both).
        :raises ShmarrowTimeoutError: no room within ``block_timeout``.
        """
        # A pyarrow batch goes straight to the native call from this frame (one Python call more
        # costs a tenth of publishing a small batch), as the C++ batch it wraps.
        if not isinstance(data, pa.RecordBatch):
            if _is_pandas(data):
                data = pa.RecordBatch.from_pandas(data, schema=self.schema, preserve_index=False)
            if hasattr(data, "__arrow_c_array__"):
                data = pa.record_batch(data)
            elif hasattr(data, "__arrow_c_stream__"):
                reader = pa.RecordBatchReader.from_stream(data)
                reader = _cast_for_publish(reader, reader.schema, self.schema, cast)
                self._native.publish_stream(reader.__arrow_c_stream__())
                return
            elif _is_iterable(data):
                for item in data:
                    self.publish(item, cast=cast)
                return
            else:
                raise TypeError("publish() takes a RecordBatch, Table, an object exporting "
                                "__arrow_c_array__ or __arrow_c_stream__, a pandas DataFrame, or "
                                f"an iterable of those; not {type(data).__name__}")
        try:
            # The producer compares schemas itself; comparing here too would cost more than
            # publishing a small batch.
            self._native.publish_pyarrow_batch(data)
        except InvalidError as refused:
            self._publish_cast(data, cast, refused)

    def _publish_cast(self, batch: pa.RecordBatch, cast: bool, refused: InvalidError) -> None:
        """Publishes `batch`, which the producer refused, cast to the producer's schema; raises
        `refused` when the schema was not the reason."""
        schema = self.schema
        if batch.schema.equals(schema):
            raise refused
        self._native.publish_pyarrow_batch(_cast_for_publish(batch, batch.schema, schema, cast))

    @property
    def memory_pool(self) -> pa.MemoryPool:
        """A ``pyarrow.MemoryPool`` in this producer's shared memory: pass it as ``memory_pool=``
        to any pyarrow function that takes one (``pa.array``, ``pyarrow.compute`` functions,
        ``pc.cast``, ``Table.combine_chunks``, the CSV and JSON readers, the IPC reader over
        ``pa.OSFile(path, memory_pool=pool)``, ...) and the data it builds is published without
        a copy (``stats["bytes_copied"]`` stays 0).

        What pyarrow does not build copies once at :meth:`publish` (counted in
        ``bytes_copied``): buffers it wraps instead of building (``pa.array`` over a numpy array
        or a pandas column, readers over bytes or a ``pa.Buffer``), and data built elsewhere
        (a pandas DataFrame, a polars DataFrame). ``pa.Table.from_pandas`` and ``Table.cast``
        take no pool in pyarrow 26: build the columns with ``pa.array`` / ``pc.cast``.

        Dictionary columns (sealed mode; ring mode refuses them): an Arrow stream carries each
        dictionary in a message of its own before the batch, and pyarrow writes a dictionary
        after its indices, so the dictionaries are copied in front of the batch (counted) while
        the batch's columns, indices included, stay in place. That holds for up to 16 KiB of
        dictionaries per batch; beyond it the dictionaries stay in place and the batch's columns
        are copied instead. A cast to a dictionary type builds in pyarrow's default pool
        whatever ``memory_pool`` says (copied whole); ``pc.dictionary_encode`` honours it.

        Ring mode: allocations come from the ring (waiting per ``block_timeout`` when it is
        full); memory returns to it when pyarrow frees the buffer and every consumer released
        the batches using it. pyarrow may hold the GIL while it allocates, so a consumer in
        another thread of this process cannot release anything during that wait: bound it with
        ``block_timeout``. Sealed mode: allocations go to the arena of the *next* batch
        published, so build each batch after the previous :meth:`publish` and publish it as one
        batch: buffers built before an earlier publish, or the second chunk of a Table built in
        one go, lie in an arena that is already sealed and are copied (counted). A function's
        temporaries take room in the arena too.

        The pool keeps the producer's memory alive as long as it or a buffer from it lives;
        after :meth:`close` allocating from it fails (``pyarrow.ArrowInvalid``).
        """
        if self._memory_pool is None:
            self._memory_pool = self._native.memory_pool()
        return self._memory_pool

    def allocate(self, nbytes: int) -> Allocation:
        """``nbytes`` of shared memory to build a batch in (64-byte aligned): fill numpy arrays
        made with ``numpy.frombuffer(allocation, dtype)``, wrap them with
        ``pyarrow.py_buffer``/``pyarrow.Array.from_buffers``, and publish: nothing is copied
        (``stats["bytes_copied"]`` stays 0).

        Ring mode: taken from the ring, waiting per ``block_timeout`` when it is full (not
        interrupted by Ctrl-C). Sealed mode: made in the arena of the next batch published
        (allocate after the previous ``publish``). See :class:`Allocation` for when not to write.
        :attr:`memory_pool` builds in the same memory with any pyarrow function.
        """
        return self._native.allocate(nbytes)

    def change_schema(self, schema: pa.Schema) -> None:
        """Announces a new schema; consumers see it before the next batch."""
        self._native.change_schema(_schema_capsule(schema, "schema"))

    def end(self) -> None:
        """Ends the stream: consumers finish iterating after the batches published before."""
        self._native.end()

    def set_request_handler(
            self, handler: Optional[Callable[[bytes], Any]]) -> None:
        """Answers consumers' :meth:`Consumer.request` calls: ``handler(request: bytes)`` returns
        what to send back — anything :meth:`publish` takes, a RecordBatchReader or generator of
        batches, or None for an empty answer. An exception becomes a :class:`RequestError` at
        the requester, with its message. The handler runs on a thread of the producer (one per
        request), holding the GIL while it runs. None removes the handler."""
        if handler is None:
            self._native.set_request_handler(None)
            return

        def answer(request: bytes) -> Any:
            result = handler(request)
            if result is None:
                return None
            return _as_reader(result).__arrow_c_stream__()

        self._native.set_request_handler(answer)

    # -- waiting

    def wait_for_consumers(self, count: int = 1, timeout: Optional[float] = None) -> None:
        """Waits until ``count`` consumers are attached.

        :raises ShmarrowTimeoutError: not within ``timeout`` seconds (None: forever).
        """
        self._native.wait_for_consumers(count, _milliseconds(timeout, "timeout"))

    def wait_until_drained(self, timeout: Optional[float] = None) -> None:
        """Waits until no consumer holds or has queued any batch (all released, or gone).

        Call it after :meth:`end`: a consumer iterating ``for batch in consumer:`` holds each
        batch in its loop variable until it takes the next one, so before the end its latest
        batch stays held and this waits for its timeout. After the end the loop finishes and the
        consumer releases the last batch when it drops it (or exits). Leaving a ``with`` block
        does both (end, then this, for ``drain_timeout``).

        :raises ShmarrowTimeoutError: not within ``timeout`` seconds (None: forever).
        """
        self._native.wait_until_drained(_milliseconds(timeout, "timeout"))

    # -- state

    @property
    def stats(self) -> dict:
        """``{"published", "bytes_copied", "consumers", "consumers_total",
        "consumers_refused", "dropped", "in_flight", "ring_bytes_in_use", "page_size"}``
        (``page_size``: bytes per page of the shared memory as obtained, see ``pages``)."""
        return self._native.stats()

    @property
    def schema(self) -> pa.Schema:
        return pa.Schema._import_from_c_capsule(self._native.schema())

    @property
    def mode(self) -> str:
        """``"ring"`` or ``"sealed"``."""
        return self._native.mode

    @property
    def address(self) -> str:
        return self._native.address

    @property
    def closed(self) -> bool:
        return self._native.closed

    def close(self) -> None:
        """Stops serving (consumers still attached get an error) and removes the socket.
        Memory from :meth:`allocate` stays valid in ring mode."""
        self._native.close()

    def __enter__(self) -> "Producer":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        """Leaving without an exception: ends the stream and waits up to ``drain_timeout`` for
        the consumers to read and release everything; then closes (consumers that have not read
        everything by then get a :class:`StreamError`)."""
        try:
            if exc_type is None and not self.closed:
                self.end()
                try:
                    self.wait_until_drained(self._drain_timeout)
                except ShmarrowTimeoutError:
                    pass  # the consumers still attached learn it from the close
        finally:
            self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else self.mode
        return f"<shmarrow.Producer {self.address!r} {state}>"


class FlightBridge:
    """Serves the stream of the producer at ``socket`` to Arrow Flight clients (docs/flight.md):
    ticket ``b"stream"`` is the published stream, ``b"request:<bytes>"`` the producer's answer to
    ``<bytes>``. Each Flight stream is a consumer of the producer with ``max_in_flight`` credits
    (0: the producer's limit), so a slow or vanished client holds the producer back or releases
    everything exactly as a local consumer would.

    :param listen: ``grpc://HOST:PORT`` or ``grpc+tls://HOST:PORT``; port 0 takes a free port
        (:attr:`location` and :attr:`port` give it).
    :param allow_remote: needed to listen on a non-loopback host.
    :param tls_cert_pem, tls_key_pem: the certificate chain and key (PEM) for ``grpc+tls``.
    :param token: when set, every call must carry ``authorization: Bearer <token>``.
    :param serve_requests: serve ``request:`` tickets.
    :param advertise_socket: tell clients on this host the socket, so that they may read the
        producer through shared memory instead.
    :param ingest: accept ``DoPut`` of descriptor path ``["stream"]`` and publish its batches
        through a producer listening at ``socket`` (made by the first DoPut, with its schema;
        later DoPuts continue the stream with the same schema; :meth:`shutdown` ends it).
        ``mode``, ``ring_size``, ``retain``, ``max_consumers`` and ``max_in_flight`` (when > 0)
        are that producer's, as for :class:`Producer`.
    :param wait_consumers: ingest: the first DoPut publishes nothing until this many local
        consumers are attached (its writer is held back meanwhile).
    :param drain_timeout: ingest: seconds :meth:`shutdown` lets local consumers take the rest.
    """

    def __init__(self, socket: str, listen: str = "grpc://127.0.0.1:0", *,
                 allow_remote: bool = False, tls_cert_pem: str = "", tls_key_pem: str = "",
                 token: str = "", serve_requests: bool = True, advertise_socket: bool = True,
                 max_in_flight: int = 0, ingest: bool = False, mode: str = "ring",
                 ring_size: int = 64 << 20, retain: int = 0, max_consumers: int = 64,
                 wait_consumers: int = 0, drain_timeout: float = 10.0):
        if max_in_flight < 0:
            raise ValueError(f"max_in_flight must be >= 0, not {max_in_flight}")
        if mode not in ("ring", "sealed"):
            raise ValueError(f"mode must be 'ring' or 'sealed', not {mode!r}")
        if retain < 0 or max_consumers < 1 or wait_consumers < 0:
            raise ValueError("need retain >= 0, max_consumers >= 1 and wait_consumers >= 0")
        self._native = _native._FlightBridge(socket, listen, allow_remote, tls_cert_pem,
                                             tls_key_pem, token, serve_requests,
                                             advertise_socket, max_in_flight, ingest,
                                             mode == "ring", ring_size, retain, max_consumers,
                                             wait_consumers, _milliseconds(drain_timeout, "drain_timeout"))

    @property
    def location(self) -> str:
        """The address clients connect to, with the bound port."""
        return self._native.location

    @property
    def port(self) -> int:
        return self._native.port

    @property
    def stats(self) -> dict:
        """``{"streams_served", "streams_active", "batches_sent", "calls_refused",
        "batches_ingested"}``."""
        return self._native.stats()

    @property
    def closed(self) -> bool:
        return self._native.closed

    def shutdown(self) -> None:
        """Stops serving; the streams being served end with an error and release their batches.
        With ``ingest``, the ingested stream ends (with an error instead if a DoPut is publishing
        at that moment)."""
        self._native.shutdown()

    def __enter__(self) -> "FlightBridge":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        state = "closed" if self.closed else self.location
        return f"<shmarrow.FlightBridge {state}>"

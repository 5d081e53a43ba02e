"""python -m shmarrow.recv: receive one Arrow stream from a shmarrow producer and report on it.

The producer listens on a UNIX stream socket and, to each client, sends one data byte carrying one
memfd (SCM_RIGHTS). The memfd holds a complete Arrow IPC stream from offset 0 and is sealed against
any change, so it can be mapped read-only and read in place, without copying. Uses only pyarrow,
pandas, numpy and the standard library.

Exit status 0, or 1 with one line "shmarrow.recv: <message>" on stderr.
"""

import argparse
import array
import errno
import fcntl
import json
import mmap
import os
import socket
import stat
import sys
import time

import pyarrow as pa

from shmarrow._seal import IMMUTABLE_SEALS, seal_names
from shmarrow.summary import StreamSummary

PROG = "shmarrow.recv"
DEFAULT_SOCKET = "/tmp/shmarrow.sock"
# Room for more fds than the one expected, so that a producer sending several is caught and named
# instead of the kernel silently dropping the extra ones.
_FD_ROOM = 4
_CONNECT_RETRY_S = 0.01


class RecvError(Exception):
    """A failure reported as one line on stderr."""


def socket_address(path: str) -> str:
    """A leading '@' names the Linux abstract namespace (a leading NUL byte)."""
    return "\0" + path[1:] if path.startswith("@") else path


def connect(path: str, wait_ms: int, timeout_ms: int) -> socket.socket:
    """Connects to the producer, retrying for up to ``wait_ms`` while the socket does not exist
    yet, refuses, or has a full backlog (EAGAIN). The socket gets a ``timeout_ms`` receive timeout
    (0: none) so that a producer that accepts but never sends cannot hang the consumer."""
    deadline = time.monotonic() + wait_ms / 1000
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # close-on-exec by default
        sock.settimeout(timeout_ms / 1000 if timeout_ms else None)
        try:
            sock.connect(socket_address(path))
            return sock
        except (FileNotFoundError, ConnectionRefusedError, BlockingIOError) as e:
            sock.close()
            if time.monotonic() >= deadline:
                waited = f" (waited {wait_ms} ms)" if wait_ms else ""
                raise RecvError(f"cannot connect to {path}: {e.strerror}{waited}") from None
            time.sleep(_CONNECT_RETRY_S)
        except OSError as e:
            sock.close()
            raise RecvError(f"cannot connect to {path}: {e.strerror or e}") from None


def receive_fd(sock: socket.socket, timeout_ms: int) -> int:
    """Receives the one byte and the one fd the producer sends; the caller owns the fd returned.
    Every other fd received is closed, whatever goes wrong."""
    try:
        data, ancdata, flags, _ = sock.recvmsg(
            1, socket.CMSG_SPACE(_FD_ROOM * 4), socket.MSG_CMSG_CLOEXEC)
    except TimeoutError:
        raise RecvError(
            f"timed out after {timeout_ms} ms waiting for the producer to send an fd") from None
    except OSError as e:
        raise RecvError(f"recvmsg failed: {e.strerror or e}") from None
    fds = []
    try:
        unexpected = []
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                received = array.array("i")
                received.frombytes(payload[:len(payload) - len(payload) % received.itemsize])
                fds.extend(received)
            else:
                unexpected.append(f"level {level} type {kind}")
        if flags & socket.MSG_CTRUNC:
            raise RecvError(f"control data truncated (MSG_CTRUNC): the producer sent more than "
                            f"{_FD_ROOM} fds or other ancillary data")
        if unexpected:
            raise RecvError(f"unexpected control message ({', '.join(unexpected)}), "
                            "expected only SCM_RIGHTS")
        if not fds:
            if not data:
                raise RecvError("producer closed the connection before sending an fd")
            raise RecvError("producer sent a message with no fd")
        if len(fds) > 1:
            raise RecvError(f"producer sent {len(fds)} fds, expected exactly 1")
        return fds.pop()
    finally:
        for fd in fds:
            os.close(fd)


def read_seals(fd: int, allow_unsealed: bool) -> int:
    """The fd's seals. Unless ``allow_unsealed``, the fd must be a memfd with all of
    IMMUTABLE_SEALS; with it, a file without seals counts as having none."""
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError as e:
        if allow_unsealed:
            return 0
        if e.errno == errno.EINVAL:
            raise RecvError(f"fd {fd} is not a memfd (F_GET_SEALS unsupported)") from None
        raise RecvError(f"fcntl(fd {fd}, F_GET_SEALS) failed: {e.strerror}") from None
    missing = IMMUTABLE_SEALS & ~seals
    if missing and not allow_unsealed:
        raise RecvError(
            f"memfd fd {fd} is not sealed against change: missing {seal_names(missing)}")
    return seals


def private_copy(fd: int, size: int) -> pa.Buffer:
    """The file's first ``size`` bytes copied with preadv: nothing the producer does to an unsealed
    file later (shrinking it, rewriting it) can reach the copy. A file that shrank meanwhile gives
    a shorter copy, which the IPC reader then rejects as truncated."""
    copy = bytearray(size)
    view = memoryview(copy)
    done = 0
    while done < size:
        count = os.preadv(fd, [view[done:]], done)
        if count == 0:
            break
        done += count
    return pa.py_buffer(copy).slice(0, done)


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


def buffers_inside(batch: pa.RecordBatch, region: pa.Buffer) -> bool:
    """Whether every non-empty buffer of every column lies within ``region``: the reader handed
    out slices of the shared memory instead of copies."""
    begin, end = region.address, region.address + region.size
    return all(buf is None or buf.size == 0
               or (begin <= buf.address and buf.address + buf.size <= end)
               for column in batch.columns for buf in _buffers(column))


def receive_region(socket_path: str, wait_ms: int = 0, timeout_ms: int = 30000,
                   allow_unsealed: bool = False):
    """Receives the producer's memfd, checks it and maps it read-only.

    Returns ``(region, stat, seals)``: ``region`` is a ``pyarrow.Buffer`` over the mapping (or over a
    private copy with ``allow_unsealed`` when the memfd is not sealed)."""
    with connect(socket_path, wait_ms, timeout_ms) as sock:
        fd = receive_fd(sock, timeout_ms)
    try:
        seals = read_seals(fd, allow_unsealed)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RecvError(f"fd {fd} is not a regular file (st_mode 0{st.st_mode:o})")
        # The size comes from the file itself; sealed against shrinking, it stays valid.
        if st.st_size <= 0:
            raise RecvError(f"memfd fd {fd} is empty")
        if allow_unsealed:
            print(f"{PROG}: warning: --allow-unsealed: reading a private copy of the "
                  f"{st.st_size} bytes instead of mapping them (seals: {seal_names(seals)})",
                  file=sys.stderr)
            return private_copy(fd, st.st_size), st, seals
        try:
            mapping = mmap.mmap(fd, st.st_size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        except (OSError, ValueError) as e:
            raise RecvError(f"cannot map memfd fd {fd} ({st.st_size} bytes): {e}") from None
        return pa.py_buffer(mapping), st, seals  # no copy: Arrow buffers point into the mapping
    finally:
        os.close(fd)  # the mapping (or the copy) keeps the memory


def open_stream(socket_path: str, wait_ms: int = 0, timeout_ms: int = 30000,
                allow_unsealed: bool = False) -> pa.RecordBatchStreamReader:
    """Receives a producer's sealed stream and returns a reader over it: the batches' buffers are
    the shared memory itself. Raises ``RecvError`` naming what is wrong with bad input."""
    region, _, _ = receive_region(socket_path, wait_ms, timeout_ms, allow_unsealed)
    try:
        return pa.ipc.open_stream(region)
    except (pa.ArrowException, ValueError, OSError) as e:
        raise RecvError(f"invalid Arrow IPC stream: {e}") from None


def receive(args: argparse.Namespace) -> str:
    """Everything but the error handling; returns what to print on stdout."""
    region, st, seals = receive_region(args.socket, args.wait_ms, args.timeout_ms,
                                       args.allow_unsealed)
    try:
        reader = pa.ipc.open_stream(region)
        summary = StreamSummary(reader.schema)
        batches = []
        inside = True
        for index, batch in enumerate(reader):
            try:
                batch.validate(full=True)
            except pa.ArrowInvalid as e:
                raise RecvError(f"record batch {index} is invalid: {e}") from None
            inside = inside and buffers_inside(batch, region)
            summary.add(batch)
            batches.append(batch)
    except (pa.ArrowException, ValueError, OSError) as e:
        raise RecvError(f"invalid Arrow IPC stream: {e}") from None

    if not args.json:
        from shmarrow.report import render_report  # pandas takes long to import: only here
        return render_report(summary.schema, batches)
    result = summary.to_dict()
    result["memfd"] = {"inode": st.st_ino, "bytes": st.st_size, "seals": seal_names(seals)}
    result["buffers_in_mapping"] = inside
    return json.dumps(result, separators=(",", ":"), ensure_ascii=False) + "\n"


def _milliseconds(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {value}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m {PROG}",
        description="Receive one Arrow stream in a sealed memfd from a shmarrow producer.")
    parser.add_argument("--socket", default=DEFAULT_SOCKET,
                        help="producer's UNIX socket; a leading '@' means the abstract namespace "
                             f"(default {DEFAULT_SOCKET})")
    parser.add_argument("--json", action="store_true",
                        help="print one line of JSON (schema, counts, checksums, memfd) instead "
                             "of the report")
    parser.add_argument("--wait-ms", type=_milliseconds, default=0,
                        help="retry connecting for up to this long while the socket is missing "
                             "or refuses (default 0: one try)")
    parser.add_argument("--timeout-ms", type=_milliseconds, default=30000,
                        help="give up waiting for the fd after this long (0: never; "
                             "default 30000)")
    parser.add_argument("--allow-unsealed", action="store_true",
                        help="accept an fd without the seals, reading a private copy of it "
                             "instead of mapping it")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        sys.stdout.write(receive(args))
        sys.stdout.flush()
        return 0
    except KeyboardInterrupt:
        message = "interrupted"
    except (RecvError, pa.ArrowException, ValueError, OSError, MemoryError) as e:
        message = str(e) or type(e).__name__
    # One line, whatever the underlying library put in its message.
    print(f"{PROG}: {' '.join(message.split())}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())

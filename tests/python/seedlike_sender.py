#!/usr/bin/env python3
"""A producer that behaves like the original proof-of-concept sender, but seals its memfd.

It writes an Arrow IPC stream of one int32 column ``rand`` (seeded random values in 0..100) into a
memfd, seals it (F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_WRITE|F_SEAL_SEAL), listens on a UNIX stream
socket, and sends one client one byte "x" with the fd (SCM_RIGHTS), then exits. Once listening it
prints one JSON line: {"socket": path, "inode": N, "bytes": N} of the fd it is going to send.

--corrupt MODE sends something a consumer must refuse instead, to test the consumer's checks.
"""

import argparse
import fcntl
import json
import os
import random
import socket
import tempfile

import pyarrow as pa

IMMUTABLE_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE

CORRUPT_MODES = {
    "no-fd": "send the byte without an fd",
    "two-fds": "send two fds",
    "five-fds": "send five fds (more than a consumer has room for: MSG_CTRUNC)",
    "pipe": "send a pipe's read end",
    "regular-file": "send a temporary file holding the stream",
    "unsealed": "send the memfd without seals",
    "writable": "seal only F_SEAL_SHRINK|F_SEAL_GROW",
    "truncated": "write only the first half of the stream",
    "garbage": "write random bytes instead of a stream",
    "close-early": "accept and close without sending anything",
    "short-file": "write the stream, then ftruncate the memfd into the last batch's body",
    "empty": "send an empty (sealed) memfd",
}


def make_table(rows: int, seed: int = 42, mixed: bool = False) -> pa.Table:
    """Column ``rand``: int32 values in 0..100 from random.Random(seed). With ``mixed``, more
    columns of other types, with nulls, for tests that need more than one int32 column."""
    rng = random.Random(seed)
    columns = {"rand": pa.array([rng.randint(0, 100) for _ in range(rows)], pa.int32())}
    if mixed:
        def maybe(k, every, value):
            return None if k % every == every - 1 else value

        columns.update({
            "i64": pa.array([maybe(k, 7, rng.randint(-10**12, 10**12)) for k in range(rows)],
                            pa.int64()),
            "u8": pa.array([rng.randint(0, 255) for _ in range(rows)], pa.uint8()),
            "f32": pa.array([rng.uniform(-1, 1) for _ in range(rows)], pa.float32()),
            "f64": pa.array([float("nan") if k == 2 else maybe(k, 5, rng.uniform(-1e6, 1e6))
                             for k in range(rows)], pa.float64()),
            "flag": pa.array([maybe(k, 4, rng.random() < 0.5) for k in range(rows)]),
            "name": pa.array([maybe(k, 6, f"n\u00e4me-{rng.randint(0, 999)}" * (k % 3))
                              for k in range(rows)], pa.string()),
            "blob": pa.array([rng.randbytes(k % 5) for k in range(rows)], pa.large_binary()),
            "ts": pa.array([maybe(k, 3, rng.randint(0, 2**40)) for k in range(rows)],
                           pa.timestamp("us")),
            "day": pa.array([rng.randint(0, 20000) for _ in range(rows)], pa.date32()),
            "cat": pa.array([rng.choice("abc") for _ in range(rows)]).dictionary_encode(),
            "tags": pa.array([list(range(k % 4)) for k in range(rows)], pa.list_(pa.int32())),
        })
    return pa.table(columns)


def stream_bytes(table: pa.Table, batches: int) -> bytes:
    """The table as an Arrow IPC stream of ``batches`` record batches of near-equal size."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=max(1, -(-table.num_rows // batches)))
    return sink.getvalue().to_pybytes()


def make_fd(data: bytes, mode: str, seal: bool, rng: random.Random, directory: str) -> int:
    """The fd to send, holding ``data`` as ``mode`` wants it."""
    if mode == "pipe":
        read_end, write_end = os.pipe()
        os.close(write_end)
        return read_end
    if mode == "regular-file":
        fd, path = tempfile.mkstemp(dir=directory)
        os.unlink(path)
        os.write(fd, data)
        return fd
    if mode == "truncated":
        data = data[:len(data) // 2]
    elif mode == "garbage":
        data = rng.randbytes(len(data))
    elif mode == "empty":
        data = b""
    fd = os.memfd_create("seedlike", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    if mode == "short-file":
        os.ftruncate(fd, len(data) - 9)  # the last 8 bytes are the end-of-stream marker
    seals = {"unsealed": 0, "writable": fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW}.get(
        mode, IMMUTABLE_SEALS if seal else 0)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", required=True, help="path, or @name for the abstract namespace")
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--batches", type=int, default=1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--mixed", action="store_true", help="add columns of other types")
    parser.add_argument("--seal", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--corrupt", choices=sorted(CORRUPT_MODES), default=None,
                        help="; ".join(f"{k}: {v}" for k, v in CORRUPT_MODES.items()))
    parser.add_argument("--accept-timeout", type=float, default=30.0,
                        help="seconds to wait for the client before giving up")
    return parser.parse_args(argv)


class Producer:
    """Everything up to listening happens in the constructor, so a client may connect as soon as
    it returns; serve() then serves that one client. (Tests also run it in a thread, which spares
    them starting a Python process.)"""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.abstract = args.socket.startswith("@")
        data = stream_bytes(make_table(args.rows, args.seed, args.mixed), args.batches)
        directory = (tempfile.gettempdir() if self.abstract
                     else os.path.dirname(os.path.abspath(args.socket)))
        self.fd = make_fd(data, args.corrupt, args.seal, random.Random(args.seed), directory)
        st = os.fstat(self.fd)
        self.info = {"socket": args.socket, "inode": st.st_ino, "bytes": st.st_size}
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind("\0" + args.socket[1:] if self.abstract else args.socket)
        self.listener.listen(1)
        self.listener.settimeout(args.accept_timeout)

    def serve(self) -> None:
        mode = self.args.corrupt
        try:
            conn, _ = self.listener.accept()
            with conn:
                if mode == "no-fd":
                    conn.sendall(b"x")
                elif mode in ("two-fds", "five-fds"):
                    socket.send_fds(conn, [b"x"], [self.fd] * (2 if mode == "two-fds" else 5))
                elif mode != "close-early":
                    socket.send_fds(conn, [b"x"], [self.fd])
        finally:
            self.listener.close()
            os.close(self.fd)
            if not self.abstract:
                os.unlink(self.args.socket)


def main() -> None:
    producer = Producer(parse_args())
    print(json.dumps(producer.info), flush=True)
    producer.serve()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A consumer that behaves like the original proof-of-concept receiver, to show that it still
works against a shmarrow producer: it connects, takes the fd from ONE recvmsg with room for
exactly one fd, maps the whole file and prints the report. Unlike ``python -m shmarrow.recv`` it
checks nothing (no seals, no validation), as the original did not."""

import argparse
import mmap
import os
import socket
import struct

import pyarrow as pa

from shmarrow.report import render_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", default="/tmp/shmarrow.sock")
    args = parser.parse_args()
    address = "\0" + args.socket[1:] if args.socket.startswith("@") else args.socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(address)
        _, ancdata, _, _ = sock.recvmsg(1, socket.CMSG_LEN(4))
    (fd,) = struct.unpack("i", ancdata[0][2][:4])
    mapping = mmap.mmap(fd, os.fstat(fd).st_size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    os.close(fd)
    reader = pa.ipc.open_stream(pa.py_buffer(mapping))
    print(render_report(reader.schema, list(reader)), end="")


if __name__ == "__main__":
    main()

"""The automated proof that no copy sneaks in between `shmarrow send` and `shmarrow recv`.

What docs/PROOF.md shows by hand, checked on every run with a 256 MiB batch:

* the bytes that cross the socket stay under a few KiB: a counting relay between consumer and
  producer forwards every message (data and SCM_RIGHTS fds) and counts them;
* producer and consumer hold the same memfd inode (also seen in /proc/<producer>/fd and maps);
* the consumer's column buffers lie inside its mapping of the memfd;
* building and publishing allocates under 1 MiB from the heap, and so does reading and summing,
  counted by an LD_PRELOAD malloc interposer (tests/proof/malloc_counter.c), not by pool stats.

Binaries come from the build directory in $SHMARROW_BUILD (default <repo>/build): shmarrow,
tests/proof/heap_probe and tests/proof/libmalloc_counter.so. Tests skip when they are missing.
"""

from __future__ import annotations

import fcntl
import json
import os
import selectors
import socket
import stat
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("SHMARROW_BUILD", REPO / "build"))
CLI = BUILD / "shmarrow"
PROBE = BUILD / "tests" / "proof" / "heap_probe"
COUNTER = BUILD / "tests" / "proof" / "libmalloc_counter.so"

ROWS = 33554432  # one int64 column of 256 MiB
BATCH_BYTES = ROWS * 8
KIB = 1024
MIB = 1024 * 1024
TIMEOUT = 120
SEALS = {"F_SEAL_SEAL", "F_SEAL_SHRINK", "F_SEAL_GROW", "F_SEAL_WRITE"}


def _need(*paths: Path) -> None:
    for path in paths:
        if not path.exists():
            pytest.skip(
                f"{path} not built: build it with `cmake --build {BUILD}` "
                "(or point SHMARROW_BUILD at a build directory)"
            )


def _abstract_name(kind: str) -> str:
    """A fresh abstract socket name (no file, no path length trouble), without the '@'."""
    return f"shmarrow-proof-{kind}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def _counter_env(out_file: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["LD_PRELOAD"] = str(COUNTER)
    env["MALLOC_COUNTER_OUT"] = str(out_file)
    # Arrow's default pool through malloc, where the interposer sees it (not jemalloc/mimalloc).
    env["ARROW_DEFAULT_MEMORY_POOL"] = "system"
    return env


def _read_counter(out_file: Path, pid: int) -> dict[str, int]:
    for line in out_file.read_text().splitlines():
        fields = dict(item.split("=", 1) for item in line.split())
        if int(fields["pid"]) == pid:
            return {key: int(value) for key, value in fields.items()}
    raise AssertionError(f"no malloc_counter line for pid {pid} in {out_file}")


class Producer:
    """`shmarrow send` in the background; its --json summary is read as soon as it is printed
    (after the memfd is sealed, before any consumer is served)."""

    def __init__(self, socket_name: str, rows: int = ROWS, clients: int = 1, env=None):
        self.process = subprocess.Popen(
            [str(CLI), "send", "--socket", "@" + socket_name, "--rows", str(rows),
             "--batches", "1", "--schema", "x:int64", "--clients", str(clients),
             "--accept-timeout-ms", str(TIMEOUT * 1000), "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self.pid = self.process.pid
        self.summary = json.loads(self._first_line())

    def _first_line(self) -> str:
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout=TIMEOUT):
                self.kill()
                raise AssertionError("shmarrow send printed no summary in time")
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(timeout=TIMEOUT)
            raise AssertionError(f"shmarrow send failed: {self.process.stderr.read().decode()}")
        return line.decode()

    def wait(self) -> int:
        try:
            return self.process.wait(timeout=TIMEOUT)
        finally:
            self.process.stdout.close()
            self.process.stderr.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def producers():
    started: list[Producer] = []

    def start(*args, **kwargs) -> Producer:
        producer = Producer(*args, **kwargs)
        started.append(producer)
        return producer

    yield start
    for producer in started:
        producer.kill()


def _recv(socket_arg: str, env=None) -> tuple[dict, int]:
    result = subprocess.run(
        [str(CLI), "recv", "--socket", socket_arg, "--connect-timeout-ms", str(TIMEOUT * 1000), "--json"],
        capture_output=True, text=True, timeout=TIMEOUT, env=env, check=False)
    assert result.returncode == 0, f"shmarrow recv failed: {result.stderr}"
    return json.loads(result.stdout), result.returncode


class CountingRelay(threading.Thread):
    """Listens on its own abstract socket; for the one consumer that connects, connects to the
    producer and forwards every message both ways (data and SCM_RIGHTS fds, with recv_fds and
    send_fds), counting data bytes, fds and messages per direction."""

    def __init__(self, producer_name: str):
        super().__init__(daemon=True)
        self.name_ = _abstract_name("relay")
        self.producer_name = producer_name
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind("\0" + self.name_)
        self.listener.listen(1)
        self.data_bytes = {"to_consumer": 0, "to_producer": 0}
        self.fds = {"to_consumer": 0, "to_producer": 0}
        self.messages = {"to_consumer": 0, "to_producer": 0}
        self.fd_files: list[dict] = []  # what each forwarded fd refers to
        self.error: BaseException | None = None

    @property
    def socket_arg(self) -> str:
        return "@" + self.name_

    def _connect_producer(self) -> socket.socket:
        deadline = time.monotonic() + TIMEOUT
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect("\0" + self.producer_name)
                return sock
            except (ConnectionRefusedError, FileNotFoundError):
                sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def run(self) -> None:
        try:
            self.listener.settimeout(TIMEOUT)
            consumer, _ = self.listener.accept()
            consumer.settimeout(None)
            producer = self._connect_producer()
            peers = {consumer: (producer, "to_producer"), producer: (consumer, "to_consumer")}
            with consumer, producer, selectors.DefaultSelector() as selector:
                for sock in peers:
                    selector.register(sock, selectors.EVENT_READ)
                while peers:
                    ready = selector.select(timeout=TIMEOUT)
                    if not ready:
                        raise TimeoutError("relay: no traffic")
                    for key, _ in ready:
                        source = key.fileobj
                        if source not in peers:
                            continue
                        target, direction = peers[source]
                        data, fds, flags, _ = socket.recv_fds(source, 65536, 16)
                        try:
                            if flags & socket.MSG_CTRUNC:
                                raise AssertionError("relay: control data truncated")
                            if not data and not fds:  # end of this direction
                                selector.unregister(source)
                                del peers[source]
                                try:
                                    target.shutdown(socket.SHUT_WR)
                                except OSError:
                                    pass
                                continue
                            self.messages[direction] += 1
                            self.data_bytes[direction] += len(data)
                            self.fds[direction] += len(fds)
                            for fd in fds:
                                st = os.fstat(fd)
                                self.fd_files.append({
                                    "inode": st.st_ino, "size": st.st_size,
                                    "regular": stat.S_ISREG(st.st_mode),
                                    "seals": fcntl.fcntl(fd, fcntl.F_GET_SEALS),
                                    "link": os.readlink(f"/proc/self/fd/{fd}")})
                            sent = socket.send_fds(target, [data], fds) if fds else 0
                            if sent < len(data):
                                target.sendall(data[sent:])
                        finally:
                            for fd in fds:
                                os.close(fd)  # the relay's own copy
        except BaseException as error:  # reported by the test
            self.error = error
        finally:
            self.listener.close()


def test_socket_carries_one_byte_and_one_fd_for_a_256_mib_batch(producers):
    _need(CLI)
    producer_name = _abstract_name("producer")
    producer = producers(producer_name)
    sent = producer.summary
    assert sent["rows"] == ROWS
    assert sent["memfd"]["bytes"] >= BATCH_BYTES

    relay = CountingRelay(producer_name)
    relay.start()
    received, _ = _recv(relay.socket_arg)
    relay.join(timeout=TIMEOUT)
    assert not relay.is_alive(), "relay did not finish"
    assert relay.error is None, f"relay failed: {relay.error!r}"
    assert producer.wait() == 0

    crossed = sum(relay.data_bytes.values())
    print(f"\nsocket traffic for a {sent['memfd']['bytes']}-byte memfd: "
          f"data bytes {relay.data_bytes}, fds {relay.fds}, messages {relay.messages}, "
          f"fd {relay.fd_files}")
    assert crossed < 4096
    assert relay.fds == {"to_consumer": 1, "to_producer": 0}
    # The one fd that crossed is the producer's sealed memfd, the whole batch behind it.
    (passed,) = relay.fd_files
    assert passed["regular"] and passed["link"].startswith("/memfd:shmarrow")
    assert passed["inode"] == sent["memfd"]["inode"]
    assert passed["size"] == sent["memfd"]["bytes"]
    seal_bits = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
    assert passed["seals"] & seal_bits == seal_bits
    # And the consumer read the whole batch through it.
    assert received["rows"] == ROWS
    assert received["columns"][0]["checksum"] == sent["columns"][0]["checksum"]
    assert received["memfd"]["inode"] == sent["memfd"]["inode"]
    assert received["buffers_in_mapping"] is True


def _producer_memfd(pid: int) -> tuple[list[tuple[int, str, int]], list[str]]:
    """(fd number, link, inode) of each memfd:shmarrow fd of `pid`, and its memfd maps lines."""
    fds = []
    for entry in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{entry}")
            if link.startswith("/memfd:shmarrow"):
                fds.append((int(entry), link, os.stat(f"/proc/{pid}/fd/{entry}").st_ino))
        except FileNotFoundError:
            continue
    maps = [line for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
            if "memfd:shmarrow" in line]
    return fds, maps


def test_producer_and_consumer_hold_the_same_inode(producers):
    _need(CLI)
    name = _abstract_name("producer")
    producer = producers(name)
    sent = producer.summary
    inode = sent["memfd"]["inode"]

    # Before anyone connects: the producer holds the sealed memfd and still maps its batch.
    fds, maps = _producer_memfd(producer.pid)
    print(f"\nproducer {producer.pid}: fds {fds}\n" + "\n".join(maps))
    assert [fd_inode for _, _, fd_inode in fds] == [inode]
    assert fds[0][1] == "/memfd:shmarrow (deleted)"
    assert maps, "the producer maps no memfd:shmarrow"
    for line in maps:
        assert int(line.split()[4]) == inode  # the inode column of /proc/PID/maps

    received, _ = _recv("@" + name)
    assert producer.wait() == 0
    assert received["memfd"]["inode"] == inode
    assert received["memfd"]["bytes"] == sent["memfd"]["bytes"]
    assert received["rows"] == ROWS


def test_consumer_reads_the_columns_inside_its_mapping(producers):
    _need(CLI)
    name = _abstract_name("producer")
    producer = producers(name)
    sent = producer.summary
    received, _ = _recv("@" + name)
    assert producer.wait() == 0

    assert received["buffers_in_mapping"] is True
    assert set(received["memfd"]["seals"].split("|")) >= SEALS
    placement = sent["placement"]
    assert placement["bytes_copied"] == 0
    assert placement["bytes_in_place"] == BATCH_BYTES
    # The memfd is the batch plus Arrow's metadata, nothing else.
    assert sent["memfd"]["bytes"] == BATCH_BYTES + placement["metadata_bytes"]
    assert placement["metadata_bytes"] < 4096


def _run_probe(mode: str, tmp_path: Path) -> tuple[dict, dict]:
    out = tmp_path / f"probe-{mode}.txt"
    result = subprocess.run([str(PROBE), mode, str(ROWS)], capture_output=True, text=True,
                            timeout=TIMEOUT, env=_counter_env(out), check=False)
    assert result.returncode == 0, f"heap_probe {mode} failed: {result.stderr}"
    figures = json.loads(result.stdout)
    process = _read_counter(out, _pid_of(out))
    print(f"\nheap_probe {mode}: {figures}\nwhole process: {process}")
    return figures, process


def _pid_of(out_file: Path) -> int:
    lines = out_file.read_text().splitlines()
    assert len(lines) == 1, f"expected one process in {out_file}: {lines}"
    return int(dict(item.split("=", 1) for item in lines[0].split())["pid"])


def test_building_publishing_and_reading_256_mib_allocates_under_1_mib_of_heap(tmp_path):
    _need(PROBE, COUNTER)
    figures, process = _run_probe("arena", tmp_path)
    assert figures["default_pool"] == "system"  # Arrow's pool is counted, not hidden in jemalloc
    assert figures["rows"] == ROWS
    assert figures["sum"] == ROWS * (ROWS - 1) // 2
    assert figures["buffers_in_mapping"] is True
    assert figures["producer_inode"] == figures["consumer_inode"]
    assert figures["bytes_copied"] == 0
    assert figures["produce_heap_bytes"] < MIB
    assert figures["consume_heap_bytes"] < MIB
    # No single heap block anywhere in the process could hold even 1 MiB of the column.
    assert process["heap_max"] < MIB


def test_interposer_control_heap_built_column_counts_256_mib(tmp_path):
    """The same probe with the column built on the default (heap) pool: the interposer must see
    the 256 MiB, or the figures above would prove nothing."""
    _need(PROBE, COUNTER)
    figures, process = _run_probe("heap", tmp_path)
    assert figures["default_pool"] == "system"
    assert figures["sum"] == ROWS * (ROWS - 1) // 2
    assert figures["produce_heap_bytes"] >= BATCH_BYTES
    assert process["heap_max"] >= BATCH_BYTES
    assert figures["bytes_copied"] == BATCH_BYTES  # the writer had to copy it into the arena
    # Reading is from the memfd either way.
    assert figures["consume_heap_bytes"] < MIB


def test_cli_send_and_recv_whole_process_heap_stays_small(producers, tmp_path):
    _need(CLI, COUNTER)
    # What merely starting the tool costs (libarrow's and libstdc++'s static initialisation).
    baseline_out = tmp_path / "baseline.txt"
    started = subprocess.run([str(CLI), "--help"], capture_output=True, timeout=TIMEOUT,
                             env=_counter_env(baseline_out), check=False)
    assert started.returncode == 0
    baseline = _read_counter(baseline_out, _pid_of(baseline_out))

    send_out = tmp_path / "send.txt"
    recv_out = tmp_path / "recv.txt"
    name = _abstract_name("producer")
    producer = producers(name, env=_counter_env(send_out))
    received, _ = _recv("@" + name, env=_counter_env(recv_out))
    assert producer.wait() == 0
    send = _read_counter(send_out, producer.pid)
    recv = _read_counter(recv_out, _pid_of(recv_out))
    print(f"\nwhole-process heap: baseline (--help) {baseline}\n  send {send}\n  recv {recv}")

    assert received["rows"] == ROWS
    assert received["columns"][0]["checksum"] == producer.summary["columns"][0]["checksum"]
    assert producer.summary["placement"]["bytes_copied"] == 0
    for figures in (send, recv):
        assert figures["heap_bytes"] < 8 * MIB  # whole process, static initialisation included
        assert figures["heap_bytes"] - baseline["heap_bytes"] < MIB  # the work itself
        assert figures["heap_max"] < MIB

"""Tests of python -m shmarrow.recv, its checksum and its report, against seedlike_sender.py (and
against the C++ tool where it is built)."""

import decimal
import json
import os
import re
import socket
import struct
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pytest

from conftest import TIMEOUT_S, child_env, run_recv, run_script
from seedlike_sender import CORRUPT_MODES, make_table
from shmarrow.report import render_report
from shmarrow.summary import StreamSummary

# --- an independent, deliberately naive implementation of the checksum --------------------------

NULL_HASH = 0x9E3779B97F4A7C15


def naive_fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) % 2**64
    return h


def naive_value_bytes(value, arrow_type: pa.DataType) -> bytes:
    if pa.types.is_boolean(arrow_type):
        return bytes([1 if value else 0])
    if pa.types.is_float32(arrow_type):
        return struct.pack("<f", value)
    if pa.types.is_float64(arrow_type):
        return struct.pack("<d", value)
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes):
        return value
    # Integers, and temporal values already cast to the integer of their width.
    return value.to_bytes(arrow_type.bit_width // 8, "little",
                          signed=not pa.types.is_unsigned_integer(arrow_type))


def naive_checksum(column) -> int:
    """The checksum of a pyarrow (Chunked)Array, row by row."""
    values = column
    if pa.types.is_temporal(column.type):
        values = column.cast(pa.int32() if column.type.bit_width == 32 else pa.int64())
    total = 0
    for i, value in enumerate(values.to_pylist()):
        e = NULL_HASH if value is None else naive_fnv1a64(naive_value_bytes(value, column.type))
        total += e * (2 * i + 1)
    return total % 2**64


def summarize(*batches: pa.RecordBatch) -> dict:
    summary = StreamSummary(batches[0].schema)
    for batch in batches:
        summary.add(batch)
    return summary.to_dict()


# --- checksum unit tests ----------------------------------------------------------------------

def test_fnv_matches_published_test_vectors():
    assert naive_fnv1a64(b"") == 0xCBF29CE484222325
    assert naive_fnv1a64(b"a") == 0xAF63DC4C8601EC8C
    assert naive_fnv1a64(b"foobar") == 0x85944171F73967E8


def test_checksum_of_int32_with_null_by_hand():
    batch = pa.record_batch({"x": pa.array([1, None, 3], pa.int32())})
    expected = (naive_fnv1a64(b"\x01\x00\x00\x00") * 1 + NULL_HASH * 3
                + naive_fnv1a64(b"\x03\x00\x00\x00") * 5) % 2**64
    column = summarize(batch)["columns"][0]
    assert column == {"name": "x", "type": "int32", "null_count": 1,
                      "checksum": format(expected, "016x")}


SAMPLE = pa.table({
    "b": pa.array([True, None, False, True, True, False, None, True, False, True, False]),
    "i8": pa.array([-128, 127, None, -1, 0, 5, 6, 7, 8, 9, 10], pa.int8()),
    "u64": pa.array([2**64 - 1, 0, 1, None, 2**63, 3, 4, 5, 6, 7, 8], pa.uint64()),
    "i64": pa.array([2**62 + 1, None, -(2**63), 0, 1, 2, 3, 4, 5, 6, 7], pa.int64()),
    "f32": pa.array([1.5, -0.0, None, float("inf"), 3.25, 0.1, 1, 2, 3, 4, 5], pa.float32()),
    "f64": pa.array([0.1, None, -2.5, 1e300, 0.0, 1, 2, 3, 4, 5, 6], pa.float64()),
    "s": pa.array(["", "a", None, "\u00fcber", "xyz" * 10, "b", "c", "d", "e", "f", "g"]),
    "ls": pa.array(["p", None, "q", "", "r", "s", "t", "u", "v", "w", "x"], pa.large_string()),
    "bin": pa.array([b"\x00", b"", None, b"\xff\xfe", b"a", b"b", b"c", b"d", b"e", b"f", b"g"]),
    "ts": pa.array([0, None, -1, 2**40, 5, 6, 7, 8, 9, 10, 11], pa.timestamp("ns")),
    "d32": pa.array([0, 1, None, 19000, 4, 5, 6, 7, 8, 9, 10], pa.date32()),
    "t32": pa.array([0, 1000, None, 86399000, 4, 5, 6, 7, 8, 9, 10], pa.time32("ms")),
    "dur": pa.array([None, -5, 5, 0, 4, 5, 6, 7, 8, 9, 10], pa.duration("s")),
})


def test_checksums_match_naive_definition_for_every_supported_type():
    columns = summarize(*SAMPLE.to_batches())["columns"]
    for column, (name, data) in zip(columns, zip(SAMPLE.column_names, SAMPLE.columns)):
        assert column["checksum"] == format(naive_checksum(data), "016x"), name
        assert column["null_count"] == data.null_count, name


def test_checksums_do_not_depend_on_batching_or_array_offsets():
    whole = summarize(*SAMPLE.to_batches())
    # Slices of one batch start at odd offsets, bit offsets included for the bool column.
    batch = SAMPLE.to_batches()[0]
    pieces = summarize(batch.slice(0, 3), batch.slice(3, 5), batch.slice(8))
    assert pieces["columns"] == whole["columns"]
    assert (pieces["batches"], pieces["rows"]) == (3, len(SAMPLE))
    # ...but they do depend on the rows' order.
    reversed_rows = summarize(SAMPLE.take(list(range(len(SAMPLE) - 1, -1, -1))).to_batches()[0])
    assert all(a["checksum"] != b["checksum"]
               for a, b in zip(reversed_rows["columns"], whole["columns"]))


def test_types_without_checksum_still_count_nulls():
    batch = pa.record_batch({
        "dict": pa.array(["a", None, "a"]).dictionary_encode(),
        "list": pa.array([[1], None, []], pa.list_(pa.int32())),
        "f16": pa.array([None, None, None], pa.float16()),
        "dec": pa.array([None, 1, 2], pa.decimal128(5, 2)),
        "null": pa.nulls(3),
    })
    summary = summarize(batch)
    assert [c["checksum"] for c in summary["columns"]] == [None] * 5
    assert [c["null_count"] for c in summary["columns"]] == [1, 1, 3, 1, 3]
    assert list(summary) == ["schema", "batches", "rows", "columns"]
    assert summary["schema"][0] == {"name": "dict", "nullable": True,
                                    "type": "dictionary<values=string, indices=int32, ordered=0>"}


# --- report unit tests ------------------------------------------------------------------------

def test_report_keeps_ints_ints_and_formats_like_printf():
    schema = pa.schema([("i", pa.int64()), ("f", pa.float64()), ("b", pa.bool_()),
                        ("s", pa.string()), ("f32", pa.float32())])
    batches = [
        pa.record_batch([pa.array([2**62 + 1, None], pa.int64()),
                         pa.array([0.1, None]), pa.array([True, None]),
                         pa.array(["\u00fc x", None]), pa.array([1.5, 1e20], pa.float32())],
                        schema=schema),
        pa.record_batch([pa.array([-3], pa.int64()), pa.array([float("nan")]),
                         pa.array([False]), pa.array([""]), pa.array([1234567], pa.float32())],
                        schema=schema),
    ]
    assert render_report(schema, batches) == (
        "RecordBatch schema: i: int64, f: double, b: bool, s: string, f32: float\n"
        "Column name: i\nColumn Arrow type: int64\n"
        "Column name: f\nColumn Arrow type: double\n"
        "Column name: b\nColumn Arrow type: bool\n"
        "Column name: s\nColumn Arrow type: string\n"
        "Column name: f32\nColumn Arrow type: float\n"
        "== Arrow Table Summary ==\n"
        "Schema      : i: int64, f: double, b: bool, s: string, f32: float\n"
        "Num Columns : 5\n"
        "Num Rows    : 3\n"
        "\n"
        "== First 10 Rows ==\n"
        "i\tf\tb\ts\tf32\n"
        + "-" * 40 + "\n"
        "4611686018427387905\t0.1\ttrue\t\u00fc x\t1.5\n"
        "null\tnull\tnull\tnull\t1e+20\n"
        "-3\tnan\tfalse\t\t1.23457e+06\n")


def test_report_of_a_stream_without_rows():
    schema = pa.schema([("a", pa.int8()), ("b", pa.string())])
    assert render_report(schema, []).endswith(
        "Num Columns : 2\nNum Rows    : 0\n\n== First 10 Rows ==\na\tb\n" + "-" * 40 + "\n")


OTHER_TYPES = pa.table({
    "big": pa.array([253402300800 * 1000, None], pa.timestamp("ms")),  # beyond Python's datetime
    "dur": pa.array([5, -3], pa.duration("s")),
    "dec": pa.array([decimal.Decimal("1.50"), None], pa.decimal128(5, 2)),
    "f16": pa.array(np.array([1.5, 2], np.float16)),
    "cat": pa.array(["x", "y"]).dictionary_encode(),
    "tags": pa.array([[1, 2], None], pa.list_(pa.int8())),
    "dup": pa.StructArray.from_arrays([pa.array([1, 2]), pa.array([3, 4])], names=["a", "a"],
                                      mask=pa.array([False, True])),
})


def test_report_prints_other_types_as_arrow_casts_them_to_text():
    lines = render_report(OTHER_TYPES.schema, OTHER_TYPES.to_batches()).splitlines()
    assert lines[-2:] == ["10000-01-01 00:00:00.000\t5\t1.50\t1.5\tx\t[1, 2]\t?",
                          "null\t-3\tnull\t2\ty\tnull\tnull"]


# --- python -m shmarrow.recv against seedlike_sender.py -----------------------------------------

SEED42_REPORT = """\
RecordBatch schema: rand: int32
Column name: rand
Column Arrow type: int32
== Arrow Table Summary ==
Schema      : rand: int32
Num Columns : 1
Num Rows    : 100

== First 10 Rows ==
rand
----------------------------------------
81
14
3
94
35
31
28
17
94
13
"""
ALL_SEALS = "F_SEAL_SEAL|F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_WRITE"


def receive(serve, sock_path, sender_args=(), recv_args=()):
    """Runs seedlike_sender's producer (in a thread) and python -m shmarrow.recv against it;
    returns (recv result, the producer's {"socket", "inode", "bytes"})."""
    producer = serve(sock_path, *sender_args)
    result = run_recv("--socket", sock_path, *recv_args)
    producer.finish()
    return result, producer.info


def run_sender_script(procs, sock_path, sender_args=(), recv_args=()):
    """As receive(), with seedlike_sender.py as its own process."""
    sender, sent = procs.sender(sock_path, *sender_args)
    result = run_recv("--socket", sock_path, *recv_args)
    code, _, err = procs.finish(sender)
    assert code == 0, err
    return result, sent


def test_report_is_exact(procs, sock_path):
    result, _ = run_sender_script(procs, sock_path, ["--rows", "100", "--seed", "42"])
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == SEED42_REPORT


def test_without_pandas_json_works_and_the_report_says_what_to_install(serve, sock_path,
                                                                      tmp_path):
    blocker = tmp_path / "pandas"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('No module named pandas')\n")
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    results = []
    for args in (["--json"], []):
        producer = serve(sock_path, "--rows", "100")
        results.append(subprocess.run(
            [sys.executable, "-m", "shmarrow.recv", "--socket", sock_path, *args],
            capture_output=True, text=True, timeout=TIMEOUT_S, env=env))
        producer.finish()
    as_json, as_text = results
    assert (as_json.returncode, as_json.stderr) == (0, "")
    assert json.loads(as_json.stdout)["rows"] == 100
    assert as_text.returncode == 1 and as_text.stdout == ""
    assert as_text.stderr.startswith("shmarrow.recv: the text report needs pandas")
    assert "pip install 'shmarrow[report]', or use --json" in as_text.stderr


def test_report_reads_first_rows_across_batches(serve, sock_path):
    result, _ = receive(serve, sock_path, ["--rows", "100", "--batches", "34"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == SEED42_REPORT


def test_json_describes_the_stream_and_the_memfd(procs, sock_path):
    result, sent = run_sender_script(procs, sock_path, ["--rows", "100"], ["--json"])
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.endswith("\n") and result.stdout.count("\n") == 1
    assert ": " not in result.stdout and ", " not in result.stdout  # compact separators
    report = json.loads(result.stdout)
    assert list(report) == ["schema", "batches", "rows", "columns", "memfd", "buffers_in_mapping"]
    assert report["schema"] == [{"name": "rand", "type": "int32", "nullable": True}]
    assert (report["batches"], report["rows"]) == (1, 100)
    expected = format(naive_checksum(make_table(100)["rand"]), "016x")
    assert report["columns"] == [
        {"name": "rand", "type": "int32", "null_count": 0, "checksum": expected}]
    assert report["memfd"] == {"inode": sent["inode"], "bytes": sent["bytes"], "seals": ALL_SEALS}
    assert report["buffers_in_mapping"] is True


def test_json_of_many_types_in_many_batches(serve, sock_path):
    result, _ = receive(serve, sock_path, ["--rows", "200", "--batches", "3", "--mixed"],
                        ["--json"])
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    table = make_table(200, mixed=True)
    assert (report["batches"], report["rows"]) == (3, 200)
    assert [c["name"] for c in report["columns"]] == table.column_names
    for column, data in zip(report["columns"], table.columns):
        assert column["null_count"] == data.null_count, column["name"]
        expected = None if column["name"] in ("cat", "tags") else format(naive_checksum(data),
                                                                           "016x")
        assert column["checksum"] == expected, column["name"]
    # Dictionary and list buffers included: nothing was copied out of the memfd.
    assert report["buffers_in_mapping"] is True


def test_abstract_socket(serve, sock_dir):
    name = f"@{sock_dir.name}-{time.monotonic_ns()}"
    result, _ = receive(serve, name, ["--rows", "100"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == SEED42_REPORT


def test_seed_receiver_reads_a_sealed_stream(serve, sock_path):
    producer = serve(sock_path, "--rows", "100")
    result = run_script("seed_receiver.py", "--socket", sock_path)
    producer.finish()
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == SEED42_REPORT


def test_wait_ms_waits_for_a_producer_that_starts_later(procs, sock_path):
    consumer = procs.start([sys.executable, "-m", "shmarrow.recv", "--socket", sock_path,
                            "--connect-timeout-ms", "15000"])
    time.sleep(0.5)
    sender, _ = procs.sender(sock_path)
    code, out, err = procs.finish(consumer)
    assert (code, err) == (0, "")
    assert out == SEED42_REPORT
    assert procs.finish(sender)[0] == 0


def test_missing_socket_fails_at_once_without_wait(sock_path):
    start = time.monotonic()
    result = run_recv("--socket", sock_path)
    assert result.returncode == 1
    assert result.stderr == f"shmarrow.recv: connect('{sock_path}'): no producer is listening\n"
    assert time.monotonic() - start < 5


def test_refusing_socket_is_retried_for_wait_ms(sock_path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bound:
        bound.bind(sock_path)  # bound but not listening: connect is refused
        start = time.monotonic()
        result = run_recv("--socket", sock_path, "--connect-timeout-ms", "400")
    assert time.monotonic() - start >= 0.4
    assert result.returncode == 1
    assert result.stderr == f"shmarrow.recv: connect('{sock_path}'): no producer is listening\n"


def test_producer_that_never_sends_times_out(sock_path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(sock_path)
        listener.listen(1)  # never accepts: the connection waits in the backlog
        # The wait for a peer's first message follows the read timeout.
        result = run_recv("--socket", sock_path, "--read-timeout-ms", "300", timeout=45)
    assert result.returncode == 1
    assert result.stderr == (f"shmarrow.recv: producer at '{sock_path}' sent nothing within "
                             "300 ms\n")


# The library's messages (python -m shmarrow.recv is a shmarrow.Consumer).
EXPECTED_ERRORS = {
    "no-fd": r"message from '.*' carried no fd",
    "two-fds": r"sent 2 fds",
    "five-fds": r"fds",
    "pipe": r"fd \d+ is not a memfd \(F_GET_SEALS unsupported\)",
    # A file on tmpfs answers F_GET_SEALS (with F_SEAL_SEAL only); elsewhere it is refused.
    "regular-file": r"is not a memfd|missing F_SEAL_SHRINK\|F_SEAL_GROW\|F_SEAL_WRITE",
    "unsealed": r"memfd fd \d+ is not sealed against change: missing " + re.escape(ALL_SEALS),
    "writable": r"missing F_SEAL_SEAL\|F_SEAL_WRITE$",
    "truncated": r"IPC|[Mm]essage|bytes",
    "garbage": r"IPC|[Mm]essage|bytes",
    "close-early": r"producer at '.*' closed the connection before sending an fd",
    "short-file": r"[Ee]xpected to be able to read \d+ bytes for message body",
    "empty": r"memfd fd \d+ is empty",
}


def test_every_corruption_mode_has_an_expected_error():
    assert set(EXPECTED_ERRORS) == set(CORRUPT_MODES)


@pytest.mark.parametrize("mode", sorted(EXPECTED_ERRORS))
def test_bad_input_is_one_line_error(serve, sock_path, mode):
    result, _ = receive(serve, sock_path, ["--corrupt", mode])
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("shmarrow.recv: ") and result.stderr.count("\n") == 1, \
        result.stderr
    assert "Traceback" not in result.stderr
    assert re.search(EXPECTED_ERRORS[mode], result.stderr.rstrip("\n")), result.stderr


def test_no_seal_flag_is_refused(serve, sock_path):
    result, _ = receive(serve, sock_path, ["--no-seal"])
    assert result.returncode == 1
    assert "missing " + ALL_SEALS in result.stderr


@pytest.mark.parametrize("mode,seals", [("unsealed", "none"),
                                        ("writable", "F_SEAL_SHRINK|F_SEAL_GROW")])
def test_allow_unsealed_reads_a_private_copy(serve, sock_path, mode, seals):
    result, sent = receive(serve, sock_path, ["--corrupt", mode],
                           ["--allow-unsealed", "--json"])
    assert result.returncode == 0, result.stderr
    assert "copied into private memory" in result.stderr and "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    assert report["rows"] == 100
    assert report["memfd"] == {"inode": sent["inode"], "bytes": sent["bytes"], "seals": seals}
    # The buffers are slices of the copy, so still no copy beyond the one asked for.
    assert report["buffers_in_mapping"] is True


def test_allow_unsealed_still_needs_a_regular_file(serve, sock_path):
    result, _ = receive(serve, sock_path, ["--corrupt", "pipe"], ["--allow-unsealed"])
    assert result.returncode == 1
    assert re.fullmatch(r"shmarrow\.recv: fd \d+ is not a regular file \(st_mode 010600\)\n",
                        result.stderr), result.stderr


# --- against the C++ tool -------------------------------------------------------------------

def run_cpp(binary, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=TIMEOUT_S)


def py_wait(sock_path: str) -> list[str]:
    """python -m shmarrow.recv's options to wait for a producer that is starting."""
    return ["--socket", sock_path, "--connect-timeout-ms", str(TIMEOUT_S * 500)]


def cpp_wait(sock_path: str) -> list[str]:
    """The same for `shmarrow recv`."""
    return ["--socket", sock_path, "--connect-timeout-ms", str(TIMEOUT_S * 500)]


def test_cpp_send_to_python_cpp_and_seed_receivers(procs, sock_path, shmarrow_bin):
    """One C++ producer, four consumers of the same memfd: both tools' JSON and reports agree,
    and the original receiver still works."""
    sender = procs.start([shmarrow_bin, "send", "--socket", sock_path, "--rows", "1000",
                          "--batches", "3", "--clients", "5"])
    py_json = run_recv(*py_wait(sock_path), "--json")
    py_report = run_recv(*py_wait(sock_path))
    cpp_json = run_cpp(shmarrow_bin, "recv", *cpp_wait(sock_path), "--json")
    cpp_report = run_cpp(shmarrow_bin, "recv", *cpp_wait(sock_path))
    seed = run_script("seed_receiver.py", "--socket", sock_path)
    assert procs.finish(sender)[0] == 0
    for result in (py_json, py_report, cpp_json, cpp_report, seed):
        assert result.returncode == 0, result.stderr
    assert json.loads(py_json.stdout) == json.loads(cpp_json.stdout)
    assert json.loads(py_json.stdout)["buffers_in_mapping"] is True
    assert py_report.stdout == cpp_report.stdout == seed.stdout


def test_cpp_recv_agrees_with_python_recv(serve, sock_dir, shmarrow_bin):
    args = ["--rows", "300", "--batches", "4", "--mixed"]
    py, _ = receive(serve, str(sock_dir / "py.sock"), args, ["--json"])
    producer = serve(str(sock_dir / "cpp.sock"), *args)
    cpp = run_cpp(shmarrow_bin, "recv", "--socket", str(sock_dir / "cpp.sock"), "--json")
    producer.finish()
    assert py.returncode == 0 and cpp.returncode == 0, (py.stderr, cpp.stderr)
    py_report, cpp_report = json.loads(py.stdout), json.loads(cpp.stdout)
    assert cpp_report["memfd"]["inode"] == producer.info["inode"]
    for report in (py_report, cpp_report):
        del report["memfd"]  # two different memfds with the same bytes
    assert py_report == cpp_report


def test_cpp_and_python_reports_agree_beyond_plain_types(procs, sock_path, tmp_path,
                                                         shmarrow_bin):
    """Types the report prints through Arrow's cast to text, sent by `shmarrow send --from`."""
    table = OTHER_TYPES.select(["big", "dur", "dec", "f16"]).append_column(
        "tz", pa.array([1, None], pa.timestamp("ns", "UTC"))).append_column(
        "t64", pa.array([1000001, 0], pa.time64("us"))).append_column(
        "fsb", pa.array([b"ab", b"cd"], pa.binary(2))).append_column(
        "sv", pa.array(["x", None], pa.string_view()))
    path = tmp_path / "types.arrows"
    with pa.ipc.new_stream(str(path), table.schema) as writer:
        writer.write_table(table)
    sender = procs.start([shmarrow_bin, "send", "--from", path, "--socket", sock_path,
                          "--clients", "2"])
    py, cpp = run_recv(*py_wait(sock_path)), run_cpp(shmarrow_bin, "recv", *cpp_wait(sock_path))
    assert procs.finish(sender)[0] == 0
    assert py.returncode == 0 and cpp.returncode == 0, (py.stderr, cpp.stderr)
    assert py.stdout == cpp.stdout


def test_open_stream_reads_in_place_and_rejects_unsealed(serve, sock_path):
    import shmarrow.recv
    from shmarrow import InvalidError

    producer = serve(sock_path, "--rows", "1000", "--batches", "3")
    with shmarrow.recv.open_stream(sock_path, read_timeout=TIMEOUT_S) as consumer:
        assert consumer.mode == "handover"
        table = consumer.read_all()
    producer.finish()
    assert table.num_rows == 1000 and table.column(0).num_chunks == 3
    table.validate(full=True)
    maps = open("/proc/self/maps").read().splitlines()
    address = table.column(0).chunk(0).buffers()[1].address
    owner = [line for line in maps
             if int(line.split("-")[0], 16) <= address < int(line.split()[0].split("-")[1], 16)]
    assert len(owner) == 1 and "memfd:" in owner[0] and owner[0].split()[1].startswith("r")

    producer = serve(sock_path, "--corrupt", "unsealed")
    with pytest.raises(InvalidError, match="missing F_SEAL"):
        shmarrow.recv.open_stream(sock_path, read_timeout=TIMEOUT_S)
    producer.finish()


@pytest.mark.parametrize("mode", ["ring", "sealed"])
def test_reads_a_stream_producer_as_the_cli_does(sock_path, shmarrow_bin, mode):
    """Against a shmarrow.Producer (a stream, not the single hand-over): the same JSON as
    `shmarrow recv`, which adds the mode."""
    import shmarrow

    table = make_table(300, mixed=True)
    if mode == "ring":  # ring mode carries no dictionaries
        table = table.drop_columns([f.name for f in table.schema
                                    if pa.types.is_dictionary(f.type)])
    with shmarrow.Producer(sock_path, table.schema, mode=mode) as producer:
        py = subprocess.Popen([sys.executable, "-m", "shmarrow.recv", *py_wait(sock_path),
                               "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=child_env())
        cpp = subprocess.Popen([str(shmarrow_bin), "recv", *cpp_wait(sock_path), "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        producer.wait_for_consumers(2, timeout=TIMEOUT_S)
        producer.publish(table.to_batches(max_chunksize=100))
    py_out, py_err = py.communicate(timeout=TIMEOUT_S)
    cpp_out, cpp_err = cpp.communicate(timeout=TIMEOUT_S)
    assert (py.returncode, py_err) == (0, "")
    assert cpp.returncode == 0, cpp_err
    report = json.loads(py_out)
    assert report == json.loads(cpp_out)
    assert (report["mode"], report["batches"], report["rows"]) == (mode, 3, 300)

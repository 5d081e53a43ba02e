"""The `shmarrow` command as a user types it: --version, --help, option mistakes, deprecated
spellings, what `inspect` says about files that are not Arrow IPC, `send --mode`'s wait for a
consumer, and an abstract socket name already in use."""

import json
import re
import select
import subprocess
import uuid
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.csv
import pyarrow.feather
import pyarrow.ipc
import pyarrow.orc
import pyarrow.parquet
import pytest

from conftest import REPO, TIMEOUT_S

COMMANDS = ["send", "recv", "flight-serve", "inspect"]
TABLE = pa.table({"a": pa.array([1, 2, 3], pa.int64()), "b": ["x", "y", "z"]})


class Cli:
    """`shmarrow ARGS...`: run to the end, or its argv for a background process."""

    def __init__(self, path: Path):
        self.path = path

    def argv(self, *args) -> list[str]:
        return [str(self.path), *map(str, args)]

    def __call__(self, *args) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=TIMEOUT_S)


@pytest.fixture
def cli(shmarrow_bin) -> Cli:
    return Cli(shmarrow_bin)


def _address() -> str:
    return f"@shmarrow-cli-{uuid.uuid4().hex}"


def _project_version() -> str:
    cmake = (REPO / "CMakeLists.txt").read_text()
    return re.search(r"project\(shmarrow VERSION ([0-9.]+)", cmake).group(1)


# --- --version and --help ------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["--version"], ["recv", "--version"], ["send", "--version"]])
def test_version_is_the_projects(cli, args):
    run = cli(*args)
    assert run.returncode == 0, run.stderr
    assert re.fullmatch(rf"shmarrow {re.escape(_project_version())} \(Arrow C\+\+ [0-9.]+\)\n",
                        run.stdout), run.stdout


def test_help_lists_the_commands_not_their_options(cli):
    run = cli("--help")
    assert run.returncode == 0
    for command in COMMANDS:
        assert re.search(rf"^  {command} ", run.stdout, re.M), command
    assert "--ring-size" not in run.stdout and "--connect-timeout-ms" not in run.stdout


def test_each_command_has_its_own_help(cli):
    helps = {}
    for command in COMMANDS:
        run = cli(command, "--help")
        assert run.returncode == 0, run.stderr
        assert run.stdout.startswith(f"usage: shmarrow {command} [options]")
        assert max(map(len, run.stdout.splitlines())) <= 80
        helps[command] = run.stdout
    assert "--ring-size" in helps["send"] and "--ring-size" not in helps["recv"]
    assert "--connect-timeout-ms" in helps["recv"] and "--clients" not in helps["recv"]
    assert "--listen" in helps["flight-serve"] and "--lossy" not in helps["flight-serve"]
    assert "FILE" in helps["inspect"] and "--socket" not in helps["inspect"]
    assert cli("inspect", "-h").stdout == helps["inspect"]


def test_no_command_is_a_usage_error(cli):
    run = cli()
    assert run.returncode == 2 and "commands:" in run.stderr
    run = cli("sned")
    assert run.returncode == 2 and run.stderr.startswith("shmarrow: unknown command 'sned'")


# --- option mistakes -----------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["recv", "--jsn"], "unknown option --jsn (did you mean --json?)"),
    # Close to a deprecated spelling: the current name is suggested.
    (["recv", "--wait-msec", "10"],
     "unknown option --wait-msec (did you mean --connect-timeout-ms?)"),
    (["recv", "--read-timeout", "10"],
     "unknown option --read-timeout (did you mean --read-timeout-ms?)"),
    (["recv", "--no-such-thing", "1"], "unknown option --no-such-thing;"),
    (["send", "--ring-size"], "option --ring-size needs a value"),
    (["inspect", "--json=yes", "x.arrow"], "option --json takes no value"),
    (["send", "--ring-size", "1MiB"], "--ring-size needs --mode ring|sealed"),
    (["send", "--mode", "ring", "--clients", "2"], "--clients applies only to the single hand-over"),
])
def test_option_mistakes_are_named(cli, args, message):
    run = cli(*args)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"shmarrow {args[0]}: "), run.stderr
    assert message in lines[0]


def test_option_value_after_equals_sign(cli, tmp_path):
    path = tmp_path / "t.arrow"
    pyarrow.feather.write_feather(TABLE, str(path), compression="uncompressed")
    run = cli("inspect", path, "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["rows"] == 3


# --- timeouts: one name each, old spellings still work -------------------------------------------

def test_deprecated_timeout_spellings_still_work_and_say_so(cli, procs):
    address = _address()
    producer = procs.start(cli.argv("send", "--mode", "ring", "--socket", address,
                                     "--batches", 2, "--rows", 5, "--json",
                                     "--accept-timeout-ms", TIMEOUT_S * 1000,
                                     "--linger-ms", 1000))
    received = cli("recv", "--socket", address, "--json", "--wait-ms", TIMEOUT_S * 1000,
                   "--timeout-ms", TIMEOUT_S * 1000)
    assert received.returncode == 0, received.stderr
    assert json.loads(received.stdout)["rows"] == 10
    assert received.stderr.splitlines() == [
        "shmarrow recv: --wait-ms is deprecated; use --connect-timeout-ms",
        "shmarrow recv: --timeout-ms is deprecated; use --read-timeout-ms"]
    code, out, err = procs.finish(producer)
    assert code == 0, err
    assert "--linger-ms is deprecated; use --drain-timeout-ms" in err


def test_flight_serve_accepts_its_old_wait_spelling(cli):
    # Refused for the address after the options were read: the old spelling was understood.
    run = cli("flight-serve", "--wait-ms", 10, "--listen", "grpc://192.0.2.1:0")
    assert run.returncode == 2
    assert run.stderr.splitlines()[0] == (
        "shmarrow flight-serve: --wait-ms is deprecated; use --connect-timeout-ms")
    assert "is not a loopback address" in run.stderr


def test_connect_timeout_waits_for_a_producer_that_starts_later(cli, procs):
    address = _address()
    consumer = procs.start(cli.argv("recv", "--socket", address, "--json",
                                    "--connect-timeout-ms", TIMEOUT_S * 1000))
    producer = procs.start(cli.argv("send", "--mode", "ring", "--socket", address,
                                    "--batches", 2, "--rows", 4))
    code, out, err = procs.finish(consumer)
    assert code == 0, err
    assert json.loads(out)["rows"] == 8
    assert procs.finish(producer)[0] == 0


# --- send --mode waits for a consumer ------------------------------------------------------------

@pytest.mark.parametrize("mode", ["ring", "sealed"])
def test_send_mode_waits_for_one_consumer_by_default(cli, procs, mode):
    address = _address()
    producer = procs.start(cli.argv("send", "--mode", mode, "--socket", address,
                                     "--batches", 3, "--rows", 7, "--json"))
    # Connects only once the producer says it is waiting: nothing may have been published yet.
    line = _first_line(producer)
    assert f"listening on {address}; waiting for 1 consumer(s)" in line, line
    received = cli("recv", "--socket", address, "--json", "--read-timeout-ms", TIMEOUT_S * 1000)
    assert received.returncode == 0, received.stderr
    assert json.loads(received.stdout)["batches"] == 3
    code, out, err = procs.finish(producer)
    assert code == 0, err
    assert json.loads(out)["producer"]["consumers_total"] == 1


def test_send_mode_wait_consumers_0_publishes_at_once(cli):
    run = cli("send", "--mode", "ring", "--socket", _address(), "--batches", 3, "--json",
              "--wait-consumers", 0)
    assert run.returncode == 0, run.stderr
    sent = json.loads(run.stdout)
    assert sent["batches"] == 3 and sent["producer"]["consumers_total"] == 0


# --- an abstract name in use ---------------------------------------------------------------------

@pytest.mark.parametrize("mode", [["--mode", "ring"], ["--mode", "sealed"], []])
def test_abstract_name_in_use_says_so(cli, procs, mode):
    """(Linux keeps abstract names apart per socket type: only a producer of the same kind, stream
    or hand-over, collides.)"""
    address = _address()
    first = procs.start(cli.argv("send", *mode, "--socket", address,
                                 "--accept-timeout-ms", TIMEOUT_S * 1000))
    assert "on " + address in _first_line(first)
    second = cli("send", *mode, "--socket", address)
    assert second.returncode == 1
    assert f"address {address} is in use by another process" in second.stderr


# --- inspect: what the file is -------------------------------------------------------------------

def _write(kind: str, path: Path) -> None:
    if kind == "parquet":
        pyarrow.parquet.write_table(TABLE, str(path))
    elif kind == "feather1":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            pyarrow.feather.write_feather(TABLE, str(path), version=1)
    elif kind == "orc":
        pyarrow.orc.write_table(TABLE, str(path))
    elif kind == "csv":
        pyarrow.csv.write_csv(TABLE, str(path))
    elif kind == "json":
        path.write_text('{"a": 1, "b": "x"}\n{"a": 2, "b": "y"}\n')
    elif kind == "text":
        path.write_text("hello\n")
    elif kind == "empty":
        path.write_bytes(b"")


@pytest.mark.parametrize("kind, suffix, said", [
    ("parquet", ".parquet", "is a Parquet file, not Arrow IPC; convert it with: python3 -c"),
    ("feather1", ".feather", "is a Feather v1 file (the format before Arrow IPC), not Arrow IPC"),
    ("orc", ".orc", "is an ORC file, not Arrow IPC"),
    ("csv", ".csv", "is CSV text, not Arrow IPC; convert it with"),
    ("json", ".jsonl", "is JSON text, not Arrow IPC; convert it with"),
    ("text", ".txt", "is a text file, not Arrow IPC"),
    ("empty", ".arrow", "is empty, not Arrow IPC"),
])
def test_inspect_says_what_a_file_is(cli, tmp_path, kind, suffix, said):
    path = tmp_path / f"data{suffix}"
    _write(kind, path)
    run = cli("inspect", path)
    assert run.returncode == 1
    assert run.stderr.startswith(f"shmarrow inspect: Invalid: {path} {said}"), run.stderr


@pytest.mark.parametrize("kind", ["parquet", "feather1", "orc", "csv"])
def test_inspect_conversion_hint_works(cli, tmp_path, kind):
    """The command the hint gives, run as given, makes a file `inspect` accepts."""
    path = tmp_path / f"data.{kind}"
    _write(kind, path)
    hint = cli("inspect", path).stderr
    command = re.search(r'convert it with: python3 -c "(.*)"$', hint.strip()).group(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        exec(command, {})  # the one-liner, in this interpreter (it has pyarrow)
    run = cli("inspect", path.with_suffix(".arrow"), "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["rows"] == 3


def test_inspect_names_arrow_file_and_stream(cli, tmp_path):
    file_path, stream_path = tmp_path / "t.arrow", tmp_path / "t.arrows"
    pyarrow.feather.write_feather(TABLE, str(file_path), compression="uncompressed")
    with pa.OSFile(str(stream_path), "wb") as sink, pa.ipc.new_stream(sink, TABLE.schema) as w:
        w.write_table(TABLE)
    run = cli("inspect", file_path)
    assert run.returncode == 0 and "valid Arrow IPC file (Feather v2)" in run.stdout
    run = cli("inspect", stream_path)
    assert run.returncode == 0 and "valid Arrow IPC stream" in run.stdout


def test_send_from_a_parquet_file_says_so(cli, tmp_path):
    path = tmp_path / "data.parquet"
    _write("parquet", path)
    run = cli("send", "--from", path, "--socket", _address())
    assert run.returncode == 1
    assert f"{path} is a Parquet file, not Arrow IPC" in run.stderr


def _first_line(proc: subprocess.Popen) -> str:
    """The first line `proc` writes on stderr ("" if none comes in time)."""
    ready, _, _ = select.select([proc.stderr], [], [], TIMEOUT_S)
    return proc.stderr.readline() if ready else ""

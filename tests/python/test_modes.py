"""`shmarrow send --mode ring|sealed` and `shmarrow recv` as real processes: many batches, fan-out,
back-pressure, lossy consumers, late joiners, requests, projection, schema checks and changes,
processes killed midway, and a consumer of another uid.

The CLI comes from the build directory in $SHMARROW_BUILD (default <repo>/build); the tests skip
when it is missing. Every process runs under a timeout, so a hang fails a test instead of blocking
the suite. Sockets are fresh abstract names ("@shmarrow-test-<uuid>").
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("SHMARROW_BUILD", REPO / "build"))
CLI = BUILD / "shmarrow"
TIMEOUT = 30  # seconds any one process may take

pytestmark = pytest.mark.skipif(not os.access(CLI, os.X_OK), reason=f"{CLI} not built")

MODES = ["ring", "sealed"]
SCHEMA = "a:int32,b:int64,c:float64,d:utf8,e:bool"
SUMMARY_KEYS = ("schema", "batches", "rows", "columns")
WAIT = ("--connect-timeout-ms", "10000", "--read-timeout-ms", str(TIMEOUT * 1000))


def _socket() -> str:
    return f"@shmarrow-test-{uuid.uuid4().hex}"


class Procs:
    """Background processes, each killed at the end of its test if still running."""

    def __init__(self):
        self.started: list[subprocess.Popen] = []

    def start(self, *args, **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen([str(CLI), *map(str, args)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, **kwargs)
        self.started.append(proc)
        return proc

    def send(self, mode: str, sock: str, *args) -> subprocess.Popen:
        return self.start("send", "--mode", mode, "--socket", sock, "--json",
                          "--accept-timeout-ms", TIMEOUT * 1000, *args)

    def recv(self, sock: str, *args, **kwargs) -> subprocess.Popen:
        return self.start("recv", "--socket", sock, "--json", *WAIT, *args, **kwargs)

    @staticmethod
    def finish(proc: subprocess.Popen, timeout: float = TIMEOUT) -> tuple[int, dict | None, str]:
        """Waits for `proc`: (exit status, its JSON line or None, stderr)."""
        out, err = proc.communicate(timeout=timeout)
        report = json.loads(out) if proc.returncode == 0 and out.strip() else None
        return proc.returncode, report, err

    def kill_all(self):
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


@pytest.fixture
def procs():
    started = Procs()
    yield started
    started.kill_all()


def _ok(proc: subprocess.Popen) -> dict:
    code, report, err = Procs.finish(proc)
    assert code == 0, f"{proc.args} exited {code}: {err}"
    assert report is not None, proc.args
    return report


def _same_stream(got: dict, want: dict) -> None:
    for key in SUMMARY_KEYS:
        assert got[key] == want[key], key


def _run_cli(*args, timeout: float = TIMEOUT, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


# --- whole streams ---------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_many_batches_arrive_equal(procs, mode):
    sock = _socket()
    sender = procs.send(mode, sock, "--batches", 200, "--rows", 1000, "--schema", SCHEMA,
                        "--null-fraction", 0.1, "--seed", 7, "--wait-consumers", 1)
    receiver = procs.recv(sock)
    got, sent = _ok(receiver), _ok(sender)
    assert sent["batches"] == 200 and sent["rows"] == 200_000
    assert all(c["null_count"] > 0 and c["checksum"] for c in sent["columns"])
    _same_stream(got, sent)
    assert got["mode"] == mode and got["dropped"] == 0 and got["schema_changes"] == 0
    assert sent["mode"] == mode
    assert sent["producer"].pop("page_size") in (4096, 2 << 20)  # tests/python/test_pages.py
    assert sent["producer"] == {"published": 200, "bytes_copied": 0, "consumers_total": 1,
                                "dropped": 0}


@pytest.mark.parametrize("mode", MODES)
def test_fan_out_to_three_consumers(procs, mode):
    sock = _socket()
    sender = procs.send(mode, sock, "--batches", 50, "--rows", 2000, "--schema", SCHEMA,
                        "--null-fraction", 0.2, "--wait-consumers", 3)
    receivers = [procs.recv(sock) for _ in range(3)]
    reports = [_ok(r) for r in receivers]
    sent = _ok(sender)
    for got in reports:
        _same_stream(got, sent)
    assert sent["producer"]["consumers_total"] == 3


def test_single_hand_over_still_served_to_recv(procs, tmp_path):
    """`send` without --mode: recv (now a shmarrow::Consumer) still takes the hand-over, from an
    abstract name (looked up per socket type) and from a socket file."""
    for sock in (_socket(), str(tmp_path / "s")):
        sender = procs.start("send", "--socket", sock, "--rows", 500, "--batches", 3,
                             "--schema", SCHEMA, "--null-fraction", 0.1, "--json",
                             "--accept-timeout-ms", TIMEOUT * 1000)
        got = _ok(procs.start("recv", "--socket", sock, "--connect-timeout-ms", 10000, "--json"))
        code, _, err = Procs.finish(sender)
        assert code == 0, err
        assert got["rows"] == 1500 and got["buffers_in_mapping"] is True
        assert "mode" not in got  # the hand-over's JSON is unchanged


# --- back-pressure and lossy consumers --------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_slow_consumer_holds_the_producer_back_without_loss(procs, mode):
    """A 1 MiB ring, ~100 KiB batches, at most 2 in flight, 20 ms per batch: the producer waits
    for the consumer; nothing is lost."""
    sock = _socket()
    sender = procs.send(mode, sock, "--batches", 40, "--rows", 12800, "--schema", "x:int64",
                        "--ring-size", "1MiB", "--max-in-flight", 2, "--wait-consumers", 1)
    receiver = procs.recv(sock, "--delay-ms", 20)
    got, sent = _ok(receiver), _ok(sender)
    _same_stream(got, sent)
    assert got["batches"] == 40 and got["dropped"] == 0
    assert sent["producer"]["dropped"] == 0 and sent["producer"]["published"] == 40


@pytest.mark.parametrize("mode", MODES)
def test_fail_fast_producer_exits_1_when_a_consumer_falls_behind(procs, mode):
    sock = _socket()
    sender = procs.send(mode, sock, "--batches", 200, "--rows", 1000, "--schema", "x:int64",
                        "--max-in-flight", 1, "--block-timeout-ms", 0, "--wait-consumers", 1)
    receiver = procs.recv(sock, "--delay-ms", 50)
    code, _, err = Procs.finish(sender)
    assert code == 1
    lines = err.strip().splitlines()
    assert lines[-1].startswith("shmarrow send: ") and "fail fast" in lines[-1], err
    code, _, err = Procs.finish(receiver)
    assert code == 1 and "producer" in err  # the producer went away without ending the stream


@pytest.mark.parametrize("mode", MODES)
def test_lossy_slow_consumer_loses_batches_the_other_gets_all(procs, mode):
    sock = _socket()
    sender = procs.send(mode, sock, "--batches", 100, "--rows", 1000, "--schema", SCHEMA,
                        "--wait-consumers", 2, "--max-in-flight", 4)
    normal = procs.recv(sock)
    lossy = procs.recv(sock, "--lossy", "--delay-ms", 20, "--max-in-flight", 1)
    got, lost, sent = _ok(normal), _ok(lossy), _ok(sender)
    _same_stream(got, sent)
    assert got["dropped"] == 0
    assert lost["dropped"] > 0
    assert lost["batches"] + lost["dropped"] == sent["producer"]["published"] == 100
    assert sent["producer"]["dropped"] == lost["dropped"]


# --- late joiners -----------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_late_joiner_from_oldest_gets_the_retained_batches(procs, mode):
    sock = _socket()
    sender = procs.send(mode, sock, "--batches", 120, "--rows", 100, "--rate", 100,
                        "--retain", 5, "--wait-consumers", 0)
    time.sleep(0.5)  # ~50 batches published before anyone listens
    oldest = procs.recv(sock, "--from-oldest")
    time.sleep(0.3)  # it surely joins first
    newest = procs.recv(sock)
    from_oldest, from_now, sent = _ok(oldest), _ok(newest), _ok(sender)
    assert sent["batches"] == 120
    assert 5 <= from_oldest["batches"] < 120
    assert from_oldest["rows"] >= 5 * 100
    # It joined first, and also got the 5 retained ones.
    assert 0 < from_now["batches"] <= from_oldest["batches"] - 5


@pytest.mark.parametrize("mode", MODES)
def test_late_joiner_from_oldest_across_a_schema_change(procs, mode):
    """Retained batches older than a schema change arrive with their own schema."""
    sock = _socket()
    sender = procs.send(mode, sock, "--batches", 40, "--rows", 100, "--schema", "a:int32,b:utf8",
                        "--schema-change-at", 20, "--retain", 40, "--rate", 40,
                        "--wait-consumers", 0)
    time.sleep(0.75)  # ~30 batches, 20 of them before the change
    got = _ok(procs.recv(sock, "--from-oldest"))
    sent = _ok(sender)
    _same_stream(got, sent)  # everything was retained: the whole stream
    assert got["schema_changes"] == 1
    assert [f["name"] for f in got["schema"]] == ["a", "b", "extra"]


# --- requests ---------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_request_response(procs, mode):
    sock = _socket()
    # Publishing at a slow rate keeps the producer serving while the requests come. A requester
    # may come and go before the producer would see it attached: nobody is waited for.
    sender = procs.send(mode, sock, "--batches", 100, "--rows", 10, "--rate", 50,
                        "--schema", SCHEMA, "--serve-requests", "--wait-consumers", 0)
    answer = _ok(procs.recv(sock, "--request", "rows=123"))
    assert answer["rows"] == 123 and answer["batches"] == 1
    assert answer["request"] == "rows=123" and answer["mode"] == mode
    assert [f["name"] for f in answer["schema"]] == list("abcde")
    bad = procs.recv(sock, "--request", "bogus")
    code, _, err = Procs.finish(bad)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shmarrow recv: "), err
    assert "unknown request 'bogus'" in lines[0]
    sent = _ok(sender)
    assert sent["batches"] == 100


@pytest.mark.parametrize("mode", MODES)
def test_request_answered_while_the_stream_goes_unread(procs, mode):
    """The requester reads only the answer; its credit for the busy stream is used up by a batch
    it never reads. The answer has credits of its own and still comes."""
    sock = _socket()
    sender = procs.send(mode, sock, "--batches", 4000, "--rows", 10, "--rate", 2000,
                        "--serve-requests", "--wait-consumers", 0)
    time.sleep(0.2)
    for rows in (5, 50):
        answer = _ok(procs.recv(sock, "--request", f"rows={rows}", "--max-in-flight", 1,
                                "--read-timeout-ms", 1500))
        assert answer["rows"] == rows
    assert _ok(sender)["batches"] == 4000


def test_request_to_a_producer_without_handler(procs):
    sock = _socket()
    sender = procs.send("ring", sock, "--batches", 50, "--rows", 10, "--rate", 50,
                        "--wait-consumers", 0)
    code, _, err = Procs.finish(procs.recv(sock, "--request", "rows=1"))
    assert code == 1 and "no request handler" in err
    _ok(sender)


# --- projection and schemas -------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_projection_gets_only_the_column(procs, mode):
    sock = _socket()
    sender = procs.send(mode, sock, "--batches", 30, "--rows", 1000, "--schema", SCHEMA,
                        "--null-fraction", 0.1, "--wait-consumers", 1)
    got = _ok(procs.recv(sock, "--columns", "d,b"))
    sent = _ok(sender)
    by_name = {c["name"]: c for c in sent["columns"]}
    assert [c["name"] for c in got["columns"]] == ["d", "b"]
    assert got["columns"] == [by_name["d"], by_name["b"]]
    assert got["rows"] == sent["rows"]


@pytest.mark.parametrize("mode", MODES)
def test_schema_mismatch_is_refused_and_a_matching_subset_accepted(procs, mode):
    sock = _socket()
    sender = procs.send(mode, sock, "--batches", 10, "--rows", 100, "--schema", "a:int32,b:utf8",
                        "--wait-consumers", 1)
    code, _, err = Procs.finish(procs.recv(sock, "--expect-schema", "a:int64,b:utf8"))
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shmarrow recv: "), err
    assert "'a" in lines[0] and "int64" in lines[0] and "int32" in lines[0]
    # Exact match fails on a subset; --schema-subset accepts it.
    code, _, err = Procs.finish(procs.recv(sock, "--expect-schema", "a:int32"))
    assert code == 1 and "schema mismatch" in err
    got = _ok(procs.recv(sock, "--expect-schema", "a:int32", "--schema-subset"))
    sent = _ok(sender)
    _same_stream(got, sent)


@pytest.mark.parametrize("mode", MODES)
def test_schema_change_midway(procs, mode):
    sock = _socket()
    sender = procs.send(mode, sock, "--batches", 20, "--rows", 500, "--schema", SCHEMA,
                        "--null-fraction", 0.1, "--schema-change-at", 8, "--wait-consumers", 1)
    got = _ok(procs.recv(sock))
    sent = _ok(sender)
    _same_stream(got, sent)
    assert got["schema_changes"] == 1
    assert got["schema"][-1] == {"name": "extra", "type": "int64", "nullable": True}
    assert got["rows"] == 20 * 500


# --- processes killed midway ------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_consumer_killed_midway_others_unaffected(procs, mode):
    sock = _socket()
    sender = procs.send(mode, sock, "--batches", 100, "--rows", 1000, "--schema", SCHEMA,
                        "--wait-consumers", 2, "--max-in-flight", 2)
    slow = procs.recv(sock, "--delay-ms", 50)
    normal = procs.recv(sock, "--delay-ms", 2)
    time.sleep(0.5)
    assert slow.poll() is None, "the slow consumer finished too early"
    slow.send_signal(signal.SIGKILL)
    got, sent = _ok(normal), _ok(sender)
    _same_stream(got, sent)
    assert sent["producer"]["consumers_total"] == 2 and sent["producer"]["published"] == 100


@pytest.mark.parametrize("mode", MODES)
def test_producer_killed_midway_consumer_exits_1(procs, mode):
    sock = _socket()
    sender = procs.send(mode, sock, "--batches", 10000, "--rows", 100, "--rate", 50,
                        "--wait-consumers", 1)
    receiver = procs.recv(sock)
    time.sleep(0.5)
    assert sender.poll() is None
    sender.send_signal(signal.SIGKILL)
    started = time.monotonic()
    code, _, err = Procs.finish(receiver, timeout=10)
    assert time.monotonic() - started < 5
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shmarrow recv: "), err
    assert "producer closed the connection" in lines[0]


# --- security ---------------------------------------------------------------------------------

NOBODY = 65534


def _as_nobody():
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a consumer as another uid")
@pytest.mark.parametrize("mode", MODES)
def test_consumer_of_another_uid_is_refused(procs, mode):
    probe = subprocess.run([str(CLI), "--help"], capture_output=True, preexec_fn=_as_nobody,
                           timeout=TIMEOUT)
    if probe.returncode != 0:
        pytest.skip(f"uid {NOBODY} cannot run {CLI}: {probe.stderr!r}")
    sock = _socket()
    sender = procs.send(mode, sock, "--batches", 5, "--rows", 10, "--wait-consumers", 1)
    # The stranger accepts any producer (a consumer checks the producer's uid too): what is
    # tested here is the producer's refusal.
    stranger = procs.recv(sock, "--allow-any-uid", preexec_fn=_as_nobody)
    code, _, err = Procs.finish(stranger)
    assert code == 1
    assert "refused" in err and f"uid {NOBODY} may not connect" in err, err
    # Without --allow-any-uid the stranger refuses the producer first, naming its uid.
    code, _, err = Procs.finish(procs.recv(sock, preexec_fn=_as_nobody))
    assert code == 1
    assert f"runs as uid {os.geteuid()}, which this consumer (uid {NOBODY}) does not accept" in err, err
    got = _ok(procs.recv(sock))  # the producer's own uid is served
    sent = _ok(sender)
    _same_stream(got, sent)


# --- usage ------------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ("send", "--mode", "bogus"),
    ("send", "--mode", "ring", "--clients", "2"),
    ("send", "--mode", "ring", "--ring-size", "lots"),
    ("recv", "--schema-subset"),
    ("recv", "--columns", "a,,b"),
    ("recv", "--no-such-option", "1"),
])
def test_usage_errors_exit_2(args):
    run = _run_cli(*args)
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith(f"shmarrow {args[0]}: ")
